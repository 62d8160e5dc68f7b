"""Bulk restoration end to end: an archive on S3 with everything archives hold, reruns, a killed run."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
from PIL import Image

from oldphoto import storage
from oldphoto.flows.restore import restore_archive
from oldphoto.flows.runner import task_runner
from oldphoto.images import decode_archive
from oldphoto.tasks.restore import DEFAULT_MODEL, RestoreConfig, is_safe_key, list_outputs, read_manifest

from test_archive_images import SRGB, exif_with, huge_header_png

pytestmark = pytest.mark.usefixtures("prefect_api", "on_the_cluster")


def picture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    image = np.stack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), (x + y) % 256], 2) + rng.normal(0, 8, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def save(array: np.ndarray, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **options)
    return out.getvalue()


def archive() -> dict[str, bytes]:
    """What a real archive bucket holds, good and bad."""
    tiff = io.BytesIO()
    tifffile.imwrite(tiff, (picture(40, 56, 1).astype(np.uint16) * 257), photometric="rgb")
    cmyk = io.BytesIO()
    Image.fromarray(picture(40, 48, 2)).convert("CMYK").save(cmyk, format="JPEG")
    jpeg = save(picture(64, 64, 3), "JPEG")
    return {
        "box 1/folder 2/plain photo.jpg": save(picture(48, 64), "JPEG", icc_profile=SRGB, dpi=(600, 600)),
        "box 1/Fotografía ñandú 東京.png": save(picture(40, 40, 4), "PNG"),
        "nested/a/b/c/deep.png": save(picture(36, 52, 5), "PNG"),
        "rgba.png": save(np.dstack([picture(40, 44, 6), np.linspace(0, 255, 40 * 44).reshape(40, 44).astype(np.uint8)]), "PNG"),
        "scan16.tif": tiff.getvalue(),
        "gray.png": save(picture(44, 40, 7)[..., 0], "PNG"),
        "cmyk.jpg": cmyk.getvalue(),
        "rotated.jpg": save(picture(30, 50, 8), "JPEG", exif=exif_with(6)),
        "tiny 1x1.png": save(picture(1, 1), "PNG"),
        "empty.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "notes.jpg": b"this is a text file, not a photograph\n",
        "bomb.png": huge_header_png(50_000, 50_000),
    }


FAILING = {"empty.jpg": "empty file", "truncated.jpg": "cannot decode", "notes.jpg": "cannot decode",
           "bomb.png": "exceeds the limit"}


def run(src: str, dst: str, **options) -> dict:
    return restore_archive.with_options(task_runner=task_runner())(src, dst, RestoreConfig(**options))


def test_archive_on_s3_end_to_end(bucket, model):
    s3 = boto3.client("s3", endpoint_url=os.environ["OLDPHOTO_S3_ENDPOINT_URL"])
    name = bucket.removeprefix("s3://")
    files = archive()
    for key, data in files.items():
        s3.put_object(Bucket=name, Key=f"scans/{key}", Body=data)
    s3.put_object(Bucket=name, Key="scans/box 1/catalogue.xml", Body=b"<box/>")  # not a photograph: left alone, and said

    summary = run(f"{bucket}/scans", f"{bucket}/restored", model=model, batch_size=3, max_pixels=10_000_000)
    assert (summary["images"], summary["restored"], summary["failed"], summary["skipped"]) == (13, 9, 4, 0)
    assert summary["not_images"] == {".xml": 1} and not storage.exists(f"{bucket}/restored/box 1/catalogue.xml")

    # originals untouched
    for key, data in files.items():
        assert s3.get_object(Bucket=name, Key=f"scans/{key}")["Body"].read() == data

    manifest = read_manifest(f"{bucket}/restored")
    assert sorted(manifest) == sorted(files)
    for key, reason in FAILING.items():
        assert manifest[key]["status"] == "failed" and reason in manifest[key]["reason"]
        assert not storage.exists(f"{bucket}/restored/{key}")
    for key in set(files) - set(FAILING):
        row = manifest[key]
        assert row["status"] == "restored" and row["output_key"] == key and row["model_version"] == summary["model_version"]
        assert row["size"] == len(files[key]) and len(row["sha256"]) == 64
        source = decode_archive(files[key], key)
        out = decode_archive(storage.read_bytes(f"{bucket}/restored/{key}"), key)
        assert out.format == source.format and out.pixels.shape == source.pixels.shape
        assert out.pixels.dtype == source.pixels.dtype

    def restored(key):
        return decode_archive(storage.read_bytes(f"{bucket}/restored/{key}"), key)
    assert restored("scan16.tif").pixels.dtype == np.uint16
    assert restored("gray.png").pixels.ndim == 2
    rgba_in = decode_archive(files["rgba.png"], "rgba.png").pixels
    assert np.array_equal(restored("rgba.png").pixels[..., 3], rgba_in[..., 3]), "alpha untouched"
    assert restored("cmyk.jpg").pixels.shape == (40, 48, 3)
    assert restored("rotated.jpg").pixels.shape == (50, 30, 3), "EXIF orientation applied"
    plain = restored("box 1/folder 2/plain photo.jpg")
    assert plain.icc_profile == SRGB and tuple(round(d) for d in plain.dpi) == (600, 600)

    fs, path = storage.filesystem(f"{bucket}/restored/_manifest")
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(path)] == ["manifest.parquet"], "parts folded"
    report = storage.read_bytes(f"{bucket}/restored/_report/index.html").decode()
    assert "Failures (4)" in report and "exceeds the limit" in report and "Restored (9)" in report
    assert "<th>not_images</th><td>1 .xml</td>" in report
    assert report.count("thumbs/") == 9
    # The plan's listing of outputs leaves out the report: a thumbnail and a mask for every restored key.
    assert list_outputs(f"{bucket}/restored") == set(files) - set(FAILING)

    # a rerun skips everything; a changed input and --force are redone
    again = run(f"{bucket}/scans", f"{bucket}/restored", model=model, batch_size=5, max_pixels=10_000_000)
    assert (again["restored"], again["skipped"], again["failed"]) == (0, 9, 4)
    s3.put_object(Bucket=name, Key="scans/gray.png", Body=save(picture(44, 40, 9)[..., 0], "PNG"))
    changed = run(f"{bucket}/scans", f"{bucket}/restored", model=model, max_pixels=10_000_000)
    assert (changed["restored"], changed["skipped"]) == (1, 8)
    forced = run(f"{bucket}/scans", f"{bucket}/restored", model=model, force=True, max_pixels=10_000_000)
    assert (forced["restored"], forced["skipped"]) == (9, 0)
    table = pq.read_table(io.BytesIO(storage.read_bytes(f"{bucket}/restored/_manifest/manifest.parquet")))
    assert table.num_rows == 13 and len(set(table["key"].to_pylist())) == 13


def test_single_file_and_refusals(tmp_path, model):
    src = tmp_path / "in"
    src.mkdir()
    (src / "one.png").write_bytes(save(picture(32, 48), "PNG"))
    summary = run(str(src / "one.png"), str(tmp_path / "out"), model=model)
    assert summary["restored"] == 1 and (tmp_path / "out" / "one.png").is_file()
    with pytest.raises(ValueError, match="originals are never overwritten"):
        run(str(src), str(src), model=model)
    (tmp_path / "broken.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="broken.pt: not a readable weights file"):
        run(str(src), str(tmp_path / "out2"), model=str(tmp_path / "broken.pt"))
    assert not (tmp_path / "out2").exists(), "a bad model fails before any image is touched"
    # outputs inside the source folder are not taken for inputs on the next run
    inside = run(str(src), str(src / "restored"), model=model)
    again = run(str(src), str(src / "restored"), model=model)
    assert inside["images"] == again["images"] == 1 and again["not_images"] == {}, "nor its manifest and report for other files"


def test_restored_pixels_fill_the_damage_and_keep_the_rest(tmp_path):
    """The outputs' pixels, with the shipped model: scratches drawn on a photograph (their mask known)
    are filled, towards the photograph as it was, and the rest of it stays close to the input."""
    import cv2

    from oldphoto.synth.damage import scratches

    from conftest import SAMPLES

    clean = cv2.resize(np.asarray(Image.open(SAMPLES / "chelsea.jpg").convert("RGB")), (320, 240),
                       interpolation=cv2.INTER_AREA)
    damaged, mask = scratches(clean, np.random.default_rng(3), count=3, width=2.0)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cat.png").write_bytes(save(damaged, "PNG"))
    assert run(str(tmp_path / "in"), str(tmp_path / "out"), model=DEFAULT_MODEL)["restored"] == 1
    restored = np.asarray(Image.open(tmp_path / "out" / "cat.png")).astype(float)

    def mean_difference(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
        return float(np.abs(a - b).mean(2)[where].mean())

    away = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
    # Measured: 83 levels changed under the scratches, their error to the clean photo 86 -> 14, 7 elsewhere.
    assert mask.mean() > 0.02 and mean_difference(restored, damaged, mask) > 50
    assert mean_difference(restored, clean, mask) < 0.3 * mean_difference(damaged.astype(float), clean, mask)
    assert mean_difference(restored, damaged, away) < 12


def test_a_rerun_skips_unchanged_inputs_without_opening_them(tmp_path, model):
    """Known unchanged by size and modification time alone; --verify hashes them; a touched one is redone."""
    src = tmp_path / "scans"
    src.mkdir()
    for i in range(4):
        (src / f"{i}.png").write_bytes(save(picture(40, 48, i), "PNG"))
    dst = str(tmp_path / "restored")
    assert run(str(src), dst, model=model)["restored"] == 4
    assert all(r["stamp"] for r in read_manifest(dst).values())
    # 0.png's bytes change but keep their size and time: a rerun that opened it would restore it again.
    swapped = src / "0.png"
    stat = swapped.stat()
    data = bytearray(swapped.read_bytes())
    data[-20] ^= 0xFF  # inside the PNG's last chunk CRC region: same size, other bytes
    swapped.write_bytes(bytes(data))
    os.utime(swapped, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = run(str(src), dst, model=model)
    assert (again["restored"], again["skipped"]) == (0, 4), "nothing opened, nothing redone"
    verified = run(str(src), dst, model=model, verify=True)
    assert (verified["skipped"], verified["failed"]) == (3, 1), "hashing finds the changed bytes (now a bad CRC)"
    (src / "2.png").write_bytes(save(picture(40, 48, 9), "PNG"))  # a new photo under the same name
    (src / "3.png").touch()  # a new time, the same bytes: read, hashed, and found unchanged
    changed = run(str(src), dst, model=model)
    assert (changed["restored"], changed["skipped"], changed["failed"]) == (1, 2, 1)
    assert read_manifest(dst)["2.png"]["stamp"] == storage.stamped_images(str(src))["2.png"]



def test_the_model_loaded_ahead_is_loaded_in_the_calling_thread_and_a_bad_one_is_left_to_the_flow(tmp_path, model):
    """load_ahead runs before the flow, in the CLI's thread: a second thread importing torch beside
    the flow's start once failed the run (the import cannot be retried in that process)."""
    from oldphoto.tasks.restore import _loaded, load_ahead

    before, threads = _loaded.cache_info(), threading.active_count()
    load_ahead(RestoreConfig(model=model))
    after = _loaded.cache_info()
    assert after.misses + after.hits == before.misses + before.hits + 1 and after.currsize >= 1
    assert threading.active_count() == threads
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a bundle")
    load_ahead(RestoreConfig(model=str(bad)))  # not raised here: check_model reports it in the flow
    assert _loaded.cache_info().currsize == after.currsize

def test_the_console_shows_progress_and_the_summary_and_libraries_info_only_with_v(tmp_path, model):
    """Off a terminal (as in CI or cron): plain progress lines and the JSON summary last; Prefect's
    task-run and Dask's INFO lines only with -v."""
    src = tmp_path / "scans"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.png").write_bytes(save(picture(40, 48, i), "PNG"))
    (src / "scan 7.jp2").write_bytes(b"\x00\x00\x00\x0cjP  ")  # a format restore does not read: said, not hidden
    env = {k: v for k, v in os.environ.items() if k not in ("OLDPHOTO_DASK_ADDRESS", "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL",
                                                             "DASK_LOGGING__DISTRIBUTED")}
    outputs = {}
    for flags in ([], ["-v"]):
        done = subprocess.run([sys.executable, "-m", "oldphoto.cli", *flags, "restore", str(src), str(tmp_path / f"out{len(flags)}"),
                               "--model", model], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[len(flags)] = done
    quiet, verbose = outputs[0], outputs[1]
    assert "3/3 images (0 failed)" in quiet.stderr
    assert "left alone, not images by their names: 1 .jp2" in quiet.stderr
    assert "Task run" not in quiet.stderr and "distributed." not in quiet.stderr and "| INFO" not in quiet.stderr
    assert "Task run" in verbose.stderr and "| INFO" in verbose.stderr
    assert json.loads(quiet.stdout)["restored"] == 3, "the summary is the last thing printed"
    assert json.loads(quiet.stdout)["not_images"] == {".jp2": 1}


def test_the_report_escapes_what_the_archive_names(tmp_path):
    from oldphoto.tasks.restore import thumbnail_key, write_report

    rows = [{"key": "box <1>/a&b.png", "status": "restored", "output_key": "box <1>/a&b.png", "reason": None},
            {"key": "c.png", "status": "failed", "output_key": None, "reason": "cannot decode: <script>alert(1)</script>"}]
    url = write_report.fn(str(tmp_path), rows, {"src": "in <here>", "failed": 1, "model_version": None})
    page = open(url, encoding="utf-8").read()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "box &lt;1&gt;/a&amp;b.png" in page and f'src="{thumbnail_key("box <1>/a&b.png")}"' in page
    assert "<th>src</th><td>in &lt;here&gt;</td>" in page and "<th>model_version</th><td></td>" in page
    assert "Failures (1)" in page and "Restored (1)" in page


def test_keys_cannot_escape_the_destination():
    assert is_safe_key("box 1/a.jpg") and is_safe_key("..hidden.jpg")
    assert not any(is_safe_key(k) for k in ("../a.jpg", "a/../../b.jpg", "/etc/a.jpg", "", "a\\..\\b.jpg"))


@pytest.mark.slow
def test_cli_killed_midway_then_rerun_restores_each_image_once(tmp_path, model):
    src = tmp_path / "scans"
    for i in range(16):
        (src / f"box {i % 3}").mkdir(parents=True, exist_ok=True)
        (src / f"box {i % 3}" / f"{i:02d}.png").write_bytes(save(picture(96, 128, i), "PNG"))
    dst = tmp_path / "restored"
    command = [sys.executable, "-m", "oldphoto.cli", "restore", str(src), str(dst), "--model", model,
               "--batch-size", "1"]
    # As on a laptop: a temporary Prefect API and a local cluster of the command's own, all killed.
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "OLDPHOTO_DASK_ADDRESS")}
    killed = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while len(list((dst / "_manifest").glob("part-*.parquet"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    first = read_manifest(str(dst))
    assert 3 <= len(first) < 16, "killed midway"

    rerun = run(str(src), str(dst), model=model, batch_size=1)
    assert rerun["restored"] + rerun["skipped"] == 16 and rerun["failed"] == 0
    manifest = read_manifest(str(dst))
    assert len(manifest) == 16 and all(r["status"] in ("restored", "skipped") for r in manifest.values())
    assert sum(r["status"] == "skipped" for r in manifest.values()) >= len(first), "finished work is not redone"
    table = pq.read_table(dst / "_manifest" / "manifest.parquet")
    assert table.num_rows == 16 and len(set(table["key"].to_pylist())) == 16
    outputs = sorted(str(p.relative_to(dst)) for p in dst.rglob("*.png") if not p.name.startswith("."))
    outputs = [o for o in outputs if not o.startswith("_")]
    assert outputs == sorted(str(p.relative_to(src)) for p in src.rglob("*.png"))
    for output in outputs:  # every output whole
        assert decode_archive((dst / output).read_bytes(), output).pixels.shape == (96, 128, 3)


def test_small_images_travel_in_large_batches_and_a_large_one_alone():
    from oldphoto.tasks.restore import plan_batches

    sizes = {f"{i}.png": 1_000 for i in range(10)} | {"scan.tif": 50_000_000} | {"z.png": 1_000}
    assert plan_batches(sizes, 16 * 2**20, 4) == [[f"{i}.png" for i in range(4)], [f"{i}.png" for i in range(4, 8)],
                                                  ["8.png", "9.png"], ["scan.tif"], ["z.png"]]
    assert plan_batches({}, 1, 1) == []


def test_a_bounded_number_of_batches_is_in_flight_and_a_lost_output_is_redone(tmp_path, model):
    """Twelve one-image batches on one in-process slot: never more than two submitted and unfinished
    (all twelve at once before). A rerun redoes an input whose output was deleted."""
    from prefect.task_runners import ThreadPoolTaskRunner

    class CountingRunner(ThreadPoolTaskRunner):  # the real runner, counting what is outstanding
        def __init__(self):
            super().__init__(max_workers=1)
            self.outstanding = self.most = 0

        def duplicate(self):
            return self

        def submit(self, task, parameters, wait_for=None, dependencies=None):
            future = super().submit(task, parameters, wait_for, dependencies)
            if task.name == "restore_batch":
                self.outstanding += 1
                self.most = max(self.most, self.outstanding)
                future.add_done_callback(lambda _: setattr(self, "outstanding", self.outstanding - 1))
            return future

    src = tmp_path / "scans"
    src.mkdir()
    for i in range(12):
        (src / f"{i:02d}.png").write_bytes(save(picture(24, 24, i), "PNG"))
    runner = CountingRunner()
    dst = tmp_path / "restored"
    summary = restore_archive.with_options(task_runner=runner)(str(src), str(dst), RestoreConfig(model=model, batch_size=1))
    assert summary["restored"] == 12 and 1 <= runner.most <= 2, runner.most
    (dst / "05.png").unlink()
    again = restore_archive.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))(
        str(src), str(dst), RestoreConfig(model=model))
    assert (again["restored"], again["skipped"]) == (1, 11) and (dst / "05.png").exists()


def test_a_local_registry_without_a_champion_resolves_the_shipped_model_without_mlflow(tmp_path):
    """Importing MLflow costs seconds before the first image: a local registry is read with sqlite3."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri, registry_uri=uri).create_registered_model("oldphoto-restorer")  # a registry, no champion
    probe = ("import sys; from oldphoto.tasks.restore import choose_model; "
             f"print(choose_model.fn(None, {uri!r})); print('mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == [DEFAULT_MODEL, "False"]
    client = MlflowClient(uri, registry_uri=uri)
    version = client.create_model_version("oldphoto-restorer", str(tmp_path)).version
    client.set_registered_model_alias("oldphoto-restorer", "champion", version)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == [f"models:/oldphoto-restorer/{version}", "True"]


def test_a_rerun_with_nothing_to_do_does_not_load_the_model_and_a_changed_model_file_is_loaded(tmp_path, model):
    """The model's version is recorded by its file's stamp: a rerun that skips everything never imports
    torch; a model file written anew (a new stamp) is loaded, and a corrupt one fails the run."""
    import shutil

    src, dst, weights = tmp_path / "scans", tmp_path / "restored", tmp_path / "model.pt"
    src.mkdir()
    shutil.copy(model, weights)
    (src / "a.png").write_bytes(save(picture(40, 48), "PNG"))
    first = run(str(src), str(dst), model=str(weights))
    probe = ("import sys, json; from oldphoto.flows.restore import restore_archive; from oldphoto.flows.runner import task_runner; "
             "from oldphoto.tasks.restore import RestoreConfig; "
             f"s = restore_archive.with_options(task_runner=task_runner(1))({str(src)!r}, {str(dst)!r}, RestoreConfig(model={str(weights)!r})); "
             "print(json.dumps([s['skipped'], s['model_version'], 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=os.environ | {"OLDPHOTO_DASK_ADDRESS": ""})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [1, first["model_version"], False], out.stderr[-2000:]
    weights.write_bytes(weights.read_bytes()[: 1000])  # the same path, new bytes: loaded, and refused
    with pytest.raises(Exception, match="model"):
        run(str(src), str(dst), model=str(weights))


def test_a_cli_rerun_with_nothing_to_do_runs_no_flow_and_imports_no_torch(tmp_path, model):
    """The rerun's records are as a flow's would be (skips in the manifest, the report), without a
    Prefect API to wait for, torch, or opening an input."""
    src, dst = tmp_path / "scans", tmp_path / "restored"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.png").write_bytes(save(picture(40, 48, i), "PNG"))
    first = run(str(src), str(dst), model=model)
    report = dst / "_report" / "index.html"
    report.unlink()
    for image in src.iterdir():  # other bytes, the same size and time: an input opened would be restored again
        stat, data = image.stat(), bytearray(image.read_bytes())
        data[-20] ^= 0xFF
        image.write_bytes(bytes(data))
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path / "prefect")}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "oldphoto.cli", "restore", str(src), str(dst),
                           "--model", model], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert (summary["restored"], summary["skipped"], summary["model_version"]) == (0, 3, first["model_version"])
    assert "nothing to do, no flow run" in done.stderr
    assert not any(line.split("|")[-1].strip() == "torch" for line in done.stderr.splitlines()), "torch was imported"
    assert report.exists() and all(r["status"] == "skipped" for r in read_manifest(str(dst)).values())


def test_the_manifest_is_written_and_read_back_without_importing_pandas(tmp_path):
    """pyarrow imports pandas (0.4 s here) to convert Python values and to give a time its zone; the
    manifest does neither, and its rows come back as written, times in UTC and missing values included."""
    probe = f"""
import sys, json
from datetime import datetime, timezone
from oldphoto.tasks.restore import _write_part, read_manifest
at = datetime(2026, 12, 7, 11, 30, 0, 123456, tzinfo=timezone.utc)
rows = [dict(key="a/ü 1.png", size=5, sha256="ab", stamp="5:1.5", status="restored", reason=None, output_key="a/ü 1.png",
             model_name=None, model_version="v1", seconds=0.25, finished_at=at, restored_at=at, settings="{{}}", damaged=0.01),
        dict(key="b.png", status="failed", reason='cannot decode "b"\\n', seconds=0.0, finished_at=at)]
_write_part({str(tmp_path)!r}, "part-x.parquet", rows)
back = read_manifest({str(tmp_path)!r})
print(json.dumps([back["a/ü 1.png"] == rows[0], back["b.png"]["reason"], back["b.png"]["size"],
                  back["a/ü 1.png"]["finished_at"].isoformat(), "pandas" in sys.modules]))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == [True, 'cannot decode "b"\n', None,
                                                       "2026-12-07T11:30:00.123456+00:00", False]


def test_the_plan_made_before_the_flow_is_taken_once_and_only_while_fresh(tmp_path, model, monkeypatch):
    """up_to_date's plan (work to do) is the flow's: no second listing; taken once, and not when old."""
    from oldphoto.flows.restore import up_to_date
    from oldphoto.tasks import restore as tasks

    src, dst = tmp_path / "scans", str(tmp_path / "restored")
    src.mkdir()
    (src / "a.png").write_bytes(save(picture(40, 48), "PNG"))
    config = RestoreConfig(model=model)
    version = tasks.check_model.fn(model)  # recorded: up_to_date knows it without loading
    assert up_to_date(str(src), dst, config) is None
    (src / "b.png").write_bytes(save(picture(40, 48, 1), "PNG"))  # after the plan was made
    assert set(tasks.plan_restore.fn(str(src), dst, config, version)["stamps"]) == {"a.png"}, "the kept plan"
    assert set(tasks.plan_restore.fn(str(src), dst, config, version)["stamps"]) == {"a.png", "b.png"}, "listed anew"
    assert up_to_date(str(src), dst, config) is None
    (src / "c.png").write_bytes(save(picture(40, 48, 2), "PNG"))
    monkeypatch.setattr(tasks, "KEPT_PLAN_SECONDS", 0)  # the kept plan is now too old: listed anew
    assert set(tasks.plan_restore.fn(str(src), dst, config, version)["stamps"]) == {"a.png", "b.png", "c.png"}


def test_a_run_clears_what_killed_writers_left(tmp_path, model):
    src, dst = tmp_path / "scans", tmp_path / "restored"
    (src / "box").mkdir(parents=True)
    (src / "box" / "a.png").write_bytes(save(picture(40, 48), "PNG"))
    (dst / "box").mkdir(parents=True)
    leftover = dst / "box" / f".a.png.{'0' * 32}.tmp"  # as a writer killed mid-write leaves it
    leftover.write_bytes(b"half an image")
    (dst / "box" / ".notes.tmp").write_text("the archivist's")  # not ours: kept
    assert run(str(src), str(dst), model=model)["restored"] == 1
    assert not leftover.exists() and (dst / "box" / ".notes.tmp").exists()


def test_outputs_are_flushed_once_a_batch_before_the_manifest_names_them(tmp_path, model, monkeypatch):
    """Each output is written without a flush of its own (a journal commit each); one flush of the
    destination follows the batch's writes and comes before its manifest part."""
    from oldphoto.tasks import restore as tasks

    src, dst = tmp_path / "scans", tmp_path / "restored"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.png").write_bytes(save(picture(40, 48, i), "PNG"))
    seen, real_flush = [], storage.flush

    def flush(url):
        seen.append((url, sorted(p.name for p in dst.iterdir()), (dst / "_manifest").exists()))
        real_flush(url)

    monkeypatch.setattr(tasks.storage, "flush", flush)
    config = RestoreConfig(model=model)
    rows = tasks.restore_batch.fn(str(src), str(dst), storage.stamped_images(str(src)), config, {}, "r1", 0)
    assert [row["status"] for row in rows] == ["restored"] * 3
    assert seen == [(str(dst), ["0.png", "1.png", "2.png", "_report"], False)], "once, after the outputs, before the manifest"
    assert len(list((dst / "_manifest").glob("part-r1-*.parquet"))) == 1

    def lost(url):
        raise OSError("disk gone")

    monkeypatch.setattr(tasks.storage, "flush", lost)
    (src / "3.png").write_bytes(save(picture(40, 48, 3), "PNG"))
    with pytest.raises(OSError, match="disk gone"):
        tasks.restore_batch.fn(str(src), str(dst), {"3.png": storage.stamped_images(str(src))["3.png"]}, config, {}, "r2", 0)
    assert not list((dst / "_manifest").glob("part-r2-*.parquet")), "an output not known durable is not recorded"
    assert "3.png" not in read_manifest(str(dst)), "so the next run restores it again"
