"""Curators' decisions on restorations: accept, reject or redo, kept under DST/_review/decisions/.

Every answered decision is one Parquet part, written atomically with a unique name, so that two
reviewers at once, or a server killed after answering, lose nothing. Reading takes the latest row per
key. Folding (at a review server's start) writes the parts it read into one new file and then removes
them; two folds at once may fold a part twice, which changes nothing, and never remove a part they did
not fold. A decision judges one restoration (the manifest row's `restored_at`): restored again, the
item is undecided.
"""

from __future__ import annotations

import io
import json
import posixpath
import uuid
from datetime import datetime, timezone
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from oldphoto import storage

from .restore import REPORT_DIR, SUMMARY, Colour, read_manifest, restored_at

REVIEW_DIR = "_review"
DECISIONS_DIR = f"{REVIEW_DIR}/decisions"
DECISIONS = ("accept", "reject", "redo")
UNDECIDED = "undecided"  # a decision taken back (undo)

DECISION_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("decision", pa.string()),  # accept, reject, redo, undecided
    ("note", pa.string()),
    ("settings", pa.string()),  # JSON of RedoSettings, for redo
    ("reviewer", pa.string()),
    ("decided_at", pa.timestamp("us", tz="UTC")),
    ("model_version", pa.string()),  # of the restoration judged
    ("restored_at", pa.timestamp("us", tz="UTC")),  # which restoration of the key was judged
])


class RedoSettings(BaseModel):
    """What to try when an item is restored again (`oldphoto restore --redo`); unset: as before."""

    model_config = ConfigDict(extra="forbid")
    scratch: Literal["auto", "on", "off"] | None = Field(None, description="scratch handling")
    colour: Colour | None = None
    model: str | None = Field(None, description="another restorer: path, URL or models:/NAME@ALIAS")

    def overrides(self) -> dict[str, str]:
        return self.model_dump(exclude_none=True)


def append_decision(dst: str, row: dict[str, Any]) -> dict[str, Any]:
    """One decision as its own part; the row as stored (decided_at set here)."""
    row = dict(row, decided_at=datetime.now(timezone.utc))
    name = f"part-{row['decided_at']:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:12]}.parquet"
    _write(storage.join(dst, DECISIONS_DIR, name), [row])
    return row


def read_decisions(dst: str) -> dict[str, dict[str, Any]]:
    """The latest decision row of every key (undo rows included)."""
    return merge_decisions({}, [row for rows in _files(dst).values() for row in rows])


def merge_decisions(latest: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """latest (key -> row) updated with rows, in place: the later decision of a key wins."""
    for row in rows:
        if row["key"] not in latest or row["decided_at"] >= latest[row["key"]]["decided_at"]:
            latest[row["key"]] = row
    return latest


def decision_files(dst: str) -> set[str]:
    """The files (parts and folded) that hold decisions, as the store lists them."""
    fs, path = storage.filesystem(storage.join(dst, DECISIONS_DIR))
    fs.invalidate_cache(path)
    return set(fs.glob(posixpath.join(path, "*.parquet")))  # none where there is no folder


def read_decision_files(dst: str, files: set[str], strict: bool = False) -> list[dict[str, Any]]:
    """The rows of some of the files; one folded away meanwhile is passed over (the folded file has
    them), or, strict, raises FileNotFoundError."""
    fs, _ = storage.filesystem(dst)
    rows = []
    for file in sorted(files):
        try:
            rows += pq.read_table(io.BytesIO(fs.cat_file(file))).to_pylist()
        except FileNotFoundError:
            if strict:
                raise
    return rows


def fold_decisions(dst: str) -> int:
    """Fold the parts into one file; the number of parts folded."""
    files = {f: rows for f, rows in _files(dst).items() if posixpath.basename(f).startswith("part-")}
    if len(files) < 2:
        return 0
    rows = [row for part in files.values() for row in part]
    _write(storage.join(dst, DECISIONS_DIR, f"folded-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}.parquet"), rows)
    fs, _ = storage.filesystem(dst)
    for file in files:
        try:
            fs.rm_file(file)
        except FileNotFoundError:
            pass  # folded by another server at the same time
    return len(files)


def current_decision(manifest_row: dict[str, Any], decision: dict[str, Any] | None) -> str:
    """The decision that holds for a key's present restoration: one taken on an earlier restoration,
    or taken back, leaves it undecided."""
    if decision is None or decision["decision"] == UNDECIDED:
        return UNDECIDED
    return decision["decision"] if decision["restored_at"] == restored_at(manifest_row) else UNDECIDED


def to_redo(manifest: dict[str, dict[str, Any]], which: Literal["rejected", "redo"],
            decisions: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """key -> the engine settings to restore it with, for the items whose present restoration was
    rejected (as before) or sent to redo (with the settings the reviewer asked for)."""
    wanted = {"rejected": "reject", "redo": "redo"}[which]
    chosen = {}
    for key, row in manifest.items():
        decision = decisions.get(key)
        if current_decision(row, decision) == wanted:
            chosen[key] = RedoSettings(**json.loads(decision["settings"] or "{}")).overrides()
    return chosen


def _files(dst: str) -> dict[str, list[dict[str, Any]]]:
    """Every decision file's rows; listed again when a fold removed one between listing and reading."""
    for _ in range(3):
        files = decision_files(dst)
        try:
            return {file: read_decision_files(dst, {file}, strict=True) for file in sorted(files)}
        except FileNotFoundError:
            continue
    raise RuntimeError(f"{storage.join(dst, DECISIONS_DIR)}: decisions kept changing while being read")


def _write(url: str, rows: list[dict[str, Any]]) -> None:
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=DECISION_SCHEMA), out, compression="zstd")
    storage.write_bytes_atomic(url, out.getvalue())


def source_of(dst: str) -> str | None:
    """SRC of the run that wrote DST's report (the folder of the originals), where it is still there."""
    try:
        src = json.loads(storage.read_bytes(storage.join(dst, REPORT_DIR, SUMMARY))).get("src")
    except (FileNotFoundError, ValueError):
        return None
    if not src:
        return None
    fs, path = storage.filesystem(src)
    if not fs.exists(path):
        return None
    return posixpath.dirname(src.rstrip("/")) if fs.isfile(path) else src  # a run may have named one file


def reviewed(dst: str) -> dict[str, list[str]]:
    """What a review of DST offers retraining: the scans of accepted restorations (real old photos),
    the accepted restorations (clean photographs a curator vouched for), and the scans of rejected
    ones (cases for the evaluation's before/after sheet); as URLs."""
    src = source_of(dst)
    if src is None:
        raise FileNotFoundError(f"{dst}: the originals of this restored archive are not to be found "
                                f"({REPORT_DIR}/{SUMMARY} names none that exists)")
    manifest, decisions = read_manifest(dst), read_decisions(dst)
    state = {k: current_decision(row, decisions.get(k)) for k, row in manifest.items() if row["status"] != "failed"}
    accepted = sorted(k for k, s in state.items() if s == "accept")
    return {"real": [storage.join(src, k) for k in accepted],
            "clean": [storage.join(dst, manifest[k]["output_key"] or k) for k in accepted],
            "rejected": [storage.join(src, k) for k in sorted(k for k, s in state.items() if s == "reject")]}
