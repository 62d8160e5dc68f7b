"""The classical restorers a user could pick instead, for the evaluation to beat: OpenCV's non-local
means denoising, and the same followed by Telea inpainting of a damage mask."""

from __future__ import annotations

import cv2
import numpy as np

NLM_STRENGTH = 10  # h of fastNlMeansDenoising(Colored): OpenCV's documented starting point for noisy photos


def non_local_means(image: np.ndarray, strength: float = NLM_STRENGTH) -> np.ndarray:
    """uint8 gray (H x W) or RGB (H x W x 3) -> denoised, same shape."""
    if image.dtype != np.uint8:
        raise ValueError(f"non-local means takes uint8 images, got {image.dtype}")
    if image.ndim == 2:
        return cv2.fastNlMeansDenoising(image, None, strength, 7, 21)
    return cv2.fastNlMeansDenoisingColored(image, None, strength, strength, 7, 21)


def non_local_means_inpainted(image: np.ndarray, mask: np.ndarray, strength: float = NLM_STRENGTH,
                              radius: int = 3, denoised: np.ndarray | None = None) -> np.ndarray:
    """Non-local means, then Telea inpainting of the pixels where mask is true (the scratches).
    denoised: non_local_means(image, strength) when already computed."""
    denoised = non_local_means(image, strength) if denoised is None else denoised
    if not mask.any():
        return denoised
    return cv2.inpaint(denoised, mask.astype(np.uint8) * 255, radius, cv2.INPAINT_TELEA)
