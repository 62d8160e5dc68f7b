"""Evaluation metrics and the classical baselines."""

from __future__ import annotations

import numpy as np
import pytest

from oldphoto.model.baselines import non_local_means, non_local_means_inpainted
from oldphoto.model.metrics import luma, mask_scores, quality, to_float

from conftest import random_vgg_state


def test_psnr_and_ssim_known_values(photo):
    same = quality(photo, photo)
    assert same["psnr_y"] == same["psnr_rgb"] == float("inf") and same["ssim_rgb"] == pytest.approx(1.0)
    shifted = np.clip(photo.astype(int) + 5, 0, 255).astype(np.uint8)
    q = quality(shifted, photo)
    mse = np.mean((shifted.astype(float) - photo) ** 2)
    assert q["psnr_rgb"] == pytest.approx(10 * np.log10(255**2 / mse))
    # a uniform shift of every channel by d moves Y by d * 219/255
    assert q["psnr_y"] > q["psnr_rgb"] and 0.9 < q["ssim_rgb"] < 1.0
    noisy = np.clip(photo + np.random.default_rng(0).normal(0, 25, photo.shape), 0, 255).astype(np.uint8)
    assert quality(noisy, photo)["ssim_y"] < q["ssim_y"]
    assert luma(to_float(np.full((1, 1, 3), 255, np.uint8)))[0, 0] == pytest.approx(235.0)
    assert quality(photo.astype(np.uint16) * 257, photo.astype(np.uint16) * 257)["ssim_y"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        quality(photo[:10], photo)


def test_mask_scores():
    truth = np.zeros((10, 10), bool)
    truth[2, :] = True  # 10 damaged pixels
    predicted = np.zeros_like(truth)
    predicted[2, :5] = predicted[5, :5] = True  # 5 right, 5 wrong
    s = mask_scores(predicted, truth)
    assert (s["precision"], s["recall"], s["f1"], s["iou"]) == (0.5, 0.5, 0.5, pytest.approx(5 / 15))
    assert mask_scores(truth, truth)["f1"] == 1.0 and mask_scores(np.zeros_like(truth), truth)["recall"] == 0.0
    assert mask_scores(np.zeros_like(truth), np.zeros_like(truth))["iou"] == 1.0


def test_baselines_denoise_and_fill_scratches(photo):
    rng = np.random.default_rng(1)
    noisy = np.clip(photo + rng.normal(0, 15, photo.shape), 0, 255).astype(np.uint8)
    assert quality(non_local_means(noisy), photo)["psnr_y"] > quality(noisy, photo)["psnr_y"] + 2
    assert non_local_means(noisy[..., 0]).shape == photo.shape[:2]
    scratched, mask = photo.copy(), np.zeros(photo.shape[:2], bool)
    scratched[40:42, :] = 255
    mask[40:42, :] = True
    filled = non_local_means_inpainted(scratched, mask)
    assert np.abs(filled[40:42].astype(int) - photo[40:42]).mean() < np.abs(scratched[40:42].astype(int) - photo[40:42]).mean() / 3
    with pytest.raises(ValueError, match="uint8"):
        non_local_means(photo.astype(np.uint16))


def lpips_weights(seed: int = 0) -> tuple[dict, dict]:
    """Random VGG16 and linear-layer weights in the files' own key layouts."""
    import torch

    from oldphoto.model.lpips import TAPS, VGG16_LAYOUT

    layers = random_vgg_state(VGG16_LAYOUT, seed)
    linear = {f"lin{i}.model.1.weight": torch.rand(1, w, 1, 1) for i, w in enumerate(TAPS.values())}
    return layers, linear


def test_lpips_is_the_published_formula():
    """Against a direct computation from the weight files: scale the input, run VGG16's convolutions,
    and at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 unit-normalize over channels, weight squared
    differences per channel, average over space; sum the five."""
    import torch
    import torch.nn.functional as F

    from oldphoto.model.lpips import LPIPS

    vgg, linear = lpips_weights()
    metric = LPIPS(vgg, linear)
    torch.manual_seed(1)
    a = torch.rand(2, 3, 40, 48) * 2 - 1
    b = (a + 0.3 * torch.randn_like(a)).clamp(-1, 1)

    def reference(x, y):
        shift, scale = torch.tensor([-0.030, -0.088, -0.188]), torch.tensor([0.458, 0.448, 0.450])
        h = [(t - shift.view(1, 3, 1, 1)) / scale.view(1, 3, 1, 1) for t in (x, y)]
        total, conv, tap = 0.0, 0, 0
        for block in ([2, 2, 3, 3, 3]):
            for _ in range(block):
                index = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28][conv]
                h = [F.relu(F.conv2d(t, vgg[f"features.{index}.weight"], vgg[f"features.{index}.bias"], padding=1)) for t in h]
                conv += 1
            n = [t / (t.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for t in h]
            total = total + ((n[0] - n[1]).pow(2) * linear[f"lin{tap}.model.1.weight"]).sum(1).mean((1, 2))
            tap += 1
            h = [F.max_pool2d(t, 2) for t in h]
        return total

    assert torch.allclose(metric(a, b), reference(a, b), rtol=1e-4)
    assert torch.allclose(metric(a, a), torch.zeros(2), atol=1e-6)
    assert torch.allclose(metric(a, b), metric(b, a), rtol=1e-4)
    worse = (a + 0.8 * torch.randn_like(a)).clamp(-1, 1)
    assert (metric(a, worse) > metric(a, b)).all()
