"""Each degradation operation: shape, dtype, determinism under a seed, what it does, and exact masks."""

from __future__ import annotations

import numpy as np
import pytest

from oldphoto import synth
from oldphoto.synth.corruptions import NAMES

PHOTOMETRIC = {
    "gaussian_blur": dict(sigma=2.0),
    "defocus_blur": dict(radius=3.0),
    "motion_blur": dict(length=9.0, angle=30.0),
    "gaussian_noise": dict(sigma=15.0),
    "poisson_noise": dict(peak=30.0),
    "speckle_noise": dict(sigma=20.0),
    "salt_pepper_noise": dict(amount=0.05),
    "film_grain": dict(strength=12.0, size=2.0),
    "jpeg": dict(quality=20),
    "resample": dict(scale=0.4),
    "fade": dict(contrast=0.6, lift=0.15),
    "tone": dict(color="sepia", strength=0.8),
    "uneven_illumination": dict(strength=0.3),
    "vignette": dict(strength=0.5),
    "halftone": dict(cell=4.0, angle=45.0, strength=0.8),
    "silvering": dict(strength=0.6),
}
DAMAGE = {
    "scratches": dict(count=6, width=1.5),
    "cracks": dict(count=2, branches=8),
    "folds": dict(count=1),
    "dust": dict(specks=40, blotches=3, hairs=2),
    "paper_texture": dict(strength=0.05),
    "tears": dict(count=2, size=0.25),
    "foxing": dict(spots=30, size=4.0),
    "flaking": dict(patches=3, size=8.0),
}
STOCHASTIC = {"gaussian_noise", "poisson_noise", "speckle_noise", "salt_pepper_noise", "film_grain",
              "uneven_illumination", "scratches", "cracks", "folds", "dust", "paper_texture", "silvering", "tears",
              "foxing", "flaking"}


def run(name, image, seed, **params):
    return getattr(synth, name)(image, np.random.default_rng(seed), **params)


@pytest.mark.parametrize("gray", [False, True], ids=["rgb", "gray"])
@pytest.mark.parametrize("name", [*PHOTOMETRIC, *DAMAGE])
def test_shape_dtype_and_determinism(name, gray, photo):
    image = photo.mean(axis=2).astype(np.uint8) if gray else photo
    params = PHOTOMETRIC.get(name) or DAMAGE[name]
    first, second, other = (run(name, image, s, **params) for s in (1, 1, 2))
    if name in DAMAGE:
        (first, mask), (second, mask2), (other, _) = first, second, other
        assert mask.dtype == bool and mask.shape == image.shape[:2]
        np.testing.assert_array_equal(mask, mask2)
    assert first.dtype == np.uint8 and first.shape == image.shape
    np.testing.assert_array_equal(first, second)
    if name in STOCHASTIC:
        assert not np.array_equal(first, other), "another seed must give another result"
    assert not np.array_equal(first, image) or (name == "tone" and gray), f"{name} changed nothing"


def test_input_is_never_modified(photo):
    before = photo.copy()
    for name, params in {**PHOTOMETRIC, **DAMAGE}.items():
        run(name, photo, 0, **params)
    np.testing.assert_array_equal(photo, before)


@pytest.mark.parametrize("name", ["scratches", "cracks", "dust", "tears", "foxing", "flaking"])
def test_damage_mask_is_exact(name, photo):
    out, mask = run(name, photo, 3, **DAMAGE[name])
    changed = (out != photo).any(axis=2)
    assert mask.sum() > 50
    assert not (changed & ~mask).any(), "pixels outside the mask must be untouched"
    assert changed[mask].mean() > 0.8, "the mask must not mark untouched pixels (beyond rounding)"


def test_real_print_damage_looks_as_it_does_on_real_prints(photo):
    """Tears show the mount through a jagged edge from the border; foxing browns; flaking bares the
    paper; silvering lifts the dark tones, at the edges more than in the middle."""
    torn, mask = run("tears", photo, 5, count=1, size=0.3, mount=1.0)
    assert mask[[0, 0, -1, -1], [0, -1, 0, -1]].any(), "a tear starts at the print's edge"
    assert np.median(torn[mask]) > 200 and 0.01 < mask.mean() < 0.3, "white paper shows where the piece is gone"
    rows = mask.any(axis=1)
    assert len(set(mask[rows].sum(axis=1).tolist())) > 5, "the tear's edge is jagged, not straight"
    foxed, spots = run("foxing", photo, 6, spots=30, size=4.0, strength=0.7)
    before, after = photo[spots].astype(float), foxed[spots].astype(float)
    assert (after.mean(0) < before.mean(0)).all() and (after[:, 0] - after[:, 2]).mean() > (before[:, 0] - before[:, 2]).mean()
    flaked, chips = run("flaking", photo, 7, patches=3, size=8.0)
    assert flaked[chips].mean() > 180 and chips.mean() > 0.002
    dark = np.full((120, 160, 3), 30, np.uint8)
    silvered = run("silvering", dark, 8, strength=0.6).astype(float).mean(axis=2)
    assert silvered[:4].mean() > silvered[50:70, 70:90].mean() + 20 > 30 + 20
    assert (run("silvering", np.full((50, 50, 3), 250, np.uint8), 8, strength=0.6) >= 249).all(), "white has no silver"


def test_folds_mask_the_line_and_only_shade_beside_it(photo):
    out, mask = run("folds", photo, 4, count=1, shading=0.1)
    assert 20 < mask.sum() < 0.2 * mask.size
    outside = np.abs(out.astype(int) - photo.astype(int))[~mask]
    assert outside.max() <= 0.11 * 255 + 1, "beside the line only a smooth shading of at most `shading`"


def test_paper_texture_marks_no_damage(photo):
    out, mask = run("paper_texture", photo, 0, strength=0.05)
    assert not mask.any()
    assert 0 < np.abs(out.astype(int) - photo.astype(int)).mean() < 0.05 * 255


def test_scratches_are_mostly_bright_thin_and_long():
    flat = np.full((256, 256, 3), 90, np.uint8)
    out, mask = run("scratches", flat, 7, count=4, width=1.0, bright=1.0, length=1.0, curvature=0.0)
    assert np.percentile(out[mask].mean(axis=1), 90) > 200, "bright scratches expose the paper (their cores)"
    assert out[mask].mean() > 110 > 90, "brighter than the picture on average, anti-aliased edges included"
    assert mask.mean() < 0.05, "thin"
    rows, cols = np.nonzero(mask)
    assert max(np.ptp(rows), np.ptp(cols)) > 150, "long: they run across much of the picture"


def test_cracks_branch():
    import cv2

    flat = np.full((256, 256, 3), 90, np.uint8)
    _, mask = run("cracks", flat, 11, count=1, branches=10, flakes=0.0)
    skeleton_points = mask.sum()
    count, _ = cv2.connectedComponents(mask.astype(np.uint8))
    assert skeleton_points > 200 and count - 1 <= 3, "a connected, forking network rather than dots"


def test_cracks_with_relief_cast_a_masked_shadow_on_one_side():
    flat = np.full((256, 256, 3), 120, np.uint8)
    plain_out, plain = run("cracks", flat, 5, count=2, width=2.0, flakes=0.0)
    out, mask = run("cracks", flat, 5, count=2, width=2.0, flakes=0.0, relief=0.5)
    assert np.array_equal(out[plain], plain_out[plain]), "the same cracks"
    shadow = mask & ~plain
    assert 0.3 * plain.sum() < shadow.sum() < 1.5 * plain.sum(), "an edge beside the crack, not a second crack"
    assert out[shadow].mean() < 110, "darker than the print (120)"
    assert not ((out != flat).any(axis=2) & ~mask).any(), "the shadow is masked"


def test_hairline_cracks_are_grey_and_broken():
    """opacity lets the picture show through a crack's core; gaps break each line into pieces. Both
    keep the mask exact, and neither changes the cracks' course (the same seed draws the same paths)."""
    import cv2

    flat = np.full((256, 256, 3), 60, np.uint8)
    solid_out, solid = run("cracks", flat, 4, count=2, branches=0, length=1.0, jaggedness=0.05, flakes=0.0)
    grey_out, grey = run("cracks", flat, 4, count=2, branches=0, length=1.0, jaggedness=0.05, flakes=0.0, opacity=0.5)
    assert np.array_equal(grey, solid), "the same cracks"
    assert np.percentile(solid_out[solid], 90) > 200 and 120 < np.percentile(grey_out[grey], 90) < 170, \
        "cores halfway between the picture (60) and the paper (about 240)"
    broken_out, broken = run("cracks", flat, 4, count=2, branches=0, length=1.0, jaggedness=0.05, flakes=0.0, gaps=0.5)
    assert not ((broken_out != flat).any(axis=2) & ~broken).any(), "the mask is exact"
    assert 0.3 * solid.sum() < broken.sum() < 0.75 * solid.sum(), "about half of each line missing"
    pieces = cv2.connectedComponents(broken.astype(np.uint8))[0] - 1
    assert pieces >= 3 * (cv2.connectedComponents(solid.astype(np.uint8))[0] - 1), "in many pieces"


def test_gaussian_noise_has_the_requested_sigma():
    flat = np.full((256, 256, 3), 128, np.uint8)
    out = run("gaussian_noise", flat, 0, sigma=10.0)
    assert out.astype(float).std() == pytest.approx(10.0, rel=0.05)
    gray = run("gaussian_noise", flat, 0, sigma=10.0, gray=True)
    assert (gray[..., 0] == gray[..., 1]).all()


def test_salt_pepper_amount():
    flat = np.full((200, 200, 3), 128, np.uint8)
    out = run("salt_pepper_noise", flat, 0, amount=0.1)
    hit = (out != 128).any(axis=2)
    assert hit.mean() == pytest.approx(0.1, abs=0.01)
    assert set(np.unique(out[hit])) <= {0, 255}


def test_film_grain_is_strongest_in_midtones():
    ramp = np.repeat(np.linspace(0, 255, 256, dtype=np.float32)[None, :], 256, axis=0).astype(np.uint8)
    noise = run("film_grain", ramp, 0, strength=10.0, size=1.0).astype(float) - ramp
    assert noise[:, 110:146].std() > 1.6 * noise[:, 5:30].std()


def test_grain_size_clumps_the_grain():
    flat = np.full((256, 256), 128, np.uint8)
    fine = run("film_grain", flat, 0, strength=10.0, size=1.0).astype(float)
    coarse = run("film_grain", flat, 0, strength=10.0, size=4.0).astype(float)
    neighbour_corr = lambda x: np.corrcoef(x[:, :-1].ravel(), x[:, 1:].ravel())[0, 1]  # noqa: E731
    assert neighbour_corr(coarse) > 0.7 > 0.2 > neighbour_corr(fine)


@pytest.mark.parametrize("name", ["gaussian_blur", "defocus_blur", "motion_blur", "resample"])
def test_blurs_remove_fine_detail(name, photo):
    detail = lambda x: np.abs(np.diff(x.astype(float), axis=1)).mean()  # noqa: E731
    assert detail(run(name, photo, 0, **PHOTOMETRIC[name])) < 0.7 * detail(photo)


def test_lower_jpeg_quality_loses_more(photo):
    error = lambda q: np.abs(run("jpeg", photo, 0, quality=q).astype(float) - photo).mean()  # noqa: E731
    assert error(10) > error(50) > error(95)


def test_fade_lowers_contrast(photo):
    out = run("fade", photo, 0, contrast=0.5, lift=0.0)
    assert out.astype(float).std() == pytest.approx(0.5 * photo.astype(float).std(), rel=0.05)


def test_sepia_tone_is_warm():
    gray = np.full((32, 32, 3), 128, np.uint8)
    r, g, b = run("tone", gray, 0, color="sepia", strength=1.0).reshape(-1, 3).mean(axis=0)
    assert r > g > b


def test_vignette_darkens_corners_not_centre():
    flat = np.full((200, 200, 3), 200, np.uint8)
    out = run("vignette", flat, 0, strength=0.5, radius=0.5)
    assert out[100, 100].mean() > 190 and out[2, 2].mean() < 140


def test_bad_images_are_refused():
    with pytest.raises(TypeError, match="uint8"):
        synth.DegradationPipeline()(np.zeros((8, 8, 3), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError):
        synth.DegradationPipeline()(np.zeros((8, 8, 4), np.uint8), np.random.default_rng(0))


@pytest.mark.parametrize("name", NAMES)
def test_all_19_corruptions_run_deterministically(name):
    image = (np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)
    for severity in (1, 5):
        first = synth.corruption(image, np.random.default_rng(9), name, severity)
        second = synth.corruption(image, np.random.default_rng(9), name, severity)
        assert first.shape == image.shape and first.dtype == np.uint8
        np.testing.assert_array_equal(first, second)
    gray = synth.corruption(image[..., 0], np.random.default_rng(9), name, 3)
    assert gray.shape == image.shape[:2]


def test_corruption_severity_is_checked():
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="severity"):
        synth.corruption(image, np.random.default_rng(0), "fog", 6)
    with pytest.raises(ValueError, match="unknown corruption"):
        synth.corruption(image, np.random.default_rng(0), "rain", 1)


def test_poisson_noise_has_the_shot_noise_variance():
    flat = np.full((256, 256, 3), 128, np.uint8)
    out = run("poisson_noise", flat, 0, peak=50.0).astype(float)
    assert out.std() == pytest.approx(np.sqrt(128 * 255 / 50.0), rel=0.05)
    assert abs(out.mean() - 128) < 0.5


def test_noise_depends_only_on_the_generator_even_across_threads():
    """OpenCV draws the noise; its per-thread state is reseeded from our generator on every call."""
    from concurrent.futures import ThreadPoolExecutor

    flat = np.full((128, 128, 3), 100, np.uint8)
    alone = [run("gaussian_noise", flat, seed, sigma=10.0) for seed in range(8)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda seed: run("gaussian_noise", flat, seed, sigma=10.0), range(8)))
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(alone[0], alone[1])
