"""How much of a restorer's error is global tone: Y-PSNR of its outputs as they are, and after the
best affine fit (a*Y + b, per image) of their luminance to the clean photo's. The fit is an oracle
no restorer has; the gap it closes is the error that fading and toning make ambiguous.

    .venv/bin/python benchmarks/tone_oracle.py PAIRS MODEL [MODEL ...] [--count 64]

PAIRS: synthesized pairs, e.g. the evaluation's held-out set under .oldphoto/heldout/.
"""

from __future__ import annotations

import argparse

import numpy as np

from oldphoto.model.engine import Restorer
from oldphoto.model.metrics import luma, psnr, to_float
from oldphoto.models import load_restorer
from oldphoto.pairs import read_pairs


def tone_fitted_psnr(y: np.ndarray, clean: np.ndarray) -> float:
    design = np.stack([y.ravel(), np.ones(y.size)], axis=1)
    coefficients = np.linalg.lstsq(design, clean.ravel(), rcond=None)[0]
    return psnr((design @ coefficients).reshape(y.shape), clean)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs")
    parser.add_argument("models", nargs="+")
    parser.add_argument("--count", type=int, default=64)
    args = parser.parse_args()
    restorers = {m: Restorer(load_restorer(m), "cpu", "fp32") for m in args.models}
    scores: dict[str, list[tuple[float, float]]] = {"degraded": [], **{m: [] for m in restorers}}
    for pair in read_pairs(args.pairs, limit=args.count):
        clean = luma(to_float(pair["clean"]))
        outputs = {"degraded": pair["degraded"]} | {m: r.restore(pair["degraded"])[0] for m, r in restorers.items()}
        for name, output in outputs.items():
            y = luma(to_float(output))
            scores[name].append((psnr(y, clean), tone_fitted_psnr(y, clean)))
    for name, values in scores.items():
        raw, fitted = np.mean(values, axis=0)
        print(f"{name}: {len(values)} pairs, Y-PSNR {raw:.2f} dB, after the tone oracle {fitted:.2f} dB")


if __name__ == "__main__":
    main()
