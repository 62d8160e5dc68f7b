"""Scheduled retraining: new material found through the ledger, the challenger fine-tuned from the
champion's checkpoints, evaluated against it on the fixed set, and the alias moved only on a win;
restores follow the champion."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from PIL import Image

from conftest import SAMPLES
from oldphoto.model.config import ModelConfig
from oldphoto.model.train import load_state
from oldphoto.tasks.evaluate import EvaluateConfig
from oldphoto.tasks.retrain import RetrainConfig

pytestmark = pytest.mark.usefixtures("prefect_api")
NAME = "oldphoto-restorer"  # the name restores look up the champion under


def _photos(folder, names, seed):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray((rng.random((64, 80, 3)) * 255).astype(np.uint8)).save(folder / name)


def _step(checkpoints: str, stage: str) -> int:
    with open(f"{checkpoints}/{stage}.pt", "rb") as f:
        return load_state(f.read())["trainer"]["step"]


def _decision_artifact() -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrain-decision"])),
                                          sort="CREATED_DESC", limit=1)
    return artifacts[0].data


def test_retrain_rounds_promote_only_a_better_challenger(tmp_path, pairs, real, tracking):
    from oldphoto.flows.restore import restore_archive
    from oldphoto.flows.retrain import retrain
    from oldphoto.flows.train import train

    tiny = ModelConfig.load("tiny")
    first = train(pairs, real, tiny, checkpoints=str(tmp_path / "ckpt"), model_name=NAME)
    client = MlflowClient(tracking, registry_uri=tracking)

    watched_clean, watched_real = tmp_path / "incoming" / "clean", tmp_path / "incoming" / "real"
    _photos(watched_clean, ["a.png", "b.png", "c.png"], 1)
    _photos(watched_real, ["old1.png", "old2.png"], 2)
    config = RetrainConfig(clean=[str(watched_clean)], real=[str(watched_real)], work=str(tmp_path / "work"),
                           samples_per_photo=2, crop=48, steps=2, margin_db=-100.0, heldout=str(SAMPLES),
                           evaluation=EvaluateConfig(count=3, crop=48, seed=4, sheet_samples=0))

    # Round 1: no alias yet, so the latest version becomes champion; the challenger wins (margin -100 dB).
    one = retrain(config)
    assert one["promoted"] and one["previous_champion"] == first["version"] and one["new"] == {"clean": 3, "real": 2}
    assert client.get_model_version_by_alias(NAME, "champion").version == one["challenger"]
    assert client.get_model_version(NAME, first["version"]).version == first["version"], "the old version stays"
    assert "promoted" in client.get_model_version(NAME, one["challenger"]).tags["oldphoto.retrain"]
    # Fine-tuned from the champion's steps: vae_a (new real scans), scratch, refine and tone two more; vae_b
    # untouched, and the mapping too, since refine's copy of it is the one the restorer uses.
    checkpoints = f"{one['round']}/checkpoints"
    for stage, more in (("vae_a", 2), ("vae_b", 0), ("mapping", 0), ("scratch", 2), ("refine", 2), ("tone", 2)):
        assert _step(checkpoints, stage) == _step(str(tmp_path / "ckpt"), stage) + more, stage
    text = _decision_artifact()
    assert "**Promoted**" in text and f"version {one['challenger']}" in text and "3 clean photographs, 2 real scans" in text
    ledger = pq.read_table(tmp_path / "work" / "ledger.parquet").to_pylist()
    assert sorted((r["kind"], r["key"].rsplit("/", 1)[-1]) for r in ledger) == [
        ("clean", "a.png"), ("clean", "b.png"), ("clean", "c.png"), ("real", "old1.png"), ("real", "old2.png")]

    # Nothing new: nothing trained, nothing registered.
    versions = len(client.search_model_versions(f"name = '{NAME}'"))
    idle = retrain(config)
    assert not idle["promoted"] and "nothing to train on" in idle["reason"]
    assert len(client.search_model_versions(f"name = '{NAME}'")) == versions

    # Round 2: one new clean photo, a margin no challenger can meet: the champion stays.
    _photos(watched_clean, ["d.png"], 3)
    two = retrain(config.model_copy(update={"margin_db": 100.0}))
    assert not two["promoted"] and two["new"] == {"clean": 1, "real": 0}
    assert two["previous_champion"] == one["challenger"] and two["challenger"] != one["challenger"]
    assert client.get_model_version_by_alias(NAME, "champion").version == one["challenger"]
    assert "kept as challenger" in client.get_model_version(NAME, two["challenger"]).tags["oldphoto.retrain"]
    assert "**Not promoted**" in _decision_artifact()
    # No new real scans: vae_a is not fine-tuned; the others go on from round 1's champion.
    assert _step(f"{two['round']}/checkpoints", "vae_a") == _step(checkpoints, "vae_a")
    assert _step(f"{two['round']}/checkpoints", "refine") == _step(checkpoints, "refine") + 2
    assert len(pq.read_table(tmp_path / "work" / "ledger.parquet")) == 6

    # Restores without a named model use the champion, pinned by version number.
    out = restore_archive(str(watched_clean), str(tmp_path / "restored"))
    assert out["model"] == f"models:/{NAME}/{one['challenger']}" and out["restored"] == 4
    restored = Image.open(io.BytesIO((tmp_path / "restored" / "a.png").read_bytes()))
    assert restored.size == (80, 64)

    # Round 3: a reviewed archive. Accepted restorations are new clean photographs and their scans new
    # real ones; the rejected scan goes to the evaluation's sheet; the undecided one nowhere.
    from oldphoto.tasks.restore import read_manifest
    from oldphoto.tasks.review import append_decision

    _photos(tmp_path / "scans", ["s1.png", "s2.png", "s3.png", "s4.png"], 5)
    archive = str(tmp_path / "reviewed")
    restore_archive(str(tmp_path / "scans"), archive)
    rows = read_manifest(archive)
    for key, decision in (("s1.png", "accept"), ("s2.png", "accept"), ("s3.png", "reject")):
        append_decision(archive, {"key": key, "decision": decision, "note": "", "settings": "{}", "reviewer": "curator",
                                  "model_version": rows[key]["model_version"], "restored_at": rows[key]["restored_at"]})
    three = retrain(config.model_copy(update={"reviewed": [archive]}))
    assert three["new"] == {"clean": 2, "real": 2}
    ledger = pq.read_table(tmp_path / "work" / "ledger.parquet").to_pylist()
    assert sorted((r["kind"], r["key"].removeprefix(str(tmp_path) + "/")) for r in ledger if r["round"] == ledger[-1]["round"]) == [
        ("clean", "reviewed/s1.png"), ("clean", "reviewed/s2.png"), ("real", "scans/s1.png"), ("real", "scans/s2.png")]
    assert [p.name for p in (Path(three["round"]) / "rejected").iterdir()] == ["000000-s3.png"]
    assert retrain(config.model_copy(update={"reviewed": [archive]}))["new"] == {"clean": 0, "real": 0}


def test_decide_promotes_exactly_when_the_challenger_gains_the_margin(tmp_path, tracking):
    from oldphoto.tasks.retrain import decide

    client = MlflowClient(tracking, registry_uri=tracking)
    cases = [(22.5, 0.25, True),     # +0.50 dB against a 0.25 dB margin
             (22.25, 0.25, True),    # exactly the margin
             (22.125, 0.25, False),  # better, but by less than the margin
             (21.5, 0.25, False),    # worse
             (21.5, -1.0, True),     # a negative margin accepts a slightly worse challenger (-0.5 >= -1)
             (20.5, -1.0, False)]    # but not a much worse one
    for i, (challenger_db, margin_db, promoted) in enumerate(cases):
        name = f"decide-{i}"
        client.create_registered_model(name)
        champion, challenger = (client.create_model_version(name, str(tmp_path)).version for _ in range(2))
        client.set_registered_model_alias(name, "champion", champion)
        evaluation = {"methods": {"model": {"psnr_y": challenger_db}, "compare": {"psnr_y": 22.0}}}
        decision = decide.fn({"version": champion}, {"version": challenger}, evaluation, margin_db, name, tracking)
        assert decision["promoted"] is promoted and decision["gain_db"] == challenger_db - 22.0, cases[i]
        assert decision["champion"] == (challenger if promoted else champion)
        assert client.get_model_version_by_alias(name, "champion").version == decision["champion"]
        tag = client.get_model_version(name, challenger).tags["oldphoto.retrain"]
        assert tag.startswith("promoted" if promoted else "kept as challenger") and f"{challenger_db - 22:+.2f} dB" in tag


def test_retrain_without_a_registered_model_says_what_to_do(tmp_path, tracking):
    from oldphoto.flows.retrain import retrain

    _photos(tmp_path / "clean", ["a.png"], 1)
    config = RetrainConfig(clean=[str(tmp_path / "clean")], work=str(tmp_path / "work"), crop=48, samples_per_photo=1)
    with pytest.raises(FileNotFoundError, match="no registered model 'oldphoto-restorer' to fine-tune"):
        retrain(config)
    assert not (tmp_path / "work" / "ledger.parquet").exists(), "a failed round records nothing as seen"


def test_a_champion_older_than_the_refine_and_tone_stages_gets_them_trained_afresh(tmp_path):
    from oldphoto.model.train import save_state
    from oldphoto.tasks.retrain import start_from_champion

    champion, round_ = tmp_path / "champion", tmp_path / "round"
    champion.mkdir()
    config = ModelConfig.load("tiny").model_dump_json()
    for stage in ("vae_a", "vae_b", "mapping", "scratch"):  # no refine.pt, tone.pt: trained before they existed
        (champion / f"{stage}.pt").write_bytes(save_state({"config": config, "trainer": {"step": 40}}))
    loaded, targets = start_from_champion.fn(str(champion), str(round_), ["mapping", "refine", "tone"], 5)
    assert targets == {"mapping": 45, "refine": 5, "tone": 5} and loaded.name == "tiny"
    assert sorted(p.name for p in round_.iterdir()) == ["mapping.pt", "scratch.pt", "vae_a.pt", "vae_b.pt"]
    # Under a refined champion the mapping is left as it is: refine holds the one the restorer uses.
    (champion / "refine.pt").write_bytes(save_state({"config": config, "trainer": {"step": 30}}))
    _, targets = start_from_champion.fn(str(champion), str(tmp_path / "refined"), ["mapping", "refine", "tone"], 5)
    assert targets == {"refine": 35, "tone": 5}
    (champion / "refine.pt").unlink()
    (champion / "mapping.pt").unlink()  # any other missing stage is an error that names it
    with pytest.raises(FileNotFoundError, match="mapping.pt"):
        start_from_champion.fn(str(champion), str(tmp_path / "other"), ["mapping"], 5)
