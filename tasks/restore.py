"""Prefect tasks of bulk restoration: plan the inputs, restore batches on workers, keep the manifest,
write the report.

Each input key gives DST/<key> in the same format. The manifest is Parquet under DST/_manifest/: each
batch appends a part file once its outputs are written, and the end of a run folds the parts into
manifest.parquet (the latest row per key). A run killed midway therefore loses at most its unfinished
batches, which the next run redoes; outputs are written atomically, so none is ever torn.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import posixpath
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from PIL import Image
from prefect import task
from pydantic import BaseModel, Field

import oldphoto
from oldphoto import storage
from oldphoto.images import (DEFAULT_MAX_PIXELS, ArchiveImage, UnreadableImage, decode_archive, encode_archive,
                             to_rgb8)
from oldphoto.pages import render
from oldphoto.settings import get_settings

DEFAULT_MODEL = str(Path(oldphoto.__file__).resolve().parent / "weights" / "default.pt")  # shipped, see its card
MANIFEST_DIR, REPORT_DIR, SUMMARY = "_manifest", "_report", "summary.json"
THUMBNAIL = 256

MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("size", pa.int64()),
    ("sha256", pa.string()),
    ("stamp", pa.string()),  # the input's size and mtime or ETag when it was read (storage.stamped_images)
    ("status", pa.string()),  # restored, failed, skipped
    ("reason", pa.string()),
    ("output_key", pa.string()),
    ("model_name", pa.string()),
    ("model_version", pa.string()),
    ("seconds", pa.float64()),
    ("finished_at", pa.timestamp("us", tz="UTC")),
    ("restored_at", pa.timestamp("us", tz="UTC")),  # when the present output was made (kept by skips)
    ("settings", pa.string()),  # JSON of the engine settings it was made with (scratch, colour)
    ("damaged", pa.float64()),  # share of its pixels the detector marked
])


Colour = Annotated[Literal["keep", "restore"], Field(description="keep: the original's colours on the restored "
                    "luminance; restore: the model's colours too (it may cast them on real prints)")]


class EngineConfig(BaseModel):
    """How the restorer runs, in `oldphoto restore` and `oldphoto evaluate` alike."""

    model: str | None = Field(None, description="restorer bundle: path, URL, models:/NAME@ALIAS or runs:/...; "
                                                "none: the registry's champion if there is one, else the shipped model")
    scratch: Literal["auto", "on", "off"] = Field("auto", description="scratch handling: auto detects damage and "
                                                  "fills it where found; on everywhere; off never")
    colour: Colour = "keep"
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: a CUDA GPU where there is one, else the CPU")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="auto: bf16 where the CPU or GPU "
                                                               "computes it fast, else fp32")
    tile: int = Field(512, ge=64, description="tile size of the engine: bounds memory whatever the image size")


class RestoreConfig(EngineConfig):
    """How an archive is restored; the defaults run on a laptop with the shipped model."""

    batch_size: int = Field(256, gt=0, description="at most this many images per task")
    batch_megabytes: float = Field(16.0, gt=0, description="input megabytes per task: small images travel in large "
                                   "batches, which spreads each task's overhead; a large scan goes alone, and a "
                                   "crash redoes little")
    force: bool = Field(False, description="restore again what the manifest says is done")
    verify: bool = Field(False, description="read and hash every input to find changes, even those that kept "
                         "their size and modification time (or ETag); without it a rerun skips them unread")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, description="larger images are refused (decompression bombs)")
    redo: Literal["rejected", "redo"] | None = Field(None, description="restore again only the items a curator "
                                                     "rejected, or sent to redo with the settings to try "
                                                     "(`oldphoto review`); every other output is left as it is")


def restorer_for(model: str, device: str, precision: str, tile: int):
    """The engine for a model, loaded once per process (per Dask worker) and again when its file
    changes, with the model's version: a hash of its weights, so that the same weights count as the
    same model however referenced. Callers in several threads load it once."""
    with _loading:
        return _loaded(model, device, precision, tile, _model_stamp(model))


_loading = threading.Lock()


def load_ahead(config: EngineConfig) -> None:
    """Load the model into this process's cache before the flow starts, for a run whose tasks run in
    this process (one local worker): it loads while the temporary API starts in its own process. Not
    in a thread beside the flow's start: two threads importing at once can fail one of them (CPython
    3.11's import deadlock detection), and torch cannot be imported again in that process ("function
    'istft' already has a docstring", seen in a clean checkout's test run). A model that cannot be
    loaded is left for the flow's check_model to report."""
    with contextlib.suppress(Exception):
        model = choose_model.fn(config.model, get_settings().tracking_uri)
        restorer_for(model, config.device, config.precision, config.tile)


@functools.cache
def _loaded(model: str, device: str, precision: str, tile: int, stamp: str | None):
    import torch

    from oldphoto.model.engine import Restorer
    from oldphoto.models import load_restorer

    # Set explicitly: Dask starts workers with OMP_NUM_THREADS=1, which torch would keep.
    if get_settings().torch_threads:
        torch.set_num_threads(get_settings().torch_threads)
    network = load_restorer(model)
    digest = hashlib.sha256(network.config.model_dump_json().encode())
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode() + tensor.cpu().numpy().tobytes())
    return Restorer(network, device, precision, tile), digest.hexdigest()[:16]


@task
def choose_model(model: str | None, tracking_uri: str) -> str:
    """The model asked for; else the version under the registry's `champion` alias (scheduled
    retraining moves it), pinned by number so that a move mid-run cannot mix versions; else the
    shipped weights."""
    if model:
        return model
    if tracking_uri.startswith("sqlite:///") and not _may_have_champion(Path(tracking_uri.removeprefix("sqlite:///"))):
        return DEFAULT_MODEL
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from oldphoto.models import CHAMPION, REGISTERED_NAME

    try:
        champion = MlflowClient(tracking_uri, registry_uri=tracking_uri).get_model_version_by_alias(REGISTERED_NAME, CHAMPION)
    except MlflowException:
        return DEFAULT_MODEL
    return f"models:/{REGISTERED_NAME}/{champion.version}"


def _may_have_champion(database: Path) -> bool:
    """False when a local registry surely has no champion: no database (do not create one by
    looking), or one without the alias. Read with sqlite3, read-only: importing MLflow and opening
    its store costs seconds before the first image. Anything unexpected: ask MLflow."""
    import sqlite3

    from oldphoto.models import CHAMPION, REGISTERED_NAME

    if not database.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)) as db:
            return db.execute("SELECT 1 FROM registered_model_aliases WHERE name = ? AND alias = ?",
                              (REGISTERED_NAME, CHAMPION)).fetchone() is not None
    except sqlite3.Error:
        return True


@task
def check_model(model: str, device: str = "auto", precision: str = "auto", tile: int = 512) -> str:
    """The model's version, from loading it before any image is touched: a missing or corrupt model
    file fails the run here (run on a worker, it also leaves the model loaded there for the batches).
    A model known unchanged since it was loaded (a file of the same size and modification time, or a
    registry version by number) is named from OLDPHOTO_HOME's record without loading it again: a
    rerun with nothing to do never loads torch."""
    version = recorded_version(model)
    if version is not None:
        return version
    version = restorer_for(model, device, precision, tile)[1]
    if stamp := _model_stamp(model):
        record = get_settings().home / MODEL_VERSIONS
        with contextlib.suppress(OSError):  # only a record: a read-only home costs a load per run, nothing else
            storage.write_bytes_atomic(str(record), json.dumps(_recorded() | {stamp: version}, indent=1).encode())
    return version


MODEL_VERSIONS = "model-versions.json"  # under OLDPHOTO_HOME: model file stamp -> version


def _recorded() -> dict[str, str]:
    try:
        return json.loads((get_settings().home / MODEL_VERSIONS).read_text())
    except (OSError, ValueError):
        return {}


def recorded_version(model: str) -> str | None:
    """A model's version without loading it, where it is known unchanged since it was loaded (a file
    of the same size and modification time, or a registry version by number); else None."""
    stamp = _model_stamp(model)
    return _recorded().get(stamp) if stamp else None


def _model_stamp(model: str) -> str | None:
    """What identifies a model's bytes without reading them: a local file's path, size and
    modification time; a registry version given by number (they never change); else None."""
    if model.startswith("models:/") and model.rsplit("/", 1)[-1].isdigit():
        return model
    if "://" not in model and (path := Path(model)).is_file():
        stat = path.stat()
        return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return None


def is_safe_key(key: str) -> bool:
    """Keys become paths under DST: no absolute paths, no '..', nothing that could escape it."""
    return bool(key) and not key.startswith(("/", "\\")) and ".." not in key.replace("\\", "/").split("/")


def list_inputs(src: str, dst: str) -> tuple[str, dict[str, str], dict[str, int]]:
    """(root, key -> stamp, suffix -> count of the other files) of the images to restore: SRC may be a
    folder, prefix or a single file. Outputs of an earlier run are left out when DST lies inside SRC."""
    single_file, stamps, others = storage.image_listing(src)
    root = posixpath.dirname(src.rstrip("/")) if single_file else src
    if storage.absolute(root).rstrip("/") == storage.absolute(dst).rstrip("/"):
        raise ValueError(f"destination {dst} is the source folder: originals are never overwritten")
    inside = posixpath.relpath(storage.absolute(dst), storage.absolute(root)) if _same_store(root, dst) else ".."
    if not inside.startswith(".."):
        below = inside.rstrip("/") + "/"

        def outside(key: str) -> bool:
            return key != inside and not key.startswith(below)
        stamps, others = {k: v for k, v in stamps.items() if outside(k)}, [k for k in others if outside(k)]
    return root, dict(sorted(stamps.items())), dict(sorted(Counter(storage.suffix(k) or "no suffix" for k in others).items()))


def plan_batches(sizes: dict[str, int], max_bytes: float, max_count: int) -> list[list[str]]:
    """Keys in order, cut into batches of at most max_count images and about max_bytes of input each
    (a larger image goes alone)."""
    batches: list[list[str]] = []
    current, total = [], 0
    for key, size in sizes.items():
        if current and (total + size > max_bytes or len(current) == max_count):
            batches.append(current)
            current, total = [], 0
        current.append(key)
        total += size
    return batches + [current] if current else batches


@task(retries=2, retry_delay_seconds=[2, 10])
def plan_restore(src: str, dst: str, config: RestoreConfig, version: str) -> dict[str, Any]:
    """What a run has to do, from two listings and the manifest, without opening any input: root,
    key -> stamp of every input, the rows of those restored earlier with this model whose output is
    still there (done), those of them known unchanged by their stamp (skipped, unless force or
    verify), the batches of the rest, and the other files under src by suffix (not_images)."""
    made, plan = _planned.pop(_plan_key(src, dst, config, version), (0.0, None))
    if plan is not None and time.monotonic() - made < KEPT_PLAN_SECONDS:
        return plan
    # The three reads are independent; on object storage each is pages of requests: run them at once.
    with ThreadPoolExecutor(max_workers=3) as pool:
        inputs, manifest, outputs = (pool.submit(list_inputs, src, dst), pool.submit(read_manifest, dst),
                                     pool.submit(lambda: set() if config.redo else list_outputs(dst)))
        (root, stamps, others), manifest, outputs = inputs.result(), manifest.result(), outputs.result()
    if config.redo:
        return _plan_redo(root, dst, stamps, manifest, config) | {"not_images": others}
    done = {k: r for k, r in manifest.items()
            if k in stamps and k in outputs and r["status"] in ("restored", "skipped") and r["model_version"] == version}
    skipped = {} if config.force or config.verify else {k: r for k, r in done.items() if r.get("stamp") == stamps[k]}
    todo = {k: stamp_size(stamps[k]) for k in stamps if k not in skipped}
    batches = plan_batches(todo, config.batch_megabytes * 2**20, config.batch_size)
    return {"root": root, "stamps": stamps, "done": {k: r for k, r in done.items() if k not in skipped},
            "skipped": skipped, "batches": batches, "settings": [{}] * len(batches), "not_images": others}


_planned: dict[str, tuple[float, dict[str, Any]]] = {}  # plans made before the flow started (keep_plan), taken once
KEPT_PLAN_SECONDS = 120  # an older one is made again: the archive may have changed since


def _plan_key(src: str, dst: str, config: RestoreConfig, version: str) -> str:
    return json.dumps([src, dst, config.model_dump(mode="json"), version])


def keep_plan(plan: dict[str, Any], src: str, dst: str, config: RestoreConfig, version: str) -> None:
    """Hand a plan made in this process to the flow that follows, whose plan_restore then takes it
    instead of listing again (minutes, for a large bucket)."""
    _planned[_plan_key(src, dst, config, version)] = time.monotonic(), plan


def _plan_redo(root: str, dst: str, stamps: dict[str, str], manifest: dict[str, dict[str, Any]],
               config: RestoreConfig) -> dict[str, Any]:
    """Only the items the review sent back (inputs still under SRC), each group of equal settings in
    batches of its own; nothing else is touched, not even recorded as skipped."""
    from .review import read_decisions, to_redo

    chosen = {k: v for k, v in to_redo(manifest, config.redo, read_decisions(dst)).items() if k in stamps}
    groups: dict[str, dict[str, int]] = {}  # the settings, as JSON -> key -> input size
    for key, overrides in chosen.items():
        groups.setdefault(json.dumps(overrides, sort_keys=True), {})[key] = stamp_size(stamps[key])
    batches, settings = [], []
    for group, sizes in sorted(groups.items()):
        for batch in plan_batches(sizes, config.batch_megabytes * 2**20, config.batch_size):
            batches.append(batch)
            settings.append(json.loads(group))
    return {"root": root, "stamps": {k: stamps[k] for k in chosen}, "done": {}, "skipped": {},
            "batches": batches, "settings": settings}


def list_outputs(dst: str) -> set[str]:
    """The image keys under DST, in one listing (not an existence check per key). The run's own
    folders are not listed: the report holds a thumbnail and a mask for every restored key."""
    try:
        return set(storage.stamped_images(dst, skip={MANIFEST_DIR, REPORT_DIR}))
    except FileNotFoundError:
        return set()


def stamp_size(stamp: str) -> int:
    """The byte size a stamp begins with (storage.stamped_images); 0 where the store gave none."""
    size = stamp.split(":", 1)[0]
    return int(size) if size.isdigit() else 0


def _same_store(a: str, b: str) -> bool:
    def protocol(url: str) -> str:
        return url.split("://")[0] if "://" in url else "file"
    return protocol(a) == protocol(b)


def read_manifest(dst: str) -> dict[str, dict[str, Any]]:
    """The latest manifest row of every key: manifest.parquet and any parts a killed run left."""
    fs, path = storage.filesystem(storage.join(dst, MANIFEST_DIR))
    latest: dict[str, dict[str, Any]] = {}
    for file in sorted(fs.glob(posixpath.join(path, "*.parquet"))):  # none where there is no folder
        try:
            rows = _manifest_rows(pq.ParquetFile(io.BytesIO(fs.cat_file(file))).read())
        except Exception:
            continue  # a stray unreadable file: its rows are redone, nothing is lost
        for row in rows:
            if row["key"] not in latest or row["finished_at"] >= latest[row["key"]]["finished_at"]:
                latest[row["key"]] = row
    return latest


@task(retries=2, retry_delay_seconds=[2, 10])
def restore_batch(src: str, dst: str, keys: dict[str, str], config: RestoreConfig, done: dict[str, dict[str, Any]],
                  run_id: str, batch: int) -> list[dict[str, Any]]:
    """Restore keys (key -> stamp) from src into dst. done: key -> its manifest row, restored earlier
    with this model, its output still there.
    The keys go in groups of about GROUP_BYTES of input (a larger image alone), restored together by
    the engine (small images of one size share the network's passes). Reading and decoding the next
    group, and encoding and writing the last, run in threads beside the network (which releases the
    GIL); torch's own threads do the compute."""
    rows: list[dict[str, Any]] = []
    settings = json.dumps({"scratch": config.scratch, "colour": config.colour})
    groups = plan_batches({key: stamp_size(stamp) for key, stamp in keys.items()}, GROUP_BYTES, len(keys))
    with ThreadPoolExecutor(max_workers=2) as io_pool:
        def load(group: list[str]) -> list[Future]:
            return [io_pool.submit(_load, src, dst, key, keys[key], None if config.force else done.get(key),
                                   config.verify, config.max_pixels) for key in group]

        loading = load(groups[0]) if groups else []  # decoding while the model loads, on a new worker
        restorer, version = restorer_for(config.model, config.device, config.precision, config.tile)
        writing: list[tuple[dict[str, Any], Future]] = []  # the last group's outputs
        for g, group in enumerate(groups):
            loaded, loading = loading, load(groups[g + 1]) if g + 1 < len(groups) else []
            todo: list[tuple[dict[str, Any], ArchiveImage]] = []
            for key, future in zip(group, loaded):
                row = {"key": key, "size": None, "sha256": None, "stamp": keys[key], "status": "failed", "reason": None,
                       "output_key": None, "model_name": config.model, "model_version": version,
                       "restored_at": None, "settings": settings, "damaged": None, "seconds": 0.0}
                rows.append(row)
                with _failing_alone(row):
                    size, sha256, image = future.result()
                    row.update(size=size, sha256=sha256)
                    if image is None:  # the output of an earlier restoration stays: so do its particulars
                        row.update(settings=done[key].get("settings"), damaged=done[key].get("damaged"),
                                   restored_at=restored_at(done[key]), status="skipped", output_key=key)
                    elif isinstance(image, Exception):
                        raise image
                    else:
                        todo.append((row, image))
            del loaded
            restored = _restore_group(restorer, [image.pixels for _, image in todo], config)
            _settle_all(writing)  # one group's outputs in memory at a time
            writing = []
            for (row, image), result in zip(todo, restored):
                with _failing_alone(row):
                    if isinstance(result, Exception):
                        raise result
                    pixels, mask, info = result
                    # The output and the report's two images in two threads: a scan's take 0.1 s each.
                    writing += [(row, io_pool.submit(_write_output, dst, row["key"], image, pixels)),
                                (row, io_pool.submit(_write_report_images, dst, row["key"], image.pixels, pixels, mask))]
                    row.update(status="restored", output_key=row["key"], damaged=info["damaged_fraction"],
                               seconds=info["seconds"])
            del todo, restored
        _settle_all(writing)
    if any(row["status"] == "restored" for row in rows):
        storage.flush(dst)  # the outputs were written without a flush each; durable before the manifest names them
    now = datetime.now(timezone.utc)
    for row in rows:
        row["finished_at"] = now
        if row["status"] == "restored":
            row["restored_at"] = now
    _write_part(dst, f"part-{run_id}-{batch:06d}.parquet", rows)
    return rows


GROUP_BYTES = 2**20  # input per group restored together: dozens of small images, or one scan


def _restore_group(restorer, images: list[np.ndarray], config: RestoreConfig) -> list[tuple | Exception]:
    """The engine's results for images restored together, or the error of each that cannot be:
    where the batch fails, each image is restored alone, so that a bad one fails by itself."""
    try:
        return restorer.restore_many(images, config.scratch, config.colour)
    except Exception as error:
        if len(images) == 1:
            return [error]
    results: list[tuple | Exception] = []
    for image in images:
        try:
            results.append(restorer.restore(image, config.scratch, config.colour))
        except Exception as error:
            results.append(error)
    return results


@contextlib.contextmanager
def _failing_alone(row: dict[str, Any]):
    """A bad input fails alone, with its reason in its row; storage trouble (an OSError other than a
    missing file) is raised, for the task's retries."""
    try:
        yield
    except OSError as error:
        if not isinstance(error, FileNotFoundError):
            raise
        row["reason"] = f"{type(error).__name__}: {error}"
    except Exception as error:
        row["reason"] = error.reason if isinstance(error, UnreadableImage) else f"{type(error).__name__}: {error}"


def restored_at(row: dict[str, Any]) -> datetime | None:
    """When a manifest row's output was made; rows written before the manifest recorded it: when
    their run finished, the latest it can have been made."""
    return row.get("restored_at") or row.get("finished_at")


def _settle_all(writing: list[tuple[dict[str, Any], Future]]) -> None:
    """Wait for outputs being written; one that cannot be encoded fails its row alone."""
    for row, future in writing:
        try:
            future.result()
        except OSError:
            raise  # storage trouble: the task's retries take it
        except Exception as error:  # e.g. an alpha channel that the output format cannot hold
            row.update(status="failed", reason=f"writing the output: {type(error).__name__}: {error}", output_key=None)


def _load(src: str, dst: str, key: str, stamp: str, previous: dict[str, Any] | None, verify: bool,
          max_pixels: int) -> tuple[int, str, ArchiveImage | Exception | None]:
    """Size, sha256 and the decoded image of an input; or the error decoding gave; or None when it was
    restored before with this model and its output is still there (previous, its manifest row):
    known unchanged by its stamp without opening it, or (verify, or no stamp recorded) by hashing its bytes."""
    if not is_safe_key(key):
        raise ValueError(f"{key!r}: key would write outside the destination")
    if previous is not None and not verify and previous.get("stamp") == stamp:
        return previous["size"], previous["sha256"], None
    data = storage.read_bytes(storage.join(src, key))
    sha256 = hashlib.sha256(data).hexdigest()
    if previous is not None and previous["sha256"] == sha256:
        return len(data), sha256, None
    try:
        return len(data), sha256, decode_archive(data, key, max_pixels)
    except UnreadableImage as error:
        return len(data), sha256, error


def _write_output(dst: str, key: str, image: ArchiveImage, restored: np.ndarray) -> None:
    output = ArchiveImage(restored, image.format, image.exif, image.icc_profile, image.dpi, image.converted_from,
                          image.tiff_tags)
    storage.write_bytes_atomic(storage.join(dst, key), encode_archive(output), durable=False)


def _write_report_images(dst: str, key: str, before: np.ndarray, restored: np.ndarray, mask: np.ndarray) -> None:
    storage.write_bytes_atomic(storage.join(dst, REPORT_DIR, thumbnail_key(key)), _before_after(before, restored),
                               durable=False)
    out = io.BytesIO()
    Image.fromarray(mask).save(out, format="PNG", optimize=False)  # 1 bit per pixel
    storage.write_bytes_atomic(storage.join(dst, REPORT_DIR, mask_key(key)), out.getvalue(), durable=False)


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def thumbnail_key(key: str) -> str:
    return f"thumbs/{_key_hash(key)}.jpg"


def mask_key(key: str) -> str:
    """Where the damage mask of a key's restoration is, under DST/_report (white: marked)."""
    return f"masks/{_key_hash(key)}.png"


def _before_after(before: np.ndarray, after: np.ndarray) -> bytes:
    """One small JPEG, before | after: one write per image for the report."""
    def small(pixels: np.ndarray) -> Image.Image:
        image = Image.fromarray(to_rgb8(pixels))
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        return image
    left, right = small(before), small(after)
    sheet = Image.new("RGB", (left.width + 4 + right.width, left.height), "white")
    sheet.paste(left, (0, 0))
    sheet.paste(right, (left.width + 4, 0))
    out = io.BytesIO()
    sheet.save(out, format="JPEG", quality=85)
    return out.getvalue()


def _manifest_table(rows: list[dict[str, Any]]) -> pa.Table:
    """The rows as Arrow, by way of JSON lines: pyarrow's conversion of Python values imports pandas
    (0.4 s of every run's end on a 2-core CPU, measured); its JSON reader does not."""
    if not rows:
        return MANIFEST_SCHEMA.empty_table()
    lines = "\n".join(json.dumps(row, default=datetime.isoformat) for row in rows).encode()
    options = pa_json.ParseOptions(explicit_schema=MANIFEST_SCHEMA, unexpected_field_behavior="ignore")
    return pa_json.read_json(io.BytesIO(lines), parse_options=options)


def _manifest_rows(table: pa.Table) -> list[dict[str, Any]]:
    """The table's rows, its times made UTC here: pyarrow imports pandas to give a time its zone."""
    times = [field.name for field in table.schema if pa.types.is_timestamp(field.type) and field.type.tz]
    naive = pa.schema([pa.field(f.name, pa.timestamp(f.type.unit)) if f.name in times else f for f in table.schema])
    rows = table.cast(naive).to_pylist()
    for row in rows:
        for name in times:
            if row[name] is not None:
                row[name] = row[name].replace(tzinfo=timezone.utc)  # Arrow keeps instants in UTC
    return rows


def _write_part(dst: str, name: str, rows: list[dict[str, Any]]) -> None:
    out = io.BytesIO()
    pq.write_table(_manifest_table(rows), out, compression="zstd")
    storage.write_bytes_atomic(storage.join(dst, MANIFEST_DIR, name), out.getvalue())


@task(retries=2, retry_delay_seconds=[2, 10])
def record_skipped(dst: str, skipped: dict[str, dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    """Manifest rows of inputs skipped unread (known unchanged by their stamp), as one part."""
    now = datetime.now(timezone.utc)
    rows = [row | {"status": "skipped", "reason": None, "output_key": key, "seconds": 0.0, "finished_at": now,
                   "restored_at": restored_at(row)} for key, row in skipped.items()]
    if rows:
        _write_part(dst, f"part-{run_id}-skipped.parquet", rows)
    return rows


@task
def clear_leftovers(dst: str, keys: list[str]) -> int:
    """Remove what writers killed mid-write (a lost Dask worker, say) left in the folders this run
    wrote to. Run once every batch has finished: no write of this run is still under way (two runs
    into one DST at once are not supported)."""
    folders = {posixpath.dirname(key) for key in keys} | {f"{REPORT_DIR}/thumbs", f"{REPORT_DIR}/masks"}
    return storage.remove_leftovers(dst, folders)


@task(retries=2, retry_delay_seconds=[2, 10])
def fold_manifest(dst: str) -> str:
    """Fold every part into manifest.parquet (the latest row per key), then remove the folded parts.
    Killed in between, the next run folds the same rows again: the result is the same."""
    rows = sorted(read_manifest(dst).values(), key=lambda r: r["key"])
    fs, folder = storage.filesystem(storage.join(dst, MANIFEST_DIR))
    parts = fs.glob(posixpath.join(folder, "part-*.parquet"))
    _write_part(dst, "manifest.parquet", rows)
    for part in parts:
        fs.rm_file(part)
    return storage.join(dst, MANIFEST_DIR, "manifest.parquet")


@task(retries=2, retry_delay_seconds=[2, 10])
def write_report(dst: str, rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """DST/_report/index.html: the summary, before/after thumbnails of this run's images, the failures."""
    page = render("restore_report.html",
        summary=summary, thumbnail_key=thumbnail_key, failed=[r for r in rows if r["status"] == "failed"],
        restored=[r for r in rows if r["status"] in ("restored", "skipped") and r["output_key"]])
    url = storage.join(dst, REPORT_DIR, "index.html")
    storage.write_bytes_atomic(url, page.encode())
    # Where the originals are, for `oldphoto review DST` to show them beside their restorations.
    storage.write_bytes_atomic(storage.join(dst, REPORT_DIR, SUMMARY), json.dumps(summary, indent=1).encode())
    return url


def new_run_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}-{os.getpid()}"
