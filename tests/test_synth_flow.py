"""The synthesis flow end to end on Dask: local folders and s3://, determinism, resume, bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from oldphoto import storage
from oldphoto.flows.runner import task_runner
from oldphoto.flows.synth import synthesize
from oldphoto.pairs import read_pairs
from oldphoto.settings import get_settings
from oldphoto.tasks.synth import SynthConfig

pytestmark = pytest.mark.usefixtures("prefect_api", "on_the_cluster")
CONFIG = SynthConfig(count=10, seed=3, crop=48, shard_size=4)


def run(src, dst, config=CONFIG, workers=None):
    return synthesize.with_options(task_runner=task_runner(workers))(str(src), str(dst), config)


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.parquet"))}


def test_local_end_to_end_deterministic_and_resumable(clean_folder, tmp_path, monkeypatch):
    first = run(clean_folder, tmp_path / "one")
    assert first["samples"] == 10 and first["shards_written"] == 3 and first["unreadable_sources"] == 0

    files = shard_bytes(tmp_path / "one")
    assert list(files) == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    table = pq.read_table(tmp_path / "one" / "shard-00000.parquet")
    assert table.column_names == ["sample_id", "source_key", "seed", "clean", "degraded", "mask", "height",
                                  "width", "record"]
    assert table.num_rows == 4 and table["height"].to_pylist() == [48] * 4

    pairs = list(read_pairs(str(tmp_path / "one")))
    assert [p["sample_id"] for p in pairs] == list(range(10))
    assert {p["source_key"] for p in pairs} <= {"a.jpg", "b.png", "sub/c.jpg", "sub/deeper/d.jpg"}
    assert all(p["degraded"].shape == (48, 48, 3) and p["mask"].shape == (48, 48) for p in pairs)
    damaged = [p for p in pairs if p["mask"].any()]
    assert damaged, "the default recipe damages most samples"
    for p in damaged:  # the stored mask covers what the damage changed (before the scan's JPEG)
        assert any(op["stage"] == "damage" for op in p["record"]["ops"])

    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert manifest["count"] == 10 and len(manifest["shards"]) == 3
    assert manifest["content_sha256"] == first["content_sha256"]

    # rerun: nothing rewritten, the manifest neither
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "one").iterdir()}
    again = run(clean_folder, tmp_path / "one")
    assert again["shards_skipped"] == 3 and again["shards_written"] == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "one").iterdir()} == mtimes

    # what an interrupted run leaves: a missing shard and a stray temporary file; then resume
    (tmp_path / "one" / "shard-00001.parquet").unlink()
    (tmp_path / "one" / ".shard-00002.parquet.abc.tmp").write_bytes(b"partial")
    resumed = run(clean_folder, tmp_path / "one")
    assert resumed["shards_written"] == 1 and resumed["shards_skipped"] == 2
    assert shard_bytes(tmp_path / "one") == files

    # another destination, on a local cluster of one worker: byte-identical shards and content hash
    monkeypatch.delenv("OLDPHOTO_DASK_ADDRESS")
    get_settings.cache_clear()
    second = run(clean_folder, tmp_path / "two", workers=1)
    assert shard_bytes(tmp_path / "two") == files and second["content_sha256"] == first["content_sha256"]


def test_other_settings_into_the_same_destination_are_refused(clean_folder, tmp_path):
    run(clean_folder, tmp_path / "out")
    with pytest.raises(FileExistsError, match="other settings"):
        run(clean_folder, tmp_path / "out", CONFIG.model_copy(update={"seed": 4}))


def test_unreadable_sources_are_skipped_and_counted(clean_folder, tmp_path):
    (clean_folder / "empty.jpg").write_bytes(b"")
    (clean_folder / "text.jpg").write_text("not an image")
    good = (clean_folder / "a.jpg").read_bytes()
    (clean_folder / "sub" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    summary = run(clean_folder, tmp_path / "out")
    assert summary["unreadable_sources"] == 3 and summary["samples"] == 10
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    reasons = {u["key"]: u["reason"] for u in manifest["source"]["unreadable"]}
    assert set(reasons) == {"empty.jpg", "text.jpg", "sub/truncated.jpg"}
    assert "empty" in reasons["empty.jpg"] and "cannot decode" in reasons["text.jpg"]
    used = {p["source_key"] for p in read_pairs(str(tmp_path / "out"))}
    assert not used & set(reasons)


def test_no_images_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images found"):
        run(tmp_path / "empty", tmp_path / "out")


def test_s3_to_s3(bucket, clean_folder):
    for path in clean_folder.rglob("*.*"):
        storage.write_bytes_atomic(f"{bucket}/clean/{path.relative_to(clean_folder).as_posix()}", path.read_bytes())
    summary = run(f"{bucket}/clean", f"{bucket}/pairs")
    assert summary["shards_written"] == 3
    pairs = list(read_pairs(f"{bucket}/pairs"))
    assert len(pairs) == 10 and pairs[3]["clean"].shape == (48, 48, 3)
    assert storage.exists(f"{bucket}/pairs/manifest.json")
    again = run(f"{bucket}/clean", f"{bucket}/pairs")
    assert again["shards_skipped"] == 3 and again["content_sha256"] == summary["content_sha256"]


@pytest.mark.slow
def test_cli_killed_midway_then_rerun_finishes_the_same_data_set(tmp_path):
    """The process is killed by a signal after its first shard; the rerun completes it byte for byte,
    as one uninterrupted run of the same settings writes it."""
    samples = Path(__file__).parents[1] / "oldphoto" / "samples"
    args = [sys.executable, "-m", "oldphoto.cli", "synth", str(samples), "--count", "24", "--seed", "2",
            "--crop", "128", "--shard-size", "2", "--workers", "1"]
    # As on a laptop: a temporary Prefect API and a local cluster of the command's own.
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "OLDPHOTO_DASK_ADDRESS")}
    killed = subprocess.Popen([*args[:5], str(tmp_path / "out"), *args[5:]], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list((tmp_path / "out").glob("shard-*.parquet")) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    partial = len(list((tmp_path / "out").glob("shard-*.parquet")))
    assert 1 <= partial < 12, "killed midway"

    subprocess.run([*args[:5], str(tmp_path / "out"), *args[5:]], env=env, check=True, capture_output=True)
    run(samples, tmp_path / "reference", SynthConfig(count=24, seed=2, crop=128, shard_size=2))
    assert shard_bytes(tmp_path / "out") == shard_bytes(tmp_path / "reference")
    assert len(shard_bytes(tmp_path / "out")) == 12
    assert json.loads((tmp_path / "out/manifest.json").read_text()) == json.loads(
        (tmp_path / "reference/manifest.json").read_text())
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")], "no stray temporaries"


def test_cli_reports_bad_source_cleanly(tmp_path, capsys):
    from oldphoto.cli import main

    assert main(["synth", str(tmp_path / "nope"), str(tmp_path / "out"), "--count", "2"]) == 2
    assert "nope: no such file" in capsys.readouterr().err


def test_plan_uses_every_source_before_repeating():
    from oldphoto.flows.synth import plan_samples

    shards = plan_samples(["a", "b", "c"], SynthConfig(count=7, seed=1, shard_size=3))
    flat = [key for shard in shards for _, key in shard]
    assert [len(s) for s in shards] == [3, 3, 1]
    assert sorted(flat[:3]) == ["a", "b", "c"] and flat[3:6] == flat[:3]
    assert np.unique(flat).size == 3


def test_the_temporary_api_sends_no_telemetry(prefect_api):
    """It serves one run and goes; on an offline machine its heartbeat would log an ERROR every run."""
    import httpx

    assert httpx.get(f"{prefect_api}/admin/settings").json()["server"]["analytics_enabled"] is False
