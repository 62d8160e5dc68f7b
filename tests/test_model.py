"""The networks, the partial non-local block and the losses."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from oldphoto.model.config import ModelConfig
from oldphoto.model.discriminators import LatentDiscriminator, MultiscaleDiscriminator
from oldphoto.model.losses import VGG19_LAYOUT, VGGLoss, bce_dice, feature_matching, focal, kl_divergence, lsgan
from oldphoto.model.mapping import Mapping, PartialNonLocal, latent_mask
from oldphoto.model.engine import Restorer
from oldphoto.model.restorer import RestorerNetwork
from oldphoto.model.scratch import ScratchDetector
from oldphoto.model.strength import RestorationStrength, blend, crop_boxes
from oldphoto.model.tone import ToneCorrection, thumbnail
from oldphoto.model.vae import VAE

from conftest import random_vgg_state

TINY = ModelConfig.load("tiny")


def test_vae_latent_is_a_quarter_of_the_input_and_decodes_back():
    vae = VAE(TINY.vae).eval()
    x = torch.rand(2, 3, 64, 96) * 2 - 1
    recon, z, mean, log_variance = vae(x)
    assert mean.shape == log_variance.shape == (2, TINY.vae.latent_channels, 16, 24)
    assert torch.equal(z, mean)  # eval: no sampling
    assert recon.shape == x.shape and recon.abs().max() <= 1
    vae.train()
    _, z, mean, _ = vae(x)
    assert not torch.equal(z, mean)  # training: reparameterized sample


def test_scratch_detector_takes_any_size():
    detector = ScratchDetector(TINY.scratch).eval()
    for h, w in [(37, 53), (64, 64), (5, 9)]:
        assert detector(torch.zeros(1, 1, h, w)).shape == (1, 1, h, w)


def test_discriminators_return_scores_and_features():
    d = MultiscaleDiscriminator(TINY.discriminator)
    out = d(torch.zeros(2, 3, 64, 64))
    assert len(out) == TINY.discriminator.scales
    assert [len(scale) for scale in out] == [TINY.discriminator.layers + 2] * TINY.discriminator.scales
    assert out[0][-1].shape[1] == 1 and out[1][-1].shape[-1] < out[0][-1].shape[-1]
    assert LatentDiscriminator(8, 16)(torch.zeros(2, 8, 16, 16)).shape == (2, 1, 8, 8)


def _restore_path_flops(config: ModelConfig, size: int = 128) -> float:
    network = RestorerNetwork(config).eval()
    x = torch.rand(1, 3, size, size) * 2 - 1
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 2 : size // 2 + 3, :] = 1  # a scratch across: the global branch runs
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network.detect(x)
        network(x, mask)
    return counter.get_total_flops() / size**2


def test_flops_per_pixel_of_the_presets():
    default, light = _restore_path_flops(ModelConfig.load("default")), _restore_path_flops(ModelConfig.load("light"))
    assert light < 0.55 * default and default <= 1e6  # the budget; light is what ships
    assert 6e6 < _restore_path_flops(ModelConfig.load("paper")) < 8e6  # the reference: about 7 MFLOP per pixel


def naive_partial_non_local(block: PartialNonLocal, f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """REFERENCE section 1 written out with the full N x N matrix."""
    b, c, h, w = f.shape
    theta = block.theta(f).flatten(2)  # B x A x N
    phi = block.phi(f).flatten(2)
    mu = block.mu(f).flatten(2)  # B x C x N
    m = (m > 0).float().flatten(1)  # B x N
    out = []
    for i in range(b):
        affinity = torch.exp(theta[i].t() @ phi[i])  # N x N
        weighted = affinity * (1 - m[i])[None, :]
        s = weighted / weighted.sum(1, keepdim=True).clamp_min(1e-30)
        o = block.nu((mu[i] @ s.t()).view(1, c, h, w))[0].flatten(1)  # C x N
        out.append(m[i][None] * o + (1 - m[i][None]) * f[i].flatten(1))
    return torch.stack(out).view(b, c, h, w)


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_partial_non_local_equals_the_naive_formula(chunk):
    torch.manual_seed(0)
    block = PartialNonLocal(12, 6, query_chunk=chunk).double()
    for conv in (block.theta, block.phi):  # small affinities: exp() stays finite in the naive version
        conv.weight.data *= 0.2
    f = torch.randn(3, 12, 9, 11, dtype=torch.float64)
    m = (torch.rand(3, 1, 9, 11) < 0.3).double()
    m[1] = 0  # an undamaged sample in the batch
    with torch.no_grad():
        assert torch.allclose(block(f, m), naive_partial_non_local(block, f, m), atol=1e-10)


def test_strided_keys_attend_only_to_valid_cells_on_the_grid():
    """key_stride 2: a damaged cell attends exactly as the naive formula does when every valid cell
    off the stride-2 grid is treated as unavailable; undamaged cells keep their features."""
    torch.manual_seed(2)
    block = PartialNonLocal(12, 6, query_chunk=5, key_stride=2).double()
    for conv in (block.theta, block.phi):
        conv.weight.data *= 0.2
    f = torch.randn(2, 12, 9, 11, dtype=torch.float64)
    m = (torch.rand(2, 1, 9, 11) < 0.3).double()
    off_grid = torch.ones(9, 11, dtype=torch.bool)
    off_grid[::2, ::2] = False
    with torch.no_grad():
        out = block(f, m)
        expected = naive_partial_non_local(block, f, torch.maximum(m, off_grid.double()[None, None]))
    damaged = m.bool().expand_as(f)
    assert torch.allclose(out[damaged], expected[damaged], atol=1e-10)
    assert torch.equal(out[~damaged], f[~damaged])


def test_partial_non_local_ignores_features_at_damaged_positions():
    """O_i does not change when the features at damaged positions j change: nothing is attended at a
    damaged position. (A damaged position's own features still form its query, as in the method.)"""
    torch.manual_seed(1)
    block = PartialNonLocal(8, 4, query_chunk=5).eval()
    f = torch.randn(2, 8, 10, 10)
    m = (torch.rand(2, 1, 10, 10) < 0.4).float()
    damaged = m[:, 0].nonzero().tolist()
    with torch.no_grad():
        reference = block(f, m)
        for b, y, x in damaged[:: max(1, len(damaged) // 8)]:
            changed = f.clone()
            changed[b, :, y, x] = torch.randn(8) * 10
            others = torch.ones_like(reference, dtype=torch.bool)
            others[b, :, y, x] = False
            assert torch.allclose(block(changed, m)[others], reference[others], rtol=0, atol=1e-6)
        # undamaged positions keep their own features
        valid = ~m.bool().expand_as(f)
        assert torch.equal(reference[valid], f[valid])


def test_partial_non_local_all_damaged_gives_nu_of_zero():
    block = PartialNonLocal(4, 2).eval()
    with torch.no_grad():
        out = block(torch.randn(1, 4, 3, 3), torch.ones(1, 1, 3, 3))
    assert torch.allclose(out, block.nu.bias.view(1, 4, 1, 1).expand(1, 4, 3, 3))


def test_partial_non_local_memory_grows_linearly():
    """36,864 latent positions, half of them damaged: an N x N matrix over the damaged queries alone
    would take 1.36 GB; the chunked block must stay far below it."""
    code = textwrap.dedent("""
        import resource, torch
        from oldphoto.model.mapping import PartialNonLocal
        torch.set_num_threads(2)
        block = PartialNonLocal(16, 8, query_chunk=1024).eval()
        f = torch.randn(1, 16, 192, 192)
        m = torch.zeros(1, 1, 192, 192); m[..., ::2, :] = 1
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with torch.no_grad():
            block(f, m)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    """)
    grown_mb = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert grown_mb < 300, f"peak memory grew by {grown_mb:.0f} MB"


def test_mapping_with_and_without_mask_and_latent_mask():
    mapping = Mapping(TINY.mapping, TINY.vae.latent_channels).eval()
    z = torch.randn(2, TINY.vae.latent_channels, 8, 8)
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, 0, 5, 5] = 1  # one pixel damages its whole latent cell
    lm = latent_mask(mask, (8, 8))
    assert lm.sum() == 1 and lm[0, 0, 1, 1] == 1
    assert mapping(z, lm).shape == z.shape == mapping(z).shape
    assert torch.equal(mapping(z, torch.zeros_like(lm)), mapping(z))  # an empty mask changes nothing


def test_restorer_bundle_round_trip_and_restore(photo):
    network = RestorerNetwork(TINY)
    copy = RestorerNetwork.from_bundle(network.bundle())
    for (k, a), (_, b) in zip(network.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a, b), k
    for image in (photo[:37, :61], photo[..., 0]):  # odd sizes and grayscale
        restored, mask, _ = Restorer(copy, tile=None).restore(image)
        assert restored.shape == image.shape and restored.dtype == np.uint8
        assert mask.shape == image.shape[:2] and mask.dtype == bool
    with pytest.raises(ValueError, match="not an oldphoto restorer bundle"):
        RestorerNetwork.from_bundle({"state_dict": {}})


def test_a_new_detail_path_leaves_the_restorer_as_it_was_until_trained(photo):
    torch.manual_seed(0)
    plain = RestorerNetwork(TINY).eval()
    detailed = RestorerNetwork(TINY.model_copy(update={"detail": 8})).eval()
    detailed.load_state_dict(plain.state_dict(), strict=False)  # all but the detail path's weights
    image = torch.rand(1, 3, 32, 48) * 2 - 1
    mask = (torch.rand(1, 1, 32, 48) > 0.9).float()
    assert torch.equal(detailed(image, mask), plain(image, mask))
    # Trained, it sees the photo at full resolution: a one-pixel change of the input moves the output there.
    with torch.no_grad():
        torch.nn.init.normal_(detailed.detail.outlet.weight, std=0.1)
        changed = image.clone()
        changed[..., 17, 21] += 0.5
        moved = (detailed(changed, mask) - detailed(image, mask)).abs().sum(1)[0]
    assert moved[17, 21] > 10 * moved[0, 0] and moved[17, 21] > 0
    assert RestorerNetwork.from_bundle(detailed.bundle()).config.detail == 8
    # A config without one serializes as before the detail path existed (checkpoint folders keep their names).
    assert "detail" not in TINY.model_dump_json() and '"detail":8' in detailed.config.model_dump_json()


def test_gan_and_reconstruction_losses():
    assert kl_divergence(torch.zeros(4, 8), torch.zeros(4, 8)) == 0
    assert kl_divergence(torch.ones(4, 8), torch.zeros(4, 8)) == pytest.approx(0.5)
    assert lsgan(torch.ones(3, 1, 4, 4), 1.0) == 0 and lsgan(torch.zeros(3, 1, 4, 4), 1.0) == 1
    scales = [[torch.zeros(1, 2, 4, 4), torch.full((1, 1, 4, 4), 0.5)]] * 2
    assert lsgan(scales, 0.0) == pytest.approx(0.25)
    other = [[torch.ones(1, 2, 4, 4), torch.zeros(1, 1, 4, 4)]] * 2
    assert feature_matching(scales, scales) == 0 and feature_matching(other, scales) == pytest.approx(1.0)


def test_mask_losses_reward_the_right_mask():
    target = torch.zeros(2, 1, 16, 16)
    target[..., 4:6, :] = 1
    good, bad = (target * 2 - 1) * 8, -(target * 2 - 1) * 8
    for loss in (bce_dice, focal):
        assert loss(good, target) < 0.05 < loss(bad, target)


def test_a_few_false_marks_on_an_undamaged_photo_cost_what_their_pixels_do():
    """Dice over the batch: four falsely marked pixels on the batch's undamaged photo cost BCE's 0.06
    and Dice's 0.06 (4 of the 36 marked pixels wrong); a per-photo Dice's part was 0.4 (that photo's
    1 - 1/5, averaged over the two)."""
    target = torch.zeros(2, 1, 16, 16)
    target[0, :, 4:6, :] = 1  # the first photo has a scratch, the second none
    good = (target * 2 - 1) * 8
    marked = good.clone()
    marked[1, :, 8, 4:8] = 8
    cost = float(bce_dice(marked, target) - bce_dice(good, target))
    assert 0.1 < cost < 0.14, cost


def _vgg_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    state = random_vgg_state(VGG19_LAYOUT, seed)
    state["classifier.0.weight"] = torch.zeros(4, 4)  # ignored
    return state


def test_vgg_loss_from_torchvision_style_weights():
    loss = VGGLoss(_vgg_state_dict())
    a = torch.rand(1, 3, 32, 32) * 2 - 1
    assert loss(a, a) == 0
    assert loss(a, torch.flip(a, [3])) > 0
    with pytest.raises(RuntimeError):
        VGGLoss({"features.0.weight": torch.zeros(64, 3, 3, 3)})  # incomplete weights are refused


def test_vgg_weights_load_from_a_path_and_a_url(tmp_path):
    import functools
    import http.server
    import threading

    from oldphoto.models import read_weights

    torch.save(_vgg_state_dict(), tmp_path / "vgg19.pth")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/vgg19.pth"
        from_url, from_path = VGGLoss(read_weights(url)), VGGLoss(read_weights(str(tmp_path / "vgg19.pth")))
    finally:
        server.shutdown()
    a, b = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    assert from_url(a, b) == from_path(a, b) > 0


def _fit_tone(tone: ToneCorrection, degraded: torch.Tensor, clean: torch.Tensor, steps: int) -> float:
    """The MSE to clean after steps of Adam on one batch."""
    optimizer = torch.optim.Adam(tone.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = nn.functional.mse_loss(tone(thumbnail(degraded), degraded), clean)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def test_tone_correction_starts_as_identity_and_learns_to_undo_fading():
    torch.manual_seed(0)
    tone = ToneCorrection()
    clean = torch.rand(8, 3, 48, 48) * 2 - 1
    # Faded and toned prints: contrast lost towards a per-photo level, a warm cast added.
    contrast = torch.rand(8, 1, 1, 1) * 0.5 + 0.4
    faded = clean * contrast + torch.tensor([0.15, 0.05, -0.1])[None, :, None, None] * torch.rand(8, 1, 1, 1)
    assert torch.allclose(tone(thumbnail(faded), faded), faded)
    before = nn.functional.mse_loss(faded, clean).item()
    assert _fit_tone(tone, faded, clean, 150) < 0.1 * before
    # The bundle carries the tone correction when the network has one, and not otherwise.
    network = RestorerNetwork(TINY).with_tone()
    network.tone.load_state_dict(tone.state_dict())
    restored = RestorerNetwork.from_bundle(network.bundle())
    assert restored.tone is not None and torch.equal(restored.tone.head[-1].bias, tone.head[-1].bias)
    assert torch.equal(restored.tone.field[-1].weight, tone.field[-1].weight)
    assert RestorerNetwork.from_bundle(RestorerNetwork(TINY).bundle()).tone is None
    # A bundle made before the light field existed loads as the global transform it was.
    older = RestorerNetwork.from_bundle(RestorerNetwork(TINY).with_tone(spatial=False).bundle())
    assert older.tone is not None and older.tone.field is None


def test_light_field_undoes_uneven_exposure_that_one_transform_cannot():
    """Prints exposed brighter on one side: only the spatial light field can even them out."""
    torch.manual_seed(0)
    clean = torch.rand(8, 3, 64, 64) * 2 - 1
    # A smooth horizontal light ramp, from 0.6 to 1.2 of the light, its direction random per print.
    ramp = torch.linspace(0.6, 1.2, 64).view(1, 1, 1, 64)
    light = torch.where(torch.rand(8, 1, 1, 1) < 0.5, ramp, ramp.flip(-1))
    exposed = (clean + 1) * light - 1
    before = nn.functional.mse_loss(exposed, clean).item()
    global_only = _fit_tone(ToneCorrection(spatial=False), exposed, clean, 60)
    spatial = _fit_tone(ToneCorrection(), exposed, clean, 60)
    assert global_only > 0.5 * before, "one transform per photo cannot undo a ramp"
    assert spatial < 0.15 * before and spatial < 0.25 * global_only
    # Applied in bands, in place under inference, it is the same function as with gradients kept.
    tone = ToneCorrection()
    nn.init.normal_(tone.field[-1].weight, std=0.05)
    tall = torch.rand(1, 3, 600, 40) * 2 - 1
    kept = tone(thumbnail(tall), tall).detach()
    with torch.inference_mode():
        assert torch.allclose(tone(thumbnail(tall), tall.clone()), kept, atol=1e-6)


def test_strength_leaves_the_input_or_takes_the_restoration_and_fills_damage_in_the_inputs_tone():
    torch.manual_seed(0)
    image = torch.full((1, 3, 40, 60), 0.2)
    image[..., 20, 10:50] = 0.9  # a bright scratch
    mask = torch.zeros(1, 1, 40, 60)
    mask[..., 19:22, 10:50] = 1
    restored = torch.full_like(image, -0.1) + 0.01 * torch.randn_like(image)  # scratch gone, but 0.3 darker
    assert torch.allclose(blend(image, restored, torch.zeros_like(mask), torch.zeros(1)), image, atol=1e-6)
    assert torch.allclose(blend(image, restored, mask, torch.ones(1)), restored)
    left = blend(image, restored, mask, torch.zeros(1))
    assert torch.allclose(left[..., 30:, :], image[..., 30:, :], atol=1e-6)  # undamaged: the input's own pixels
    fill = left[..., 19:22, 10:50]
    assert (fill - 0.2).abs().max() < 0.05, "the fill takes the tone around it, not the restoration's"
    half = blend(image, restored, mask, torch.full((1,), 0.5))
    assert torch.allclose(half[..., 30:, :], (image + restored)[..., 30:, :] / 2)


def test_strength_is_judged_on_crops_spread_over_the_whole_photo():
    assert crop_boxes(1, 1) == [(0, 0, 1, 1)]
    assert crop_boxes(100, 300) == [(0, 0, 100, 256), (0, 44, 100, 256)]
    boxes = crop_boxes(3000, 4000)
    assert len(boxes) == 16 and (0, 0, 256, 256) in boxes and (2744, 3744, 256, 256) in boxes
    # Each photo's crops together: the strength of a photo does not depend on the others in the batch.
    strength = RestorationStrength().eval()
    x, r = torch.rand(6, 3, 32, 32) * 2 - 1, torch.rand(6, 3, 32, 32) * 2 - 1
    both = strength(x, r, photos=2)
    assert both.shape == (2,) and torch.allclose(both[1:], strength(x[3:], r[3:], photos=1), atol=1e-6)


def test_the_engine_applies_the_strength_and_the_bundle_carries_it():
    torch.manual_seed(0)
    network = RestorerNetwork(TINY).with_tone().with_strength()
    nn.init.normal_(network.tone.head[-1].weight, std=0.05)  # a tone correction that changes the photo
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    plain = RestorerNetwork.from_weights(TINY, {k: v for k, v in network.state_dict().items() if not k.startswith("strength.")})
    assert plain.strength is None
    restored = Restorer(plain, precision="fp32").restore(image, scratch="off")[0]
    assert not np.array_equal(restored, image)
    for bias, expected in ((-30.0, image), (30.0, restored)):  # strength 0: the input; 1: the restoration
        nn.init.constant_(network.strength.head[-1].bias, bias)
        loaded = RestorerNetwork.from_bundle(network.bundle())
        assert loaded.strength is not None
        assert np.array_equal(Restorer(loaded, precision="fp32").restore(image, scratch="off")[0], expected)
    for shape in ((1, 1, 3), (2, 2), (3, 200, 3)):  # tiny and gray photos too
        out = Restorer(network, precision="fp32").restore(np.full(shape, 100, np.uint8))[0]
        assert out.shape == shape
