"""`make demo`: synthesize training pairs from the bundled sample photographs and show them on a sheet.

(The restoration demo replaces this once the restorer ships.)
"""

from __future__ import annotations

from pathlib import Path

import cv2

from .cli import main as cli_main
from .pairs import read_pairs
from .sheets import contact_sheet

SAMPLES = Path(__file__).parent / "samples"


def main(out: Path = Path("out/demo")) -> None:
    pairs = out / "pairs"
    code = cli_main(["synth", str(SAMPLES), str(pairs), "--count", "24", "--seed", "7", "--shard-size", "12",
                     "--workers", "2"])
    if code:
        raise SystemExit(code)
    sheet = out / "contact_sheet.png"
    cv2.imwrite(str(sheet), cv2.cvtColor(contact_sheet(read_pairs(str(pairs), limit=12)), cv2.COLOR_RGB2BGR))
    print(f"\nshards and manifest: {pairs.resolve()}\ncontact sheet:       {sheet.resolve()}")


if __name__ == "__main__":
    main()
