"""Degradation synthesis: pure functions on numpy uint8 images, and the seeded pipeline over them."""

from .blur import defocus_blur, gaussian_blur, motion_blur
from .corruptions import corruption
from .damage import cracks, dust, folds, paper_texture, scratches
from .noise import film_grain, gaussian_noise, poisson_noise, salt_pepper_noise, speckle_noise
from .pipeline import OPERATIONS, PRESETS, Degraded, DegradationConfig, DegradationPipeline, Op, Stage
from .resample import jpeg, resample
from .tone import fade, halftone, tone, uneven_illumination, vignette

__all__ = [
    "OPERATIONS", "PRESETS", "Degraded", "DegradationConfig", "DegradationPipeline", "Op", "Stage",
    "corruption", "cracks", "defocus_blur", "dust", "fade", "film_grain", "folds", "gaussian_blur",
    "gaussian_noise", "halftone", "jpeg", "motion_blur", "paper_texture", "poisson_noise", "resample",
    "salt_pepper_noise", "scratches", "speckle_noise", "tone", "uneven_illumination", "vignette",
]
from .sample import make_sample, random_crop, sample_seed  # noqa: E402

__all__ += ["make_sample", "random_crop", "sample_seed"]
