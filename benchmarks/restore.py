"""Restoration speed and memory.

- engine: the default model on scratched photographs at 512x512, 2048x1536 and 4000x3000, fp32 and
  bf16 autocast: megapixels/s and peak RSS, each in a fresh process so that peaks do not mix.
- paper: the `paper` configuration at 256 and 512 with a scratch mask, our way (batch norm folded,
  channels_last, the engine's precision) beside the same network run the plain way (fp32, NCHW).
- bulk: `restore_archive` over moto's S3 server against the engine alone on the same images.

    .venv/bin/python benchmarks/restore.py [--model REF] [--compare REF] [--part all|engine|paper|bulk]
                                           [--bulk-images N] [--bulk-workers W]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = Path(__file__).resolve().parents[2] / "shared/data/clean/bsds500/test"
SIZES = [(512, 512), (1536, 2048), (3000, 4000)]


def scratched_photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A clean BSDS photograph resized to h x w, with thin scratches across it (synth.damage)."""
    from oldphoto.synth.damage import scratches

    photos = sorted(PHOTOS.glob("*.jpg"))
    photo = Image.open(photos[seed % len(photos)]).convert("RGB").resize((w, h), Image.BICUBIC)
    damaged, _ = scratches(np.asarray(photo), np.random.default_rng(seed), count=6, width=1.5)
    return damaged


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_engine(model: str, h: int, w: int, precision: str) -> dict:
    """One configuration, in this (fresh) process."""
    from oldphoto.model.engine import Restorer
    from oldphoto.models import load_restorer

    restorer = Restorer(load_restorer(model), precision=precision)
    image = scratched_photo(h, w)
    small = h * w <= 1 << 20
    # Warm-up: oneDNN builds its kernels per shape. A small image is warmed up on itself (an archive
    # of such photos hits the same shapes again and again); a large one is many tiles of one shape.
    restorer.restore(image if small else scratched_photo(256, 256, 1))
    before = peak_rss_mb()
    runs = 3 if small else 1
    times, info = [], {}
    for _ in range(runs):
        started = time.perf_counter()
        _, _, info = restorer.restore(image)
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    return {"size": f"{w}x{h}", "precision": info["precision"], "seconds": round(seconds, 2),
            "megapixels_per_s": round(h * w / 1e6 / seconds, 3), "peak_rss_mb": round(peak_rss_mb()),
            "rss_before_mb": round(before), "damaged_fraction": round(info["damaged_fraction"], 4),
            "global_tiles": f"{info['global_tiles']}/{info['tiles']}"}


def engine(model: str, precisions: list[str], compare: str | None = None) -> None:
    """compare: another model measured in fp32 right after each fp32 line, and the speed ratio."""
    print(f"engine, default model ({model}), 6 scratches per photo, tiles of 512")
    print(f"{'size':>10} {'precision':>9} {'seconds':>8} {'Mpx/s':>7} {'peak RSS MB':>12} {'damaged':>8} {'global tiles':>12}")

    def measure(ref: str, h: int, w: int, precision: str, label: str) -> dict:
        out = subprocess.run([sys.executable, __file__, "--measure", str(h), str(w), precision, "--model", ref],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['size']:>10} {label:>9} {r['seconds']:>8} {r['megapixels_per_s']:>7} "
              f"{r['peak_rss_mb']:>12} {r['damaged_fraction']:>8} {r['global_tiles']:>12}", flush=True)
        return r

    for h, w in SIZES:
        for precision in precisions:
            if precision == "bf16" and h * w > 4e6 and not _fast_bf16():
                print(f"{w}x{h:<5} {'bf16':>9}  skipped: bf16 is emulated on this CPU (no AVX-512 BF16/AMX)")
                continue
            r = measure(model, h, w, precision, precision)
            if compare and precision == "fp32":
                c = measure(compare, h, w, precision, "compare")
                print(f"{'':>10} {'ratio':>9} {r['megapixels_per_s'] / c['megapixels_per_s']:>16.2f}x", flush=True)


def _fast_bf16() -> bool:
    from oldphoto.model.device import cpu_has_fast_bf16

    return cpu_has_fast_bf16()


def paper(repeats: int = 2) -> None:
    import torch

    from oldphoto.model.config import ModelConfig
    from oldphoto.model.device import autocast, pick_precision
    from oldphoto.model.restorer import RestorerNetwork

    torch.manual_seed(0)
    plain = RestorerNetwork(ModelConfig.load("paper")).eval()
    ours = plain.folded()
    dtype = pick_precision(torch.device("cpu"))
    print(f"\npaper configuration (random weights), detection + restoration with a scratch mask; ours in {dtype}")
    for size in (256, 512):
        image = torch.from_numpy(scratched_photo(size, size)).permute(2, 0, 1)[None].float() / 127.5 - 1
        mask = torch.zeros(1, 1, size, size)
        mask[..., size // 3 : size // 3 + 3, :] = 1  # one scratch across the picture
        times = {}
        for name, network, x, precision in [("plain", plain, image, torch.float32),
                                            ("ours", ours, image.contiguous(memory_format=torch.channels_last), dtype)]:
            runs = []
            with torch.inference_mode():
                for i in range(repeats + 1):  # the first is warm-up
                    started = time.perf_counter()
                    with autocast(torch.device("cpu"), precision):
                        network.detect(x)
                        network(x, mask)
                    runs.append(time.perf_counter() - started)
            times[name] = min(runs[1:])
        print(f"{size}x{size}: plain {times['plain']:.2f} s, ours {times['ours']:.2f} s "
              f"({times['plain'] / times['ours']:.2f}x); the reference implementation: 17.6 s at 512 (REFERENCE section 2)")


def bulk(model: str, count: int, workers: int) -> None:
    import boto3
    import dask
    from distributed import LocalCluster
    from moto.server import ThreadedMotoServer

    from oldphoto.images import decode_archive
    from oldphoto.model.engine import Restorer
    from oldphoto.models import load_restorer

    images = {f"box {i % 3}/scan {i:03d}.jpg": _jpeg(scratched_photo(768, 1024, i)) for i in range(count)}
    restorer = Restorer(load_restorer(model))
    restorer.restore(scratched_photo(256, 256, 1))
    started = time.perf_counter()
    for key, data in images.items():
        restorer.restore(decode_archive(data, key).pixels)
    engine_rate = count / (time.perf_counter() - started)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"
    os.environ.update({"OLDPHOTO_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="archive")
    for key, data in images.items():
        s3.put_object(Bucket="archive", Key=f"scans/{key}", Body=data)
    with tempfile.TemporaryDirectory() as home:
        os.environ.setdefault("PREFECT_HOME", home)
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        from oldphoto.flows.restore import restore_archive
        from oldphoto.flows.runner import LOCAL_CLUSTER_CONFIG, dask_runner
        from oldphoto.prefect_api import prefect_api
        from oldphoto.tasks.restore import RestoreConfig

        from oldphoto.settings import configure

        configure(torch_threads=max(1, os.cpu_count() // workers))  # as `oldphoto restore --workers` does
        # A cluster started beforehand, as an archive team's would be: worker start-up (seconds, once
        # per run) is left out, so that the figure is the pipeline's throughput.
        dask.config.set(LOCAL_CLUSTER_CONFIG)
        with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None,
                          preload=["oldphoto.tasks.restore", "oldphoto.model.engine"]) as cluster, prefect_api():
            summary = restore_archive.with_options(task_runner=dask_runner(address=cluster.scheduler_address))(
                "s3://archive/scans", "s3://archive/restored", RestoreConfig(model=model))
    server.stop()
    flow_rate = summary["restored"] / summary["seconds"]
    print(f"\nbulk: {count} JPEG scans of 1024x768 with scratches, moto S3 -> moto S3, {workers} Dask worker(s) started beforehand")
    print(f"engine alone (decode + restore in one process): {engine_rate:.3f} images/s")
    print(f"restore_archive flow: {flow_rate:.3f} images/s ({summary['restored']} restored in {summary['seconds']} s)"
          f" = {100 * flow_rate / engine_rate:.0f}% of the engine alone")


def _jpeg(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=92)
    return out.getvalue()


def main() -> None:
    from oldphoto.tasks.restore import DEFAULT_MODEL

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--compare", help="engine: another model measured beside it in fp32, with the speed ratio")
    parser.add_argument("--part", choices=["all", "engine", "paper", "bulk"], default="all")
    parser.add_argument("--bulk-images", type=int, default=64)
    parser.add_argument("--bulk-workers", type=int, default=1, help="as `oldphoto restore --workers`")
    parser.add_argument("--measure", nargs=3, metavar=("H", "W", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        h, w, precision = args.measure
        print(json.dumps(measure_engine(args.model, int(h), int(w), precision)))
        return
    print(f"{os.cpu_count()} CPUs; torch threads {__import__('torch').get_num_threads()}")
    if args.part in ("all", "engine"):
        engine(args.model, ["fp32", "bf16"], args.compare)
    if args.part in ("all", "paper"):
        paper()
    if args.part in ("all", "bulk"):
        bulk(args.model, args.bulk_images, args.bulk_workers)


if __name__ == "__main__":
    main()
