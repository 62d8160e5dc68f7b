"""`make demo`: restore the bundled sample photographs with the shipped default model."""

from __future__ import annotations

from pathlib import Path

from .cli import main as cli_main

SAMPLES = Path(__file__).parent / "samples"


def main(out: Path = Path("out/demo")) -> None:
    restored = out / "restored"
    code = cli_main(["restore", str(SAMPLES), str(restored)])
    if code:
        raise SystemExit(code)
    print(f"\nrestored photos: {restored.resolve()}\nreport:          {(restored / '_report' / 'index.html').resolve()}"
          f"\nmanifest:        {(restored / '_manifest' / 'manifest.parquet').resolve()}")


if __name__ == "__main__":
    main()
