"""Degradation synthesis: pure functions on numpy uint8 images, and the seeded pipeline over them."""

from .ageing import fade, halftone, silvering, tone, uneven_illumination, vignette
from .blur import defocus_blur, gaussian_blur, motion_blur
from .compression import jpeg, resample
from .corruptions import corruption
from .damage import cracks, dust, flaking, folds, foxing, paper_texture, scratches, tears
from .noise import film_grain, gaussian_noise, poisson_noise, salt_pepper_noise, speckle_noise
from .pipeline import OPERATIONS, PRESETS, Degraded, DegradationConfig, DegradationPipeline, Op, Stage
from .sample import make_sample, random_crop, sample_seed

__all__ = [
    "OPERATIONS", "PRESETS", "Degraded", "DegradationConfig", "DegradationPipeline", "Op", "Stage",
    "corruption", "cracks", "defocus_blur", "dust", "fade", "film_grain", "flaking", "folds", "foxing", "gaussian_blur",
    "gaussian_noise", "halftone", "jpeg", "make_sample", "motion_blur", "paper_texture", "poisson_noise", "random_crop", "resample",
    "salt_pepper_noise", "sample_seed", "scratches", "silvering", "speckle_noise", "tears", "tone", "uneven_illumination",
    "vignette",
]
