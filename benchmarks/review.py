"""`oldphoto review` over a large archive: a manifest of N items (100,000 by default) and D decisions
already taken as separate parts (as many reviewers leave them), no images. Measured on a real server
process: from its start to the page and the first grid page answered (it folds the parts and reads
the manifest), then a warm grid page, a filtered page deep in the archive, and a decision.

    .venv/bin/python benchmarks/review.py [--items 100000] [--decisions 2000]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def make_archive(dst: Path, items: int, decisions: int) -> None:
    from oldphoto.tasks.restore import MANIFEST_SCHEMA
    from oldphoto.tasks.review import append_decision

    now = datetime.now(timezone.utc)
    rows = [{"key": f"box{i // 1000:03d}/scan{i:06d}.tif", "size": 40_000_000, "sha256": "0" * 64, "stamp": f"40000000:{i}",
             "status": "failed" if i % 97 == 0 else "restored", "reason": None, "output_key": f"box{i // 1000:03d}/scan{i:06d}.tif",
             "model_name": "default.pt", "model_version": "v1", "seconds": 3.0, "finished_at": now, "restored_at": now,
             "settings": '{"scratch": "auto", "colour": "keep"}', "damaged": 0.01} for i in range(items)]
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), out, compression="zstd")
    (dst / "_manifest").mkdir(parents=True)
    (dst / "_manifest" / "manifest.parquet").write_bytes(out.getvalue())
    for i in range(decisions):
        row = rows[(i * 37) % items]
        append_decision(str(dst), {"key": row["key"], "decision": ("accept", "reject", "redo")[i % 3], "note": "",
                                   "settings": "{}", "reviewer": "bench", "model_version": "v1",
                                   "restored_at": now})


def main() -> None:
    from conftest import _free_port

    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--decisions", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "restored"
        started = time.perf_counter()
        make_archive(dst, args.items, args.decisions)
        print(f"archive: {args.items} manifest rows, {args.decisions} decision parts ({time.perf_counter() - started:.1f} s to make)")
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        server = subprocess.Popen([sys.executable, "-m", "oldphoto.cli", "review", str(dst), "--port", str(port)],
                                  stdout=subprocess.DEVNULL)
        try:
            while True:
                try:
                    page = httpx.get(base + "/", timeout=30)
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
            up = time.perf_counter() - started
            first = httpx.get(base + "/api/items", params={"filter": "undecided", "limit": 60}, timeout=60)
            opened = time.perf_counter() - started
            print(f"server start to page answered: {up:.2f} s; to the first grid page: {opened:.2f} s "
                  f"(target 2 s for the grid once up: {opened - up:.2f} s)")
            print(f"  counts {first.json()['counts']}")
            for label, params in (("warm grid page", {"filter": "undecided", "limit": 60}),
                                  ("accepted, page at offset 600", {"filter": "accepted", "offset": 600, "limit": 60}),
                                  ("all, page at offset 90,000", {"filter": "all", "offset": 90_000, "limit": 60})):
                t = time.perf_counter()
                answer = httpx.get(base + "/api/items", params=params, timeout=60)
                print(f"  {label}: {1000 * (time.perf_counter() - t):.0f} ms ({len(answer.json()['items'])} items)")
            t = time.perf_counter()
            answer = httpx.post(base + "/api/decisions", json={"key": "box050/scan050001.tif", "decision": "accept"}, timeout=60)
            assert answer.status_code == 200, answer.text
            print(f"  a decision answered: {1000 * (time.perf_counter() - t):.0f} ms")
            t = time.perf_counter()
            httpx.get(base + "/api/items", params={"filter": "undecided", "limit": 60}, timeout=60)
            print(f"  the grid page after it: {1000 * (time.perf_counter() - t):.0f} ms")
            assert page.status_code == 200
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
