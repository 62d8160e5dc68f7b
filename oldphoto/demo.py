"""`make demo`: the bundled sample photographs aged by `synth` with a fixed seed (fading, grain,
scratches, cracks), restored with the shipped default model, and shown on one page: aged | restored |
original, with how far each is from the original."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from . import SAMPLES
from .cli import main as cli_main
from .images import encode_png
from .model.metrics import quality
from .pages import render
from .synth import DegradationConfig, DegradationPipeline, Op, Stage, make_sample

SEED = 1
# What an old print shows: faded, grainy, scratched and cracked (the synth operations, fixed ranges).
AGEING = DegradationConfig(grayscale=0.0, stages=[Stage(name="age", ops=[
    Op(op="fade", params={"contrast": [0.7, 0.85], "lift": [0.05, 0.12]}),
    Op(op="film_grain", params={"strength": [5.0, 9.0], "size": 1.5}),
    Op(op="scratches", params={"count": [3, 6], "width": [1.5, 2.5], "bright": 0.85, "length": [0.4, 1.0]}),
    Op(op="cracks", params={"count": [1, 2], "branches": [3, 6], "width": [1.5, 3.0], "length": [0.3, 0.6]}),
])])


def age_samples(aged: Path, originals: Path) -> list[str]:
    """Each sample, aged (PNG, lossless) and as it was; the same bytes on every run."""
    aged.mkdir(parents=True, exist_ok=True)
    originals.mkdir(parents=True, exist_ok=True)
    pipeline = DegradationPipeline(AGEING)
    names = []
    for i, path in enumerate(sorted(SAMPLES.glob("*.jpg"))):
        clean = np.asarray(Image.open(path).convert("RGB"))
        (aged / f"{path.stem}.png").write_bytes(encode_png(make_sample(clean, SEED + i, None, pipeline).degraded))
        (originals / f"{path.stem}.png").write_bytes(encode_png(clean))
        names.append(path.stem)
    return names


def _scores(a: Path, b: Path) -> dict[str, float]:
    return quality(np.asarray(Image.open(a).convert("RGB")), np.asarray(Image.open(b).convert("RGB")))


def main(out: Path = Path("out/demo")) -> None:
    shutil.rmtree(out, ignore_errors=True)  # a demo starts afresh: restoring again is the point
    aged, originals, restored = out / "aged", out / "original", out / "restored"
    names = age_samples(aged, originals)
    code = cli_main(["restore", str(aged), str(restored)])
    if code:
        raise SystemExit(code)
    photos = [{"name": name, "aged": _scores(aged / f"{name}.png", originals / f"{name}.png"),
               "restored": _scores(restored / f"{name}.png", originals / f"{name}.png")} for name in names]
    page = out / "index.html"
    page.write_text(render("demo.html", photos=photos), encoding="utf-8")
    for photo in photos:
        print(f"{photo['name']:10} aged {photo['aged']['psnr_y']:5.2f} dB -> restored {photo['restored']['psnr_y']:5.2f} dB "
              "(Y-PSNR against the original)")
    print(f"\ndemo page:       {page.resolve()}\nrestored photos: {restored.resolve()}"
          f"\nreport:          {(restored / '_report' / 'index.html').resolve()}"
          f"\nmanifest:        {(restored / '_manifest' / 'manifest.parquet').resolve()}"
          f"\n\nreview them in the browser: .venv/bin/oldphoto review {restored}")


if __name__ == "__main__":
    main()
