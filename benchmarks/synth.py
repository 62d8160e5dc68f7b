"""Synthesis speed at 512x512: our degradation against the paper's v2 recipe written plainly, per core,
then end to end (encoding + Parquet) and the Dask flow on 1 and 2 workers, with the CPU that its
workers and its orchestration (flow process, scheduler, Prefect API) use.

    .venv/bin/python benchmarks/synth.py [--images DIR] [--samples N] [--shard-size K] [--rounds R]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFilter

SIZE = 512
DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared/data/clean/bsds500/train"


def load_images(folder: Path, count: int) -> list[np.ndarray]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".png"})[:count]
    return [np.asarray(Image.open(p).convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)) for p in paths]


def v2_baseline(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The paper's v2 degradation, plainly with PIL and numpy: blur, noise, low resolution, JPEG,
    each with probability 0.7 in random order (REFERENCE section 2)."""
    picture = Image.fromarray(image)

    def blur(p):
        return p.filter(ImageFilter.GaussianBlur(radius=rng.uniform(1, 5)))

    def noise(p):
        x = np.asarray(p, dtype=np.float64)
        kind = rng.integers(3)
        if kind == 0:
            x = x + rng.normal(0, rng.uniform(5, 50), x.shape)
        elif kind == 1:
            x = x + x * rng.normal(0, rng.uniform(5, 50) / 255, x.shape)
        else:
            u = rng.random(x.shape[:2])
            amount = rng.uniform(0, 0.01)
            x[u < amount / 2] = 0
            x[(u >= amount / 2) & (u < amount)] = 255
        return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))

    def low_resolution(p):
        w, h = p.size
        scale = rng.uniform(0.5, 1.0)
        small = p.resize((int(w * scale), int(h * scale)), Image.BICUBIC)
        return small.resize((w, h), [Image.NEAREST, Image.BILINEAR][rng.integers(2)])

    def jpeg(p):
        buffer = io.BytesIO()
        p.save(buffer, "JPEG", quality=int(rng.integers(40, 101)))
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    operations = [blur, noise, low_resolution, jpeg]
    for index in rng.permutation(4):
        if rng.random() < 0.7:
            picture = operations[index](picture)
    return np.asarray(picture)


def rates(functions, images, samples: int) -> list[float]:
    """Samples/s of each function, timed call by call in turn on the same images and seeds, so that
    the machine's drift during the run affects them alike."""
    for function in functions:  # warm-up
        function(images[0], np.random.default_rng(0))
    spent = [0.0] * len(functions)
    for i in range(samples):
        for k, function in enumerate(functions):
            started = time.perf_counter()
            function(images[i % len(images)], np.random.default_rng(i))
            spent[k] += time.perf_counter() - started
    return [samples / s for s in spent]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=64, help="as SynthConfig's default")
    parser.add_argument("--rounds", type=int, default=5, help="1- and 2-worker measurements, in turn")
    args = parser.parse_args()

    cv2.setNumThreads(1)  # per core: one thread for OpenCV as for PIL and numpy
    from oldphoto.images import encode_png
    from oldphoto.runtime import keep_freed_memory
    from oldphoto.synth import DegradationPipeline
    from oldphoto.tasks.synth import SCHEMA

    images = load_images(args.images, 32)
    pipeline = DegradationPipeline()
    damaged = [bool(pipeline(images[i % 32], np.random.default_rng(i)).mask.any()) for i in range(100)]
    print(f"images {SIZE}x{SIZE} from {args.images}, {args.samples} samples, 1 thread; "
          f"{sum(damaged)}% of our samples carry structured damage")

    # Both with glibc's default allocator, then as the synthesis tasks run (keep_freed_memory).
    for allocator in ("default allocator", "keep_freed_memory"):
        if allocator == "keep_freed_memory":
            keep_freed_memory()
        baseline, ours = rates([v2_baseline, pipeline], images, args.samples)
        print(f"[{allocator}] baseline, paper v2 recipe (PIL + numpy): {baseline:6.1f} samples/s")
        print(f"[{allocator}] (a) oldphoto default degradation:        {ours:6.1f} samples/s"
              f"  = {ours / baseline:.2f}x baseline")

    import pyarrow as pa
    import pyarrow.parquet as pq

    def end_to_end(n: int) -> float:
        started = time.perf_counter()
        rows = {name: [] for name in SCHEMA.names}
        for i in range(n):
            d = pipeline(images[i % 32], np.random.default_rng(i))
            for name, value in (("sample_id", i), ("source_key", f"k{i % 32}"), ("seed", i),
                                ("clean", encode_png(d.clean)), ("degraded", encode_png(d.degraded)),
                                ("mask", encode_png(d.mask.astype(np.uint8) * 255)), ("height", SIZE),
                                ("width", SIZE), ("record", str(d.record))):
                rows[name].append(value)
        with tempfile.TemporaryDirectory() as folder:
            pq.write_table(pa.table(rows, schema=SCHEMA), os.path.join(folder, "s.parquet"), compression="zstd")
        return n / (time.perf_counter() - started)

    print(f"(b) end to end, degrade + PNG + Parquet:     {end_to_end(args.samples // 2):7.1f} samples/s")

    import dask
    from distributed import LocalCluster

    from oldphoto.flows.runner import LOCAL_CLUSTER_CONFIG, task_runner
    from oldphoto.flows.synth import synthesize
    from oldphoto.prefect_api import prefect_api
    from oldphoto.tasks.synth import SynthConfig

    # The flow on a running cluster of 1, then 2, single-threaded worker processes, as a deployment
    # would use one: a small warm-up run first (worker start-up is not throughput), then the measure.
    # The pair is measured --rounds times in turn, as this machine's speed drifts by 10-20% over a run.
    config = SynthConfig(count=args.samples, seed=0, crop=SIZE, shard_size=args.shard_size)
    import psutil

    def cpu_seconds() -> dict[str, float]:
        """CPU seconds so far of this (flow) process, the temporary Prefect API and the workers."""
        used = {"flow": sum(psutil.Process().cpu_times()[:2]), "api": 0.0, "workers": 0.0}
        for child in psutil.Process().children(recursive=True):
            try:
                kind = "api" if "uvicorn" in child.cmdline() else "workers"
                used[kind] += sum(child.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
        return used

    ratios, orchestration, worker_cpu = [], {}, {}
    with tempfile.TemporaryDirectory() as folder, prefect_api():
        source = Path(folder) / "src"
        source.mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image).save(source / f"{i:03d}.png")
        for round_ in range(args.rounds):
            speeds = {}
            for workers in (1, 2):
                with dask.config.set(LOCAL_CLUSTER_CONFIG), LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
                    run = synthesize.with_options(task_runner=task_runner(address=cluster.scheduler_address))
                    run(str(source), str(Path(folder) / f"warm{round_}-{workers}"), config.model_copy(update={"count": 2 * workers, "shard_size": 1}))
                    before = cpu_seconds()
                    summary = run(str(source), str(Path(folder) / f"out{round_}-{workers}"), config)
                    used = {k: v - before.get(k, 0.0) for k, v in cpu_seconds().items()}
                    speeds[workers] = summary["samples_per_second"]
                    orchestration[workers] = (used["flow"] + used["api"]) / (os.cpu_count() * summary["seconds"])
                    worker_cpu[workers] = used["workers"]
            ratios.append(speeds[2] / speeds[1])
            print(f"Dask flow, round {round_ + 1}: 1 worker {speeds[1]:6.1f} samples/s, "
                  f"2 workers {speeds[2]:6.1f} samples/s = {ratios[-1]:.2f}x; workers' CPU {worker_cpu[1]:.1f} / "
                  f"{worker_cpu[2]:.1f} s; orchestration (flow process with the scheduler, Prefect API) "
                  f"{orchestration[1]:.0%} / {orchestration[2]:.0%} of the cores' time", flush=True)
    print(f"Dask flow, 2 workers against 1, median of {args.rounds} rounds: {statistics.median(ratios):.2f}x")

if __name__ == "__main__":
    main()
