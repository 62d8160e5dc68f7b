"""Image-quality and mask metrics of the evaluation, on uint8 or uint16 images (any dtype is read on
its own full scale and compared on a 0-255 one)."""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity


def to_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) * (255.0 / np.iinfo(image.dtype).max)


def luma(x: np.ndarray) -> np.ndarray:
    """Y of YCbCr (ITU-R BT.601, as the restoration literature reports it) of a float RGB image on a
    0-255 scale; a gray image is its own luminance."""
    if x.ndim == 2:
        return x
    return 16.0 + (65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of float images on a 0-255 scale; inf for identical images."""
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of float images on a 0-255 scale (Gaussian window, sigma 1.5, as Wang et al.);
    averaged over channels for colour images."""
    return float(structural_similarity(a, b, data_range=255.0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, channel_axis=2 if a.ndim == 3 else None))


def quality(restored: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM on luminance (Y) and on all channels."""
    if restored.shape != reference.shape:
        raise ValueError(f"restored {restored.shape} and reference {reference.shape} differ in shape")
    a, b = to_float(restored), to_float(reference)
    return {"psnr_y": psnr(luma(a), luma(b)), "ssim_y": ssim(luma(a), luma(b)),
            "psnr_rgb": psnr(a, b), "ssim_rgb": ssim(a, b)}


def mask_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1 and IoU of a predicted damage mask against the true one.
    An empty prediction of an empty truth scores 1 everywhere: nothing to find, nothing found."""
    return mask_scores_from_counts(*mask_counts(predicted, truth))


def mask_counts(predicted: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """Pixel counts: true positives, false positives, false negatives."""
    p, t = predicted.astype(bool), truth.astype(bool)
    return int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())


def mask_scores_from_counts(tp: int, fp: int, fn: int) -> dict[str, float]:
    """The same from pixel counts (true positives, false positives, false negatives), so that scores
    can be pooled over many images."""
    if tp + fp + fn == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0, "iou": 1.0}
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "iou": tp / (tp + fp + fn)}
