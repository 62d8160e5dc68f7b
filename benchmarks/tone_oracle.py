"""Where a restorer's error lies: Y-PSNR of its outputs as they are, and after oracles that each
know the clean photo and fix one thing per image:

- tone: the best affine fit (a*Y + b) of the output's luminance to the clean photo's; the gap it
  closes is the error that fading and toning make ambiguous (issue 20's "tone gap");
- offset: the best constant added (the mean brightness alone);
- smooth / fine error removed: the error without its smooth part (a Gaussian of sigma 4 px), or
  without its fine part: how much of it is detail and how much is light and tone;
- for a model with a strength (model/strength.py): its restoration at full strength, and the best
  blend of input and that restoration per photo and per 64 px cell (damage the detector marked
  taken from the restoration, as the engine fills it), the most a better strength could give.

    .venv/bin/python benchmarks/tone_oracle.py PAIRS MODEL [MODEL ...] [--count 64]

PAIRS: synthesized pairs, e.g. the evaluation's held-out set under .oldphoto/heldout/.
"""

from __future__ import annotations

import argparse
import copy

import cv2
import numpy as np

from oldphoto.model.engine import Restorer
from oldphoto.model.metrics import luma, psnr, to_float
from oldphoto.models import load_restorer
from oldphoto.pairs import read_pairs

CELL = 64


def tone_fitted_psnr(y: np.ndarray, clean: np.ndarray) -> float:
    design = np.stack([y.ravel(), np.ones(y.size)], axis=1)
    coefficients = np.linalg.lstsq(design, clean.ravel(), rcond=None)[0]
    return psnr((design @ coefficients).reshape(y.shape), clean)


def best_blend(degraded: np.ndarray, restored: np.ndarray, clean: np.ndarray, mask: np.ndarray, cell: int) -> np.ndarray:
    """degraded + g (restored - degraded), g in [0, 1] fitted to clean on each cell x cell block's
    unmarked pixels; marked pixels keep the restoration."""
    change, wanted, keep = restored - degraded, clean - degraded, ~mask
    strength = np.ones_like(degraded)
    for y in range(0, degraded.shape[0], cell):
        for x in range(0, degraded.shape[1], cell):
            block = (slice(y, y + cell), slice(x, x + cell))
            c, k = change[block][keep[block]], wanted[block][keep[block]]
            strength[block] = np.clip((c @ k) / (c @ c), 0, 1) if c @ c > 0 else 1.0
    return degraded + np.where(mask, 1.0, strength) * change


def scores(output: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    error = (output - clean).astype(np.float32)
    smooth = cv2.GaussianBlur(error, (0, 0), 4)
    return {"as is": psnr(output, clean), "tone": tone_fitted_psnr(output, clean),
            "offset": psnr(output + (clean - output).mean(), clean),
            "smooth error removed": psnr(clean + error - smooth, clean),
            "fine error removed": psnr(clean + smooth, clean)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs")
    parser.add_argument("models", nargs="+")
    parser.add_argument("--count", type=int, default=64)
    args = parser.parse_args()
    restorers = {m: Restorer(load_restorer(m), "cpu", "fp32") for m in args.models}
    full = {}  # the same networks without their strength
    for m, restorer in restorers.items():
        if restorer.network.strength is not None:
            network = copy.deepcopy(restorer.network)
            network.strength = None
            full[m] = Restorer(network, "cpu", "fp32")
    rows: dict[str, list[dict[str, float]]] = {"degraded": [], **{m: [] for m in restorers}}
    for pair in read_pairs(args.pairs, limit=args.count):
        clean, degraded = (luma(to_float(pair[k])) for k in ("clean", "degraded"))
        rows["degraded"].append(scores(degraded, clean))
        for m, restorer in restorers.items():
            row = scores(luma(to_float(restorer.restore(pair["degraded"])[0])), clean)
            if m in full:
                restored, mask, _ = full[m].restore(pair["degraded"])
                restored, mask = luma(to_float(restored)), mask > 0
                row |= {"full strength": psnr(restored, clean),
                        "best blend": psnr(best_blend(degraded, restored, clean, mask, max(clean.shape)), clean),
                        f"best blend per {CELL} px": psnr(best_blend(degraded, restored, clean, mask, CELL), clean)}
            rows[m].append(row)
    for name, values in rows.items():
        means = {k: np.mean([v[k] for v in values]) for k in values[0]}
        print(f"{name}: {len(values)} pairs, Y-PSNR {means.pop('as is'):.2f} dB, after the oracles: "
              + ", ".join(f"{k} {v:.2f}" for k, v in means.items()))


if __name__ == "__main__":
    main()
