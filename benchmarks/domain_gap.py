"""How far apart VAE_A's encoder keeps real old photographs (domain R) and synthetic degraded ones (X).

The method's central claim is that VAE_A's latent adversarial loss maps R and X into one latent
space, so that the mapping learned on X serves R. This measures it for one or more encoders: each
crop's latent mean, averaged over positions, and a linear classifier's cross-validated accuracy at
telling R from X by it (1.0: apart; 0.5 would be indistinguishable, but the two sets differ in
content as well as in damage, so that is not the floor), beside the distance between the two
domains' centroids in units of the latents' spread. Compare encoders on the same crops.

    .venv/bin/python benchmarks/domain_gap.py --pairs .oldphoto/heldout/5f095421447e \\
        --real .oldphoto/data/real-heldout oldphoto/weights/default.pt .oldphoto/ckpt/vaea-real/vae_a.pt

Each encoder is a restorer bundle (its E_RX) or a vae_a stage checkpoint.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from oldphoto import storage
from oldphoto.images import decode_rgb
from oldphoto.model.config import ModelConfig
from oldphoto.model.data import crop_and_flip, rescale_short_side
from oldphoto.model.train import load_state
from oldphoto.model.vae import VAE
from oldphoto.models import load_restorer
from oldphoto.pairs import read_pairs

CROP = 256


def encoder(reference: str) -> torch.nn.Module:
    if reference.endswith("vae_a.pt"):
        state = load_state(storage.read_bytes(reference))
        vae = VAE(ModelConfig.model_validate_json(state["config"]).vae)
        vae.load_state_dict(state["trainer"]["modules"]["vae"])
        return vae.encoder.eval()
    return load_restorer(reference).encoder.eval()


def crops(pairs: str, real: str, count: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """count synthetic degraded crops, and count crops of the real scans taken as training takes them
    (short side shrunk to 1-3 crops, a random crop)."""
    synthetic = [p["degraded"] for p in read_pairs(pairs, limit=count)]
    rng = np.random.default_rng(seed)
    scans = [decode_rgb(storage.read_bytes(storage.join(real, key)), key) for key in storage.list_images(real)]
    real_crops = []
    while len(real_crops) < count:
        scan = rescale_short_side(scans[len(real_crops) % len(scans)], CROP, 3 * CROP, rng)
        if min(scan.shape[:2]) >= CROP:
            real_crops.append(crop_and_flip([scan], CROP, rng)[0])
    return synthetic, real_crops


@torch.inference_mode()
def features(net: torch.nn.Module, images: list[np.ndarray]) -> np.ndarray:
    out = []
    for image in images:
        x = torch.from_numpy(np.array(image)).float().div(127.5).sub(1).permute(2, 0, 1)[None]
        out.append(net(x)[0].mean((2, 3))[0].numpy())
    return np.stack(out)


def separability(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated accuracy of a ridge-regularised linear discriminant telling x's rows from y's."""
    data = np.concatenate([x, y])
    labels = np.r_[np.zeros(len(x)), np.ones(len(y))]
    order = np.random.default_rng(seed).permutation(len(data))
    correct = 0
    for fold in np.array_split(order, folds):
        train = np.setdiff1d(order, fold)
        mean, std = data[train].mean(0), data[train].std(0) + 1e-6
        a = (data[train] - mean) / std
        design = np.c_[a, np.ones(len(a))]
        w = np.linalg.solve(design.T @ design + 1e-2 * np.eye(design.shape[1]), design.T @ (2 * labels[train] - 1))
        predicted = np.c_[(data[fold] - mean) / std, np.ones(len(fold))] @ w > 0
        correct += int((predicted == labels[fold].astype(bool)).sum())
    return correct / len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("encoders", nargs="+", help="restorer bundles or vae_a checkpoints")
    parser.add_argument("--pairs", required=True, help="held-out synthetic pairs (their degraded photos: X)")
    parser.add_argument("--real", required=True, help="held-out real old photographs (R)")
    parser.add_argument("--count", type=int, default=150, help="crops of each domain")
    args = parser.parse_args()
    synthetic, real = crops(args.pairs, args.real, args.count)
    print(f"{len(synthetic)} synthetic and {len(real)} real crops of {CROP}x{CROP}")
    first = None
    for reference in args.encoders:
        net = encoder(reference)
        x, r = features(net, synthetic), features(net, real)
        spread = np.sqrt((x.var(0).mean() + r.var(0).mean()) / 2)
        gap = np.linalg.norm(x.mean(0) - r.mean(0)) / spread
        # How far its latents moved from the first encoder's, on the same synthetic crops (a fine-tuned
        # encoder's mapping and decoder were trained on the first's).
        drift = "" if first is None or first.shape != x.shape else \
            f"; its latents {np.linalg.norm(x - first) / np.linalg.norm(first):.2f} of their size from the first encoder's"
        first = x if first is None else first
        print(f"{reference}: R told from X with accuracy {separability(x, r):.3f}; centroids "
              f"{gap:.2f} spreads apart{drift}")


if __name__ == "__main__":
    main()
