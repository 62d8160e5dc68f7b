"""Trainers, resumable training, the tracked training flow and the registered restorer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from oldphoto.model.config import ModelConfig
from oldphoto.model.data import SampleStream, pair_batch, real_batch
from oldphoto.model.restorer import RestorerNetwork, restore_with_latents
from oldphoto.model import metrics
from oldphoto.model.losses import ssim
from oldphoto.model.tone import ToneCorrection, thumbnail
from oldphoto.model.stages import STAGES, applied_after, sources
from oldphoto.model.train import (DetailTrainer, DistillTrainer, MappingTrainer, PolishTrainer, RefineTrainer, StrengthTrainer,
                                  StudentPath, ToneTrainer, evaluated_luma, inherit_weights, load_state, save_state)
from oldphoto.model.vae import VAE

TINY = ModelConfig.load("tiny")
CLI = [sys.executable, "-m", "oldphoto.cli"]


def _streams(pairs: str):
    from oldphoto.pairs import read_shard, shard_urls

    urls = shard_urls(pairs)
    return SampleStream(len(urls), lambda i: read_shard(urls[i]), seed=0)


def test_sample_stream_is_seeded_resumable_and_split_across_ranks():
    shards = [[{"id": s * 10 + r} for r in range(n)] for s, n in enumerate([3, 0, 4])]
    ids = lambda stream, n: [item["id"] for item, _ in stream.take(n)]
    a, b = SampleStream(3, shards.__getitem__, 7), SampleStream(3, shards.__getitem__, 7)
    first = ids(a, 16)
    assert first == ids(b, 16)
    assert sorted(first[:7]) == [0, 1, 2, 20, 21, 22, 23]  # an epoch sees every sample once
    state = a.state_dict()
    after = ids(a, 5)
    c = SampleStream(3, shards.__getitem__, 7)
    c.load_state_dict(state)
    assert ids(c, 5) == after
    ranks = [SampleStream(3, shards.__getitem__, 7, rank=r, world=2) for r in range(2)]
    taken = [ids(r, 8) for r in ranks]
    assert [x for pair in zip(*taken) for x in pair] == first
    with pytest.raises(ValueError, match="none of the 2 shards"):
        SampleStream(2, lambda i: [], 0).take(1)


def test_each_part_of_a_restorer_comes_from_the_last_stage_that_yields_it():
    triplet = {"vae_a", "vae_b", "mapping", "scratch"}
    assert sources(triplet) == {"scratch": "scratch", "encoder": "vae_a", "mapping": "mapping", "decoder": "vae_b"}
    assert sources(triplet | {"refine", "tone"}) == {"scratch": "scratch", "encoder": "vae_a", "mapping": "refine",
                                                     "decoder": "refine", "detail": "refine", "tone": "tone"}
    assert "tone" not in sources(triplet | {"tone"}, without=("tone",))
    assert sources(triplet | {"tone", "strength"})["strength"] == "strength"
    # A stage that starts from the restorer learns on its output without the parts applied after its own.
    assert applied_after("detail") == applied_after("refine") == ("tone", "strength")
    assert applied_after("tone") == ("strength",) and applied_after("strength") == ()
    # polish learns through the tone correction, and its path is the one a folder with it gives.
    assert applied_after("polish") == ("strength",)
    assert sources(triplet | {"refine", "tone", "polish"})["mapping"] == "polish"
    assert sources({"distill", "tone"}) == {"encoder": "distill", "mapping": "distill", "decoder": "distill",
                                            "detail": "distill", "tone": "tone"}
    assert sources({"distill", "refine"})["mapping"] == "refine"  # refine fine-tunes the distilled path
    # The ablation's restorer is its own path beside the triplet's detector; the triplet never takes its weights.
    assert sources(triplet | {"direct", "tone"}, ablation=True) == {"scratch": "scratch", "encoder": "direct",
                                                                    "mapping": "direct", "decoder": "direct", "detail": "direct"}
    assert sources(triplet | {"direct"}) == sources(triplet)


def test_vae_a_fine_tunes_the_init_path_of_its_shape_and_starts_afresh_beside_another():
    torch.manual_seed(0)
    init = RestorerNetwork(TINY)
    trainer = STAGES["vae_a"].trainer_class()(TINY, torch.device("cpu"), torch.float32, frozen={"restorer": init})
    started = trainer.trained["vae"].encoder.state_dict()
    assert all(torch.equal(started[k], v) for k, v in init.encoder.state_dict().items())
    decoder = trainer.trained["vae"].decoder.state_dict()  # G_Y, a decoder that knows these latents
    assert all(torch.equal(decoder[k], v) for k, v in init.decoder.state_dict().items())
    wider = TINY.model_copy(update={"vae": TINY.vae.model_copy(update={"channels": 2 * TINY.vae.channels})})
    other = STAGES["vae_a"].trainer_class()(TINY, torch.device("cpu"), torch.float32, frozen={"restorer": RestorerNetwork(wider)})
    fresh = STAGES["vae_a"].trainer_class()(TINY, torch.device("cpu"), torch.float32)
    key = next(iter(started))
    assert not torch.equal(other.trained["vae"].encoder.state_dict()[key], started[key]), "another shape: a new encoder"
    assert not torch.equal(fresh.trained["vae"].encoder.state_dict()[key], started[key]), "no init: a new encoder"


def test_the_anchor_holds_vae_a_latents_of_synthetic_photos_near_the_init_encoders(pairs):
    """anchor_l1 > 0: the fine-tune's latents of synthetic photos stay nearer the init E_RX's (which
    the mapping was trained on) than without it; unset, it leaves the config's JSON as it was."""
    assert "anchor_l1" not in TINY.model_dump_json()
    torch.manual_seed(0)
    init = RestorerNetwork(TINY)
    stream, real_stream = _streams(pairs), SampleStream(1, lambda i: [{"image": np.full((90, 70, 3), 60, np.uint8)}], 0)
    batches = [pair_batch(stream, 2, 32) | {"real": real_batch(real_stream, 2, 32)} for _ in range(6)]
    moved = {}
    for weight in (0.0, 50.0):
        train = TINY.train.model_copy(update={"lr": 3e-3, "weights": TINY.train.weights.model_copy(update={"anchor_l1": weight})})
        trainer = STAGES["vae_a"].trainer_class()(TINY.model_copy(update={"train": train}), torch.device("cpu"), torch.float32,
                                                  frozen={"restorer": init})
        for batch in batches:
            metrics = trainer.step(batch)
        assert ("anchor_l1" in metrics) == (weight > 0)
        x = batches[0]["degraded"]
        with torch.no_grad():
            moved[weight] = float((trainer.trained["vae"].encoder.eval()(x)[0] - init.encoder.eval()(x)[0]).abs().mean())
    assert moved[50.0] < 0.7 * moved[0.0], moved
    wider = TINY.model_copy(update={"vae": TINY.vae.model_copy(update={"channels": 2 * TINY.vae.channels})})
    for frozen in (None, {"restorer": RestorerNetwork(wider)}):  # nothing to hold the latents to
        with pytest.raises(ValueError, match="anchor_l1 = 50.0 .* no init of this VAE's shape"):
            STAGES["vae_a"].trainer_class()(TINY.model_copy(update={"train": train}), torch.device("cpu"), torch.float32,
                                            frozen=frozen)


@pytest.mark.parametrize("stage", ["vae_a", "vae_b", "mapping", "scratch", "refine", "tone", "polish", "distill", "direct"])
def test_each_stage_takes_steps_with_finite_losses(stage, pairs):
    frozen = ({"vae_a": VAE(TINY.vae), "vae_b": VAE(TINY.vae)} if stage == "mapping" else
              {"restorer": RestorerNetwork(TINY)} if stage in ("refine", "tone") else
              {"restorer": RestorerNetwork(TINY).with_tone()} if stage == "polish" else
              {"teacher": RestorerNetwork(TINY).eval()} if stage == "distill" else None)
    trainer = STAGES[stage].trainer_class()(TINY, torch.device("cpu"), torch.float32, frozen=frozen)
    stream = _streams(pairs)
    real_stream = SampleStream(1, lambda i: [{"image": np.full((90, 70, 3), 128, np.uint8)}], 0)
    for _ in range(3):
        batch = pair_batch(stream, 2, 32)
        if "real" in STAGES[stage].needs:
            batch["real"] = real_batch(real_stream, 2, 32)
        metrics = trainer.step(batch)
        assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert trainer.step_count == 3
    grid = trainer.preview(batch)
    rows = 4 if stage == "vae_a" else 2  # vae_a shows its synthetic and its real photos
    columns = 4 if stage in ("distill", "tone") else 3  # the teacher's or uncorrected output beside the result
    assert grid.dtype == np.uint8 and grid.shape == (rows * 32, columns * 32, 3)
    # The parts the stage declares are where it says, named as the restorer names them.
    restorer = RestorerNetwork(TINY).with_tone().state_dict()
    for part, (module, prefix) in STAGES[stage].parts.items():
        held = {k.removeprefix(prefix) for k in trainer.trained[module].state_dict() if k.startswith(prefix)}
        assert held == {k.removeprefix(f"{part}.") for k in restorer if k.startswith(f"{part}.")}, (stage, part)


def test_a_tone_checkpoint_from_before_the_light_field_resumes_with_it(pairs):
    """Its global transform and step count are kept; the light field joins at the identity."""
    class GlobalToneTrainer(ToneTrainer):  # the tone stage as it was
        def build(self):
            return {"tone": ToneCorrection(spatial=False)}

    old = GlobalToneTrainer(TINY, torch.device("cpu"), torch.float32, frozen={"restorer": RestorerNetwork(TINY)})
    batch = pair_batch(_streams(pairs), 2, 32)
    for _ in range(2):
        old.step(batch)
    state = load_state(save_state(old.state_dict()))
    resumed = ToneTrainer(TINY, torch.device("cpu"), torch.float32, frozen={"restorer": RestorerNetwork(TINY)})
    resumed.load_state_dict(state)
    assert resumed.step_count == 2
    tone = resumed.trained["tone"].state_dict()
    assert all(torch.equal(tone[k], v) for k, v in state["modules"]["tone"].items())
    assert not tone["field.2.weight"].any() and not tone["field.2.bias"].any()
    assert np.isfinite(resumed.step(batch)["total"]) and resumed.step_count == 3


def test_the_tone_stage_goes_on_from_the_restorers_tone_correction(pairs):
    """A restorer with a light field hands its tone correction on; one without starts at the identity."""
    torch.manual_seed(0)
    restorer = RestorerNetwork(TINY).with_tone()
    for p in restorer.tone.parameters():
        torch.nn.init.normal_(p, std=0.05)
    trainer = ToneTrainer(TINY, torch.device("cpu"), torch.float32, frozen={"restorer": restorer})
    assert all(torch.equal(trainer.trained["tone"].state_dict()[k], v) for k, v in restorer.tone.state_dict().items())
    trainer.step(pair_batch(_streams(pairs), 2, 32))
    assert not torch.equal(trainer.trained["tone"].head[-1].weight, restorer.tone.head[-1].weight)  # a copy is trained
    for frozen in (RestorerNetwork(TINY), RestorerNetwork(TINY).with_tone(spatial=False)):
        fresh = ToneTrainer(TINY, torch.device("cpu"), torch.float32, frozen={"restorer": frozen}).trained["tone"]
        assert fresh.field is not None and not fresh.head[-1].weight.any()


def test_a_tone_correction_of_another_width_starts_anew_and_the_restorer_carries_its_width(pairs):
    """A config asking for a wider tone correction than the restorer's gets a new one at the
    identity, of that width; the restorer built from the stage has it, and so does its bundle."""
    from oldphoto.model.restorer import assemble_restorer

    torch.manual_seed(0)
    config = TINY.model_copy(update={"tone": 48}, deep=True)
    path = RestorerNetwork(TINY).with_tone().eval()
    trainer = ToneTrainer(config, torch.device("cpu"), torch.float32, frozen={"restorer": path})
    tone = trainer.trained["tone"]
    assert tone.features[0].out_channels == 48 and tone.head[0].out_features == 96 and not tone.head[-1].weight.any()
    trainer.step(pair_batch(_streams(pairs), 2, 32))
    states = {"tone": {"config": config.model_dump_json(), "trainer": trainer.state_dict()}}
    restorer = assemble_restorer({"tone"}, states.__getitem__, init=path)
    assert restorer.config.tone == 48 and restorer.tone.features[0].out_channels == 48
    again = RestorerNetwork.from_bundle(restorer.bundle())
    assert all(torch.equal(again.state_dict()[k], v) for k, v in restorer.state_dict().items() if k.startswith("tone."))
    assert "tone" not in json.loads(TINY.model_dump_json())  # configs from before it keep their JSON


def test_the_tone_stage_learns_on_the_output_restored_with_the_detectors_mask(pairs):
    """As at inference: the restore path gets its own detector's mask, not the pair's true one; and
    the rate decays to zero over the stage's steps."""
    torch.manual_seed(0)
    config = TINY.model_copy(deep=True)
    config.train.steps = 4
    restorer = RestorerNetwork(config).eval()
    trainer = ToneTrainer(config, torch.device("cpu"), torch.float32, frozen={"restorer": restorer})
    batch = pair_batch(_streams(pairs), 2, 32)
    detected = restorer.detect(batch["degraded"])
    batch["mask"] = 1 - detected  # a true mask unlike the detector's
    with torch.no_grad():
        wanted = restorer(batch["degraded"], detected)
        assert not torch.allclose(wanted, restorer(batch["degraded"], batch["mask"]))
    assert torch.allclose(trainer._restored(batch), wanted)
    rates = []
    for _ in range(4):
        trainer.step(batch)
        rates.append(trainer.optimizers["tone"].param_groups[0]["lr"])
    assert rates[0] == config.train.lr and rates[-1] < rates[1] < rates[0]


def test_mapping_overfits_a_fixed_batch(pairs):
    torch.manual_seed(0)
    config = TINY.model_copy(deep=True)
    config.train.lr = 2e-3
    trainer = MappingTrainer(config, torch.device("cpu"), torch.float32,
                             frozen={"vae_a": VAE(config.vae), "vae_b": VAE(config.vae)})
    batch = pair_batch(_streams(pairs), 4, 32)
    first = trainer.step(batch)["latent_l1"]
    for _ in range(60):
        last = trainer.step(batch)["latent_l1"]
    assert last < 0.3 * first, (first, last)


def test_refine_fits_mapping_and_decoder_with_the_encoder_frozen_and_a_decaying_rate(pairs):
    torch.manual_seed(0)
    config = TINY.model_copy(deep=True)
    config.train.lr, config.train.steps = 2e-3, 60
    path = RestorerNetwork(config)
    before = {k: v.clone() for k, v in path.state_dict().items()}
    trainer = RefineTrainer(config, torch.device("cpu"), torch.float32, frozen={"restorer": path})
    batch = pair_batch(_streams(pairs), 4, 32)
    first = trainer.step(batch)["clean_l1"]
    rates = []
    for _ in range(59):
        rates.append(trainer.optimizers["network"].param_groups[0]["lr"])
        last = trainer.step(batch)["clean_l1"]
    assert last < 0.6 * first, (first, last)
    # Cosine from lr to zero over the stage's steps, from the step count (so a resumed run agrees).
    assert rates[0] == 2e-3 and rates[1] == pytest.approx(2e-3 * 0.5 * (1 + np.cos(np.pi / 60)))
    assert rates[30] == pytest.approx(1e-3) and rates[-1] < 2e-5
    assert all(a > b for a, b in zip(rates, rates[1:]))
    # The encoder (vae_a's, aligned with real photos) is untouched; the frozen path is not modified.
    assert all(torch.equal(before[k], v) for k, v in path.state_dict().items())
    trained = trainer.trained["network"].state_dict()
    assert not torch.equal(trained["decoder.body.0.weight"], before["decoder.body.0.weight"])
    assert not torch.equal(trained["mapping.head.0.weight"], before["mapping.head.0.weight"])


def test_polish_learns_the_engines_output_through_the_frozen_tone_in_l1_and_ssim(pairs):
    """It restores with the path's own detector's mask, then the tone correction, which it does not
    train; batch norm keeps its statistics; both its terms fall."""
    torch.manual_seed(0)
    weights = TINY.train.weights.model_copy(update={"ssim": 40.0})
    config = TINY.model_copy(update={"train": TINY.train.model_copy(update={"lr": 2e-3, "steps": 40, "weights": weights})})
    path = RestorerNetwork(config).with_tone().eval()
    for p in path.tone.parameters():  # a tone correction that changes the output
        torch.nn.init.normal_(p, std=0.05)
    before = {k: v.clone() for k, v in path.state_dict().items()}
    trainer = PolishTrainer(config, torch.device("cpu"), torch.float32, frozen={"restorer": path})
    batch = pair_batch(_streams(pairs), 4, 32)
    x = batch["degraded"]
    with torch.no_grad():
        engine_like = path.tone(thumbnail(x), path(x, path.detect(x)))
        assert torch.allclose(trainer._restore(batch, trainer.trained["network"]), engine_like, atol=1e-5)
        assert not torch.allclose(engine_like, path(x, path.detect(x)), atol=1e-2)
    first = trainer.step(batch)
    for _ in range(39):
        last = trainer.step(batch)
    assert last["clean_l1"] < 0.8 * first["clean_l1"] and last["ssim"] < 0.8 * first["ssim"], (first, last)
    assert first["total"] == pytest.approx(40 * first["clean_l1"] + 40 * first["ssim"], rel=1e-5)
    trained = trainer.trained["network"].state_dict()
    statistics = [k for k in trained if "running_" in k or "num_batches" in k]
    assert statistics and all(torch.equal(trained[k], before[k]) for k in statistics)
    assert not torch.equal(trained["decoder.body.0.weight"], before["decoder.body.0.weight"])
    assert all(torch.equal(before[k], v) for k, v in path.state_dict().items())  # tone and path left as they were
    assert "ssim" not in json.loads(TINY.model_dump_json())["train"]["weights"]  # configs from before it keep their JSON


def test_the_ssim_term_is_the_evaluations_ssim():
    rng = np.random.default_rng(0)
    clean = rng.random((2, 1, 48, 40))
    noisy = np.clip(clean + 0.1 * rng.standard_normal(clean.shape), 0, 1)
    expected = np.mean([metrics.ssim(255 * a[0], 255 * b[0]) for a, b in zip(noisy, clean)])
    assert float(ssim(torch.tensor(noisy), torch.tensor(clean))) == pytest.approx(expected, abs=1e-5)
    assert float(ssim(torch.tensor(clean), torch.tensor(clean))) == pytest.approx(1.0)
    # On the evaluation's luminance: Y of BT.601 from RGB in [-1, 1].
    rgb = torch.tensor(rng.random((1, 3, 8, 8)) * 2 - 1)
    y = metrics.luma(255 * (rgb[0].permute(1, 2, 0).numpy() + 1) / 2)
    assert np.allclose(255 * evaluated_luma(rgb)[0, 0].numpy(), y)


# A student of the tiny model: narrower everywhere, its VAEs without residual blocks.
NARROW = TINY.model_copy(deep=True)
NARROW.vae.channels, NARROW.vae.blocks, NARROW.mapping.channels = 4, 0, 8


def test_refine_adds_a_detail_path_to_a_restorer_without_one_and_trains_it(pairs, tmp_path):
    """Asked for by the config, the detail path starts at zero (the restorer as it was), learns, and
    is a part of the restorer built from the folder."""
    from oldphoto.model.restorer import assemble_restorer

    torch.manual_seed(0)
    config = TINY.model_copy(update={"detail": 8}, deep=True)
    config.train.lr = 2e-3
    path = RestorerNetwork(TINY).eval()
    trainer = RefineTrainer(config, torch.device("cpu"), torch.float32, frozen={"restorer": path})
    batch = pair_batch(_streams(pairs), 4, 32)
    with torch.no_grad():
        start = trainer.trained["network"](batch["degraded"], path.encoder(batch["degraded"])[0], batch["mask"])
    assert torch.equal(start, path(batch["degraded"], batch["mask"]))
    first = trainer.step(batch)["clean_l1"]
    for _ in range(30):
        last = trainer.step(batch)["clean_l1"]
    assert last < first and trainer.trained["network"].detail.outlet.weight.abs().max() > 0
    states = {"refine": {"config": config.model_dump_json(), "trainer": trainer.state_dict()}}
    restorer = assemble_restorer({"refine"}, states.__getitem__, init=path)
    assert restorer.config.detail == 8 and restorer.detail is not None
    assert all(torch.equal(restorer.state_dict()[f"detail.{k}"], v) for k, v in trainer.trained["network"].detail.state_dict().items())
    with pytest.raises(ValueError, match="can only be widened"):
        RefineTrainer(TINY.model_copy(update={"detail": 4}), torch.device("cpu"), torch.float32, frozen={"restorer": restorer})


def test_the_detail_stage_learns_to_return_an_undamaged_photo_as_it_was(pairs):
    """On pairs left undegraded the restore path still smooths the photo; the detail path, trained
    alone with the path frozen, learns to keep the input's pixels, and only its weights change."""
    torch.manual_seed(0)
    config = TINY.model_copy(update={"detail": 8}, deep=True)
    config.train.lr, config.train.steps = 3e-3, 61  # its rate decays to zero over the steps
    path = RestorerNetwork(TINY).eval()
    before = {k: v.clone() for k, v in path.state_dict().items()}
    trainer = DetailTrainer(config, torch.device("cpu"), torch.float32, frozen={"restorer": path})
    batch = pair_batch(_streams(pairs), 4, 32)
    batch = {"clean": batch["clean"], "degraded": batch["clean"].clone(), "mask": torch.zeros_like(batch["mask"])}
    decoded = trainer._decoded(batch)[1]
    assert torch.equal(trainer._restore(batch, trainer.trained["detail"]), decoded.clamp(-1, 1))  # starts as the path
    first = trainer.step(batch)["clean_l1"]
    for _ in range(60):
        last = trainer.step(batch)["clean_l1"]
    assert first > 0.05 and last < first / 4, (first, last)
    assert all(torch.equal(path.state_dict()[k], v) for k, v in before.items())
    with pytest.raises(ValueError, match="detail"):
        DetailTrainer(TINY, torch.device("cpu"), torch.float32, frozen={"restorer": path})


def test_a_wider_detail_stage_goes_on_from_the_restorers_narrower_detail_path(pairs):
    """Widened, the detail path first restores exactly as the restorer's did; training then uses its
    new channels. It may not be narrowed."""
    torch.manual_seed(0)
    path = RestorerNetwork(TINY.model_copy(update={"detail": 4})).eval()
    for layer in path.detail.modules():  # a trained path: nothing at zero
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.normal_(layer.weight, std=0.2)
    config = TINY.model_copy(update={"detail": 8}, deep=True)
    config.train.lr, config.train.steps = 3e-3, 20
    trainer = DetailTrainer(config, torch.device("cpu"), torch.float32, frozen={"restorer": path})
    wide = trainer.trained["detail"]
    assert wide.inlet.out_channels == 8 and wide.outlet.weight[:, 4:].abs().max() == 0
    batch = pair_batch(_streams(pairs), 4, 32)
    with torch.no_grad():
        mask, decoded = trainer._decoded(batch)
        assert torch.allclose(wide(batch["degraded"], decoded, mask), path.detail(batch["degraded"], decoded, mask), atol=1e-6)
    for _ in range(20):
        trainer.step(batch)
    assert wide.outlet.weight[:, 4:].abs().max() > 0  # the new channels reach the output
    with pytest.raises(ValueError, match="can only be widened"):
        DetailTrainer(TINY.model_copy(update={"detail": 2}), torch.device("cpu"), torch.float32, frozen={"restorer": path})


def test_pairs_seen_at_other_scales_keep_damage_and_photo_aligned():
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[:, 30:32] = True  # a line 2 px wide
    degraded = clean.copy()
    degraded[mask] = 255
    stream = SampleStream(1, lambda i: [{"clean": clean, "degraded": degraded, "mask": mask}], seed=0)
    for scales, width in [((4.0, 4.0), 8), ((0.5, 0.5), 1)]:
        batch = pair_batch(stream, 3, 32, scales)
        assert batch["degraded"].shape == batch["mask"].shape[:1] + (3, 32, 32)
        line_width = batch["mask"][:, 0].amax(1).sum(1)  # damaged columns of each sample
        assert all(w in (0, width) for w in line_width.tolist()), (scales, line_width)
        assert (batch["degraded"][:, 0][batch["mask"][:, 0] > 0] > 0.9).all()  # the mask stays on the white line


def test_a_student_inherits_the_teachers_first_channels_and_blocks():
    torch.manual_seed(0)
    teacher = RestorerNetwork(TINY).eval()
    for module in teacher.modules():  # batch norm statistics away from their defaults, so that they count
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2)
    same = StudentPath(TINY)
    inherit_weights(same, teacher)
    same.eval()
    image, mask = torch.rand(2, 3, 32, 32) * 2 - 1, (torch.rand(2, 1, 32, 32) > 0.9).float()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(same(image, mask), restore_with_latents(teacher, image, mask)))

    student = StudentPath(NARROW)
    inherit_weights(student, teacher)
    weights, source = student.state_dict(), teacher.state_dict()
    # The encoder's first convolution: its first 4 filters of 8; the 1x1 mean: all 8 latents, from 16 inputs of 32.
    assert torch.equal(weights["encoder.body.0.weight"], source["encoder.body.0.weight"][:4])
    assert torch.equal(weights["encoder.mean.weight"], source["encoder.mean.weight"][:, :16])
    assert torch.equal(weights["encoder.body.1.running_mean"], source["encoder.body.1.running_mean"][:4])
    # The decoder has no block: its upsampling convolution (layer 2, after the teacher's block at 1) is the teacher's 3.
    assert torch.equal(weights["decoder.body.2.weight"], source["decoder.body.3.weight"][:8, :16])
    assert torch.equal(weights["mapping.tail.0.body.0.weight"], source["mapping.tail.0.body.0.weight"][:8, :8])
    deeper = TINY.model_copy(deep=True)
    deeper.vae.blocks = 2
    with pytest.raises(ValueError, match="only be narrower and have fewer blocks"):
        inherit_weights(StudentPath(deeper), teacher)


def test_distill_fits_the_student_to_the_teacher_which_stays_untouched(pairs):
    torch.manual_seed(0)
    config = NARROW.model_copy(deep=True)
    config.train.lr, config.train.steps = 2e-3, 40
    config.train.weights.clean_l1 = 0.0  # an untrained teacher's output is far from the clean photo
    teacher = RestorerNetwork(TINY).eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = DistillTrainer(config, torch.device("cpu"), torch.float32, frozen={"teacher": teacher})
    batch = pair_batch(_streams(pairs), 4, 32)
    batch["real"] = batch["clean"].flip(3)  # a second kind of photograph, masked by the teacher's detector
    first = trainer.step(batch)
    assert set(first) == {"total", "clean_l1", "teacher_l1", "teacher_latent_l1"}
    for _ in range(39):
        last = trainer.step(batch)
    assert last["teacher_l1"] < 0.5 * first["teacher_l1"], (first, last)
    assert last["teacher_latent_l1"] < 0.5 * first["teacher_latent_l1"], (first, last)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    other = NARROW.model_copy(deep=True)
    other.vae.latent_channels = 4
    with pytest.raises(ValueError, match="as many channels as the teacher"):
        DistillTrainer(other, torch.device("cpu"), torch.float32, frozen={"teacher": teacher})


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_state(checkpoint.read_bytes())["trainer"]["modules"]


def test_resumed_training_equals_uninterrupted(pairs, real, tmp_path):
    from oldphoto.tasks.train import run_stage

    config = TINY.model_copy(deep=True)
    config.train.steps = 4
    straight = run_stage("vae_a", config, pairs, real, str(tmp_path / "straight"))
    assert straight["steps"] == 4 and straight["resumed_at"] == 0
    config.train.steps = 2
    run_stage("vae_a", config, pairs, real, str(tmp_path / "resumed"))
    config.train.steps = 4
    assert run_stage("vae_a", config, pairs, real, str(tmp_path / "resumed"))["resumed_at"] == 2
    a, b = _weights(tmp_path / "straight" / "vae_a.pt"), _weights(tmp_path / "resumed" / "vae_a.pt")
    for module in a:
        for key in a[module]:
            assert torch.equal(a[module][key], b[module][key]), (module, key)


def test_a_killed_stage_resumes_from_its_checkpoint(pairs, tmp_path):
    checkpoints = tmp_path / "ckpt"
    command = CLI + ["train-stage", "scratch", "--config", "tiny", "--pairs", pairs, "--checkpoints", str(checkpoints),
                     "--steps", "100000"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (checkpoints / "scratch.pt").exists() or load_state((checkpoints / "scratch.pt").read_bytes())["trainer"]["step"] < 6:
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read().decode()[-2000:]
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    step = load_state((checkpoints / "scratch.pt").read_bytes())["trainer"]["step"]
    result = subprocess.run(command[:-1] + [str(step + 2)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["resumed_at"] == step and summary["steps"] == step + 2


def test_distributed_data_parallel_trains_one_model_on_two_cpu_processes(pairs, tmp_path):
    """Two ranks, each on its own part of the data, end with the same weights (run_stage checks it
    with an all_gather of their sums, and fails when they differ)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "oldphoto.cli", "train-stage", "vae_b", "--config", "tiny", "--pairs", pairs,
               "--checkpoints", str(tmp_path), "--steps", "2", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2 and summary["world_size"] == 2
    assert load_state((tmp_path / "vae_b.pt").read_bytes())["trainer"]["step"] == 2


def test_training_flow_tracks_every_stage_and_registers_a_restorer(prefect_api, pairs, real, tracking, tmp_path, photo):
    from mlflow import MlflowClient

    from oldphoto.flows.train import train
    from oldphoto.model.engine import Restorer
    from oldphoto.models import load_restorer
    from oldphoto.tasks.restore import DEFAULT_MODEL
    from oldphoto.tasks.train import build_restorer

    checkpoints = str(tmp_path / "ckpt")
    result = train(pairs, real, TINY, checkpoints=checkpoints, model_name="test-restorer")
    assert [s["stage"] for s in result["stages"]] == ["vae_a", "vae_b", "mapping", "scratch", "refine", "tone"]
    assert all(s["steps"] == TINY.train.steps for s in result["stages"])

    client = MlflowClient(tracking)
    parent = client.get_run(result["run_id"])
    assert parent.data.params["vae.channels"] == str(TINY.vae.channels) and parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result['run_id']}'")
    assert sorted(c.data.tags["oldphoto.stage"] for c in children) == ["mapping", "refine", "scratch", "tone", "vae_a", "vae_b"]
    expected = {"vae_a": {"kl", "l1", "gan", "feature_matching", "latent_gan", "discriminator", "latent_discriminator"},
                "vae_b": {"kl", "l1", "gan", "feature_matching", "discriminator"},
                "mapping": {"latent_l1", "clean_l1", "gan", "feature_matching", "discriminator"}, "scratch": {"bce_dice"},
                "refine": {"clean_l1"}, "tone": {"mse"}}
    for child in children:
        stage = child.data.tags["oldphoto.stage"]
        assert {"total", "lr", "samples_per_second"} | expected[stage] == set(child.data.metrics), stage
        assert child.data.params["stage"] == stage and child.data.params["vgg_loss"].startswith("off")
        history = client.get_metric_history(child.info.run_id, "total")
        assert [m.step for m in history] == list(range(1, TINY.train.steps + 1))
        assert all(np.isfinite(m.value) for m in history)
        assert [a.path for a in client.list_artifacts(child.info.run_id, "checkpoints")] == [f"checkpoints/{stage}.pt"]
        assert client.list_artifacts(child.info.run_id, "images"), "sample grids are logged"

    version = client.get_model_version("test-restorer", result["version"])
    assert version.run_id == result["run_id"]
    client.set_registered_model_alias("test-restorer", "champion", result["version"])
    # Every reference loads the restorer of the folder's stages, which restores as they do.
    built = build_restorer(checkpoints)
    expected, _, _ = Restorer(built).restore(photo, colour="restore")
    assert expected.shape == photo.shape and not np.array_equal(expected, photo)
    for ref in ("models:/test-restorer@champion", result["uri"], result["run_uri"], f"{checkpoints}/restorer.pt"):
        loaded = load_restorer(ref)
        assert loaded.state_dict().keys() == built.state_dict().keys()
        assert all(torch.equal(v, built.state_dict()[k]) for k, v in loaded.state_dict().items()), ref
        assert np.array_equal(Restorer(loaded).restore(photo, colour="restore")[0], expected), ref

    again = train(pairs, real, TINY, checkpoints=checkpoints, model_name="test-restorer")
    assert again["version"] == result["version"]  # nothing new trained, nothing new registered
    assert all(s["resumed_at"] == s["steps"] for s in again["stages"])

    # The ablation in the same folder: the direct network beside the same scratch detector.
    direct = train(pairs, real, TINY, stages=["direct"], checkpoints=checkpoints, model_name="test-direct")
    assert [s["stage"] for s in direct["stages"]] == ["direct"]
    ablation, triplet = load_restorer(direct["uri"]).state_dict(), load_restorer(result["uri"]).state_dict()
    state = load_state((tmp_path / "ckpt" / "direct.pt").read_bytes())["trainer"]["modules"]["network"]
    assert all(torch.equal(ablation[k], v) for k, v in state.items())
    assert all(torch.equal(ablation[k], triplet[k]) for k in triplet if k.startswith("scratch."))
    assert not torch.equal(ablation["decoder.body.0.weight"], triplet["decoder.body.0.weight"])
    tone = load_state((tmp_path / "ckpt" / "tone.pt").read_bytes())["trainer"]["modules"]["tone"]
    assert all(torch.equal(triplet[f"tone.{k}"], v) for k, v in tone.items())
    assert not any(k.startswith("tone.") for k in ablation)  # the direct network is compared as it is
    # The restorer's mapping and decoder are refine's; its encoder is vae_a's, which refine keeps frozen.
    stage = lambda name: load_state((tmp_path / "ckpt" / f"{name}.pt").read_bytes())["trainer"]["modules"]
    refined, vae_a, vae_b = stage("refine")["network"], stage("vae_a")["vae"], stage("vae_b")["vae"]
    assert all(torch.equal(triplet[k], v) for k, v in refined.items())
    assert all(torch.equal(triplet[k], v) for k, v in vae_a.items() if k.startswith("encoder."))
    assert not torch.equal(triplet["decoder.body.0.weight"], vae_b["decoder.body.0.weight"])
    # refine and tone are optional: a folder without them (made before they existed) gives a restorer
    # of the mapping and VAE_B's decoder, without the tone correction.
    without = tmp_path / "older"
    shutil.copytree(checkpoints, without)
    (without / "tone.pt").unlink()
    (without / "refine.pt").unlink()
    older = build_restorer(str(without)).state_dict()
    assert build_restorer(str(without)).tone is None and build_restorer(checkpoints).tone is not None
    assert torch.equal(older["decoder.body.0.weight"], vae_b["decoder.body.0.weight"])

    # Fine-tuning a given restorer in a fresh folder: refine and tone start from it, and the parts no
    # stage was trained for (the scratch detector, VAE_A's encoder) are taken from it as they are.
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        train(pairs, None, TINY, stages=["refine"], checkpoints=str(tmp_path / "bad"), init=str(tmp_path / "none.pt"))
    assert not (tmp_path / "bad").exists(), "a bad init is refused before anything is trained"
    tuned = train(pairs, None, TINY, stages=["refine", "tone"], checkpoints=str(tmp_path / "tuned"), init=result["uri"],
                  model_name="test-tuned")
    assert [s["steps"] for s in tuned["stages"]] == [TINY.train.steps] * 2
    fine = load_restorer(tuned["uri"]).state_dict()
    assert all(torch.equal(fine[k], v) for k, v in triplet.items() if k.startswith(("scratch.", "encoder.")))
    assert not torch.equal(fine["decoder.body.0.weight"], triplet["decoder.body.0.weight"])
    assert not torch.equal(fine["tone.head.0.weight"], triplet["tone.head.0.weight"])
    with pytest.raises(ValueError, match="networks of another configuration"):
        build_restorer(str(tmp_path / "tuned"), init=DEFAULT_MODEL)  # the shipped model is not tiny
    # With an init, the scratch stage fine-tunes the init's detector: Adam moves each weight by at most
    # about the learning rate a step, where a new detector would differ entirely.
    sharper = train(pairs, None, TINY, stages=["scratch"], checkpoints=str(tmp_path / "detector"), init=result["uri"],
                    model_name="test-detector")
    detector = load_restorer(sharper["uri"])
    weights = [f"scratch.{name}" for name, _ in detector.scratch.named_parameters()]  # not batch norm's statistics
    moved = max((detector.state_dict()[k] - triplet[k]).abs().max().item() for k in weights)
    assert 0 < moved <= 1.5 * TINY.train.steps * TINY.train.lr


def test_the_train_console_shows_the_steps_and_their_losses_and_no_mlflow_advice(pairs, tmp_path):
    """Off a terminal: a plain line with the step count, the losses and the rate (a resumed run counts
    on from where it stopped), the JSON summary last; none of MLflow's advice to model authors."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"}
    env |= {"OLDPHOTO_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    torch.save(RestorerNetwork(TINY).bundle(), tmp_path / "init.pt")  # the parts the scratch stage does not train
    command = CLI + ["train", "--config", "tiny", "--stages", "scratch", "--pairs", pairs, "--init", str(tmp_path / "init.pt"),
                     "--checkpoints", str(tmp_path / "ckpt")]
    runs = [subprocess.run(command + ["--steps", str(steps)], capture_output=True, text=True, env=env, timeout=300)
            for steps in (4, 6)]
    for done in runs:
        assert done.returncode == 0, done.stderr[-3000:]
        assert "type hints" not in done.stderr and "CloudPickle" not in done.stderr
        assert "WARNING mlflow" not in done.stderr, done.stderr[-3000:]
    first, resumed = ([line for line in done.stderr.splitlines() if " steps (" in line] for done in runs)
    assert first[0].startswith("1/4 steps (total ") and "bce_dice" in first[0] and first[-1].startswith("4/4 steps")
    assert first[-1].endswith("steps/s")
    assert resumed[0].startswith("5/6 steps") and resumed[-1].startswith("6/6 steps")
    assert json.loads(runs[1].stdout)["stages"][0]["resumed_at"] == 4, "the summary is the last thing printed"


def test_distilling_a_restorer_registers_the_lighter_path_with_the_teachers_detector(prefect_api, pairs, real, tracking,
                                                                                   tmp_path, photo):
    from oldphoto.flows.train import train
    from oldphoto.model.engine import Restorer
    from oldphoto.models import load_restorer
    from oldphoto.tasks.train import build_restorer

    teacher = RestorerNetwork(TINY).with_tone().eval()
    torch.save(teacher.bundle(), tmp_path / "teacher.pt")
    with pytest.raises(ValueError, match="learns from a teacher"):
        train(pairs, real, NARROW, stages=["distill"], checkpoints=str(tmp_path / "alone"))
    assert not (tmp_path / "alone").exists()
    folder = tmp_path / "light"
    result = train(pairs, real, NARROW, stages=["distill"], checkpoints=str(folder), init=str(tmp_path / "teacher.pt"),
                   model_name="test-light")
    light = load_restorer(result["uri"])
    assert light.config == NARROW and light.tone is not None
    # The detector is the teacher's, with its settings, whatever the student's config says of them.
    other = NARROW.model_copy(deep=True)
    other.scratch.threshold = 0.9
    state = load_state((folder / "distill.pt").read_bytes())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "distill.pt").write_bytes(save_state(state | {"config": other.model_dump_json()}))
    assert build_restorer(str(tmp_path / "other"), init=str(tmp_path / "teacher.pt")).config.scratch == TINY.scratch
    weights, source = light.state_dict(), teacher.state_dict()
    assert sum(p.numel() for p in light.parameters()) < sum(p.numel() for p in teacher.parameters())
    assert all(torch.equal(weights[k], v) for k, v in _weights(folder / "distill.pt")["network"].items())
    assert all(torch.equal(weights[k], v) for k, v in source.items() if k.startswith(("scratch.", "tone.")))
    # The engine runs the student, not the teacher: their restorations differ.
    restored, _, _ = Restorer(light).restore(photo, colour="restore")
    assert restored.shape == photo.shape
    assert (restored != Restorer(teacher).restore(photo, colour="restore")[0]).mean() > 0.5
    # The tone correction trained again, on the student's output: distill is done and not retrained.
    tuned = train(pairs, real, NARROW, stages=["distill", "tone"], checkpoints=str(folder), init=str(tmp_path / "teacher.pt"),
                  model_name="test-light")
    assert [(s["stage"], s["resumed_at"], s["steps"]) for s in tuned["stages"]] == [
        ("distill", TINY.train.steps, TINY.train.steps), ("tone", 0, TINY.train.steps)]
    retoned = load_restorer(tuned["uri"]).state_dict()
    assert not torch.equal(retoned["tone.head.0.weight"], source["tone.head.0.weight"])
    assert all(torch.equal(retoned[k], weights[k]) for k in weights if k.startswith(("encoder.", "mapping.", "decoder.")))


def test_training_refuses_missing_stages_and_bad_references(prefect_api, pairs, tracking, tmp_path):
    from oldphoto.flows.train import train
    from oldphoto.models import load_restorer

    with pytest.raises(ValueError, match="unknown stages"):
        train(pairs, None, TINY, stages=["vae_c"])
    with pytest.raises(FileNotFoundError, match="vae_a, vae_b"):
        train(pairs, None, TINY, stages=["mapping", "scratch"], checkpoints=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="stages scratch are neither"):
        train(pairs, None, TINY, stages=["direct"], checkpoints=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        load_restorer(str(tmp_path / "nothing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable weights file"):
        load_restorer(str(tmp_path / "junk.pt"))
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a usable restorer bundle"):
        load_restorer(str(tmp_path / "other.pt"))


def test_a_stage_trains_from_and_checkpoints_to_s3(pairs, bucket):
    from oldphoto import storage
    from oldphoto.tasks.train import run_stage

    fs, _ = storage.filesystem(bucket)
    for shard in sorted(Path(pairs).glob("*.parquet")):
        fs.put_file(str(shard), f"{bucket}/pairs/{shard.name}")
    config = TINY.model_copy(deep=True)
    config.train.steps = 2
    result = run_stage("scratch", config, f"{bucket}/pairs", None, f"{bucket}/ckpt")
    assert result["steps"] == 2
    assert load_state(storage.read_bytes(f"{bucket}/ckpt/scratch.pt"))["trainer"]["step"] == 2


def test_the_strength_stage_learns_to_leave_alone_what_its_restorer_would_harm(pairs):
    """Undamaged prints through a restorer of random weights: every one comes out worse, and the
    strength learns to hold the restoration back."""
    torch.manual_seed(0)
    config = TINY.model_copy(deep=True)
    config.train.lr, config.train.steps = 1e-2, 25
    restorer = RestorerNetwork(TINY).with_strength()
    torch.nn.init.constant_(restorer.scratch.out.bias, -20.0)  # a detector that marks nothing: no fills
    trainer = StrengthTrainer(config, torch.device("cpu"), torch.float32, frozen={"restorer": restorer})
    assert trainer.engine.network.strength is None  # it learns on the unblended output
    assert all(torch.equal(trainer.trained["strength"].state_dict()[k], v) for k, v in restorer.strength.state_dict().items())
    batch = pair_batch(_streams(pairs), 4, 32)
    batch["degraded"] = batch["clean"]  # prints that need no repair
    restored, _ = trainer._restored(batch)
    harm = torch.nn.functional.mse_loss(restored, batch["clean"]).item()
    losses = [trainer.step(batch)["mse"] for _ in range(25)]
    assert losses[-1] < 0.2 * harm and losses[-1] < losses[0]
    with torch.no_grad():
        assert float(trainer.trained["strength"](batch["degraded"], restored).max()) < 0.3
    state = load_state(save_state(trainer.state_dict()))
    resumed = StrengthTrainer(config, torch.device("cpu"), torch.float32, frozen={"restorer": RestorerNetwork(TINY)})
    resumed.load_state_dict(state)
    assert resumed.step_count == 25 and np.isfinite(resumed.step(batch)["total"])
    mixed = StrengthTrainer(config, torch.device("cpu"), torch.bfloat16, frozen={"restorer": restorer})
    assert mixed.preview(batch).shape == (4 * 32, 4 * 32, 3)  # input | restored | blended | clean, under autocast


def test_hard_negatives_are_the_samples_the_detector_marks_falsely(pairs, model, tmp_path):
    """scripts/hard_negatives.py keeps a sample whose degraded photo the detector marks beyond its mask
    over at least the share, and its clean photo as an untouched sample where that is marked so."""
    from oldphoto.model.engine import Restorer
    from oldphoto.models import load_restorer
    from oldphoto.pairs import read_pairs

    restorer = Restorer(load_restorer(model), "auto", "auto")
    samples = list(read_pairs(pairs))
    degraded = {s["sample_id"]: float((restorer.detect(s["degraded"]) & ~s["mask"]).mean()) for s in samples}
    clean = {s["sample_id"]: float(restorer.detect(s["clean"]).mean()) for s in samples}
    share = float(np.median(list(degraded.values())))  # some kept, some not
    done = subprocess.run([sys.executable, "scripts/hard_negatives.py", pairs, model, str(tmp_path / "hard"), "--share", str(share)],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    kept = list(read_pairs(str(tmp_path / "hard")))
    untouched = [s for s in kept if not s["record"]["ops"]]
    assert sorted(s["sample_id"] for s in kept if s["record"]["ops"]) == sorted(i for i, v in degraded.items() if v >= share)
    assert 0 < len(kept) - len(untouched) < len(samples)
    assert sorted(s["sample_id"] for s in untouched) == sorted(i for i, v in clean.items() if v >= share)
    assert all((s["degraded"] == s["clean"]).all() and not s["mask"].any() for s in untouched)
    assert json.loads(done.stdout)["samples"] == len(samples)
