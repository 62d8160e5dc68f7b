"""Prefect tasks of the evaluation flow: score a restorer and the classical baselines on synthetic
pairs, summarize, and keep the results (files beside each other, and an MLflow run).

Methods, each scored against the clean photograph of every pair:
  degraded         the input itself: what doing nothing gives
  nlm              OpenCV non-local means
  nlm_telea        non-local means, then Telea inpainting of the model's damage mask
  nlm_telea_truth  the same with the true damage mask (a bound on what the mask can give NLM)
  model            the restorer, through the engine, as `oldphoto restore` runs it
  compare          optionally a second restorer the same way (the champion, or an ablation)

And the clean pass-through of each restorer: the clean photograph itself restored and scored against
itself (a restorer must leave a good print nearly as it is), with the share of it marked as damaged;
and again in gray, as most of an archive's good prints are black and white.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import torch
import pyarrow.parquet as pq
from prefect import task
from tabulate import tabulate
from pydantic import Field, model_validator

from oldphoto import storage
from oldphoto.images import UnreadableImage, decode_archive, encode_png, to_rgb8
from oldphoto.model.baselines import non_local_means, non_local_means_inpainted
from oldphoto.model.metrics import mask_counts, mask_scores_from_counts, quality
from oldphoto.pairs import read_shard
from oldphoto.sheets import labelled_grid
from oldphoto.synth import DegradationConfig
from oldphoto.tasks.restore import DEFAULT_MODEL, EngineConfig, restorer_for
from oldphoto.tasks.synth import Crop

METHODS = ("degraded", "nlm", "nlm_telea", "nlm_telea_truth", "model", "compare")
METRICS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")
EXPERIMENT = "oldphoto-evaluate"


class EvaluateConfig(EngineConfig):
    """What is evaluated and on what; the defaults score the shipped model on BSDS500 test."""

    model: str = Field(DEFAULT_MODEL, description="restorer bundle: path, URL, models:/NAME@ALIAS or runs:/...")
    compare: str | None = Field(None, description="a second restorer, scored and shown beside the model")
    # The held-out set synthesized from clean photographs (ignored when pairs are given):
    count: int = Field(200, gt=0, description="samples; 200 is one per BSDS500 test photograph")
    seed: int = Field(0, ge=0, description="seed of the held-out set")
    crop: Crop = Field(256, description="square crop of each photograph; 0 keeps whole images")
    degradation: DegradationConfig = Field(default_factory=lambda: DegradationConfig.load("default"),
                                           description="degradation preset (default, v2, corruptions) or JSON file")
    sheet_samples: int = Field(8, ge=0, description="pairs shown on the before/after sheet")
    mask_scales: tuple[int, ...] = Field((2, 4), description="the damage mask scored again on the pairs enlarged "
                                         "by these factors: a scan at a higher resolution shows the same damage wider")
    # LPIPS needs both (paths or URLs); without them it is skipped, and the report says so.
    lpips_vgg16: str | None = Field(None, description="torchvision's ImageNet VGG16 state dict")
    lpips_linear: str | None = Field(None, description="the lpips package's linear layers, weights/v0.1/vgg.pth")

    @model_validator(mode="after")
    def _both_lpips_files(self) -> EvaluateConfig:
        if (self.lpips_vgg16 is None) != (self.lpips_linear is None):
            raise ValueError("LPIPS needs both lpips_vgg16 and lpips_linear weights, or neither")
        return self


@functools.cache
def lpips_for(vgg16: str, linear: str):
    from oldphoto.model.lpips import LPIPS
    from oldphoto.models import read_weights

    return LPIPS(read_weights(vgg16), read_weights(linear))


@task
def check_lpips(config: EvaluateConfig) -> None:
    """Load the LPIPS weights before any work, so that a missing file fails the run at once."""
    if config.lpips_vgg16:
        lpips_for(config.lpips_vgg16, config.lpips_linear)


def lpips_distance(metric, image: np.ndarray, reference: np.ndarray) -> float:
    """LPIPS of two uint8 images (gray or RGB)."""
    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(_rgb(x)).permute(2, 0, 1)[None].float().div(127.5).sub(1)
    return float(metric(tensor(image), tensor(reference))[0])


def heldout_url(clean: str, config: EvaluateConfig, home: Path) -> str:
    """Where the held-out pairs of (clean, seed, count, crop, degradation) are kept: made once, then
    reused by every evaluation on the same set, so that models are compared on the same bytes."""
    spec = json.dumps([storage.absolute(clean), config.count, config.seed, config.crop,
                       config.degradation.model_dump(mode="json")], sort_keys=True)
    return str((home / "heldout" / hashlib.sha256(spec.encode()).hexdigest()[:12]).resolve())


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


@task(retries=1, retry_delay_seconds=2)
def evaluate_shard(shard: str, config: EvaluateConfig) -> dict[str, Any]:
    """Every pair of one shard: each method's output scored against the clean photograph, the model's
    mask against the true one. Returns rows (one per pair) and the sheet's images of the first pairs."""
    rows, sheet = [], []
    columns = ["degraded", "nlm_telea", "model", "compare", "clean"] if config.compare else ["degraded", "nlm_telea", "model", "clean"]
    for sample in read_shard(shard):
        clean, degraded, truth = sample["clean"], sample["degraded"], sample["mask"]
        started = time.perf_counter()
        restored, mask, info = _restore(config.model, config, degraded)
        seconds = time.perf_counter() - started
        denoised = non_local_means(degraded)
        outputs = {"degraded": degraded, "nlm": denoised,
                   "nlm_telea": non_local_means_inpainted(degraded, mask, denoised=denoised),
                   "nlm_telea_truth": non_local_means_inpainted(degraded, truth, denoised=denoised),
                   "model": restored}
        if config.compare:
            outputs["compare"] = _restore(config.compare, config, degraded)[0]
        passthrough = {}
        gray = cv2.cvtColor(clean, cv2.COLOR_RGB2GRAY)  # as synth makes its gray samples
        for name, model in (("model", config.model), ("compare", config.compare)):
            if not model:
                continue
            for label, photo in ((name, clean), (f"{name}.gray", gray)):
                passed, marked, _ = _restore(model, config, photo)
                passthrough |= {f"{label}.passthrough.{k}": v for k, v in quality(passed, photo).items()}
                passthrough[f"{label}.passthrough.marked"] = float(marked.mean())
        counts = _mask_counts(mask, truth)
        f1 = mask_scores_from_counts(*counts.values())["f1"]
        for factor in config.mask_scales:
            enlarged = cv2.resize(degraded, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
            found = restorer_for(config.model, config.device, config.precision, config.tile)[0].detect(enlarged)
            true = cv2.resize(truth.astype(np.uint8), None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST) > 0
            counts |= {f"x{factor}.{k}": v for k, v in _mask_counts(found, true).items()}
        row = {"sample_id": sample["sample_id"], "source_key": sample["source_key"],
               "ops": sorted({op["op"] for op in sample["record"]["ops"]}), "grayscale": sample["record"]["grayscale"],
               "pixels": int(truth.size), "model_seconds": seconds, "model_ran_on": f"{info['precision']} on {info['device']}",
               **counts,
               "mask_f1": f1, **passthrough}
        for method, output in outputs.items():
            row |= {f"{method}.{k}": v for k, v in quality(output, clean).items()}
            if config.lpips_vgg16:
                row[f"{method}.lpips"] = lpips_distance(lpips_for(config.lpips_vgg16, config.lpips_linear), output, clean)
        rows.append(row)
        if sample["sample_id"] < config.sheet_samples:
            images = [(f"{name} #{sample['sample_id']}", _rgb((outputs | {"clean": clean})[name])) for name in columns]
            sheet.append({"sample_id": sample["sample_id"], "images": [*images, ("model mask", _rgb(_white(mask)))]})
    return {"rows": rows, "sheet": sheet}


def _restore(model: str, config: EvaluateConfig, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    return restorer_for(model, config.device, config.precision, config.tile)[0].restore(image, config.scratch, config.colour)


def _mask_counts(mask: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    """Pixel counts, so that scores pool over the set."""
    return dict(zip(("mask_tp", "mask_fp", "mask_fn"), mask_counts(mask, truth)))


def _white(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * 255


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean scores per method, the mask scores pooled over all pixels, and the same means per
    degradation kind (the operations the pairs' records list)."""
    metrics = [k for k in (*METRICS, "lpips") if f"model.{k}" in rows[0]]
    methods = [m for m in METHODS if f"{m}.psnr_y" in rows[0]]

    def means(subset: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
        return {m: {k: float(np.mean([r[f"{m}.{k}"] for r in subset])) for k in metrics} for m in methods}

    kinds = sorted({op for r in rows for op in r["ops"]})
    damaged = [r for r in rows if r["mask_tp"] + r["mask_fn"]]
    pooled = _pooled(rows)
    return {
        "samples": len(rows),
        "methods": means(rows),
        "mask": pooled | {"damaged_samples": len(damaged),
                          "mean_f1_damaged": float(np.mean([r["mask_f1"] for r in damaged])) if damaged else 1.0},
        "mask_at_scale": {scale: _pooled(rows, f"{scale}.") for scale in sorted(
            {key.split(".")[0] for key in rows[0] if key.endswith(".mask_tp")}, key=lambda x: int(x[1:]))},
        "by_kind": {kind: {"samples": len(subset), "methods": means(subset)}
                    for kind in kinds if (subset := [r for r in rows if kind in r["ops"]])},
        "model_megapixels_per_second": sum(r["pixels"] for r in rows) / 1e6 / max(1e-9, sum(r["model_seconds"] for r in rows)),
        "model_ran_on": ", ".join(sorted({r["model_ran_on"] for r in rows})),
        "passthrough": {name: _passthrough(rows, name) for name in ("model", "model.gray", "compare", "compare.gray")
                        if f"{name}.passthrough.psnr_y" in rows[0]},
    }


def _pooled(rows: list[dict[str, Any]], prefix: str = "") -> dict[str, float]:
    return mask_scores_from_counts(*(sum(r[f"{prefix}mask_{k}"] for r in rows) for k in ("tp", "fp", "fn")))


def _passthrough(rows: list[dict[str, Any]], name: str) -> dict[str, float]:
    """Means and worst cases of a restorer's clean pass-through; PSNR capped at 100 dB, which an
    unchanged photograph (infinite PSNR) gets."""
    def values(metric: str) -> list[float]:
        return [min(100.0, r[f"{name}.passthrough.{metric}"]) for r in rows]
    return {"psnr_y": float(np.mean(values("psnr_y"))), "psnr_y_worst": min(values("psnr_y")),
            "ssim_y": float(np.mean(values("ssim_y"))), "ssim_y_worst": min(values("ssim_y")),
            "psnr_rgb": float(np.mean(values("psnr_rgb"))), "marked": float(np.mean(values("marked")))}


def markdown_table(summary: dict[str, Any]) -> str:
    """The printed report: methods x metrics, mask scores, then Y-PSNR per degradation kind."""
    m = summary["methods"]
    methods, metrics = list(m), list(m["model"])
    scores = [[method, *(f"{m[method][k]:.2f}" if "psnr" in k else f"{m[method][k]:.4f}" for k in metrics)]
              for method in methods]
    kinds = [[kind, b["samples"], *(f"{b['methods'][x]['psnr_y']:.2f}" for x in methods)]
             for kind, b in summary["by_kind"].items()]
    k = summary["mask"]
    lines = [f"Evaluation on {summary['samples']} pairs (means; PSNR in dB)", "",
             tabulate(scores, ["method", *metrics], "github", disable_numparse=True), "",
             f"Damage mask of the model, pooled over all pixels: precision {k['precision']:.3f}, recall "
             f"{k['recall']:.3f}, F1 {k['f1']:.3f}, IoU {k['iou']:.3f} (mean F1 over the {k['damaged_samples']} "
             f"damaged pairs: {k['mean_f1_damaged']:.3f})", *([
                 "On the pairs enlarged (as scans at a higher resolution): " + ", ".join(
                     f"{scale[1:]}x F1 {s['f1']:.3f} (precision {s['precision']:.3f}, recall {s['recall']:.3f})"
                     for scale, s in summary["mask_at_scale"].items())] if summary.get("mask_at_scale") else []), "",
             "Y-PSNR by degradation kind (pairs whose recipe applied it):", "",
             tabulate(kinds, ["kind", "pairs", *methods], "github", disable_numparse=True)]
    if summary.get("passthrough"):
        passed = [[name.replace(".gray", ", in gray"), f"{p['psnr_y']:.2f}", f"{p['psnr_y_worst']:.2f}", f"{p['ssim_y']:.4f}", f"{p['ssim_y_worst']:.4f}",
                   f"{100 * p['marked']:.2f}%"] for name, p in summary["passthrough"].items()]
        lines += ["", "Clean pass-through (each pair's clean photograph restored, scored against itself; and in gray):", "",
                  tabulate(passed, ["restorer", "Y-PSNR", "worst", "SSIM (Y)", "worst", "marked as damaged"], "github",
                           disable_numparse=True)]
    if "lpips" not in metrics:
        lines += ["", "LPIPS: skipped (no LPIPS weights are configured: lpips_vgg16 and lpips_linear)"]
    lines += ["", f"Model speed over the set: {summary['model_megapixels_per_second']:.2f} megapixels/s "
              f"({summary['model_ran_on']})"]
    return "\n".join(lines)


@task(retries=2, retry_delay_seconds=[2, 10])
def write_results(out: str, rows: list[dict[str, Any]], summary: dict[str, Any], sheet: list[dict[str, Any]]) -> dict[str, str]:
    """out/evaluation.json, samples.parquet (a row per pair), table.md and sheet.png, each atomically."""
    urls = {name: storage.join(out, name) for name in ("evaluation.json", "samples.parquet", "table.md", "sheet.png")}
    table = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), table)
    storage.write_bytes_atomic(urls["samples.parquet"], table.getvalue())
    storage.write_bytes_atomic(urls["table.md"], markdown_table(summary).encode())
    grid = [s["images"] for s in sorted(sheet, key=lambda s: s["sample_id"])]
    if grid:
        storage.write_bytes_atomic(urls["sheet.png"], encode_png(labelled_grid(grid)))
    else:
        del urls["sheet.png"]
    storage.write_bytes_atomic(urls["evaluation.json"], json.dumps(summary, indent=2).encode())
    return urls


@task(retries=1, retry_delay_seconds=2)
def real_sheet(real: str, out: str, config: EvaluateConfig) -> str:
    """out/real_sheet.png: each real old photograph, then non-local means plus Telea with the model's
    mask, the model's restoration (and the compared restorer's), and the model's mask. There is no reference to score them against: the
    sheet is for the eye."""
    rows = []
    for key in storage.list_images(real):
        try:
            image = to_rgb8(decode_archive(storage.read_bytes(storage.join(real, key)), key).pixels)
        except UnreadableImage:
            continue  # not a photograph to show; the restore flow reports such files
        restored, mask, _ = _restore(config.model, config, image)
        row = [(key, _rgb(image)), ("nlm_telea", _rgb(non_local_means_inpainted(image, mask))), ("model", _rgb(restored))]
        if config.compare:
            row.append(("compare", _rgb(_restore(config.compare, config, image)[0])))
        rows.append([*row, ("model mask", _rgb(_white(mask)))])
    if not rows:
        raise FileNotFoundError(f"{real}: no readable photographs for the real-photo sheet")
    url = storage.join(out, "real_sheet.png")
    storage.write_bytes_atomic(url, encode_png(labelled_grid(rows, tile=360)))
    return url


def _registered_version(client, ref: str) -> tuple[str, str] | None:
    """(name, version) of a models:/NAME/VERSION or models:/NAME@ALIAS reference."""
    if not ref.startswith("models:/"):
        return None
    name, _, rest = ref.removeprefix("models:/").partition("/")
    if "@" in name:
        name, alias = name.split("@", 1)
        return name, client.get_model_version_by_alias(name, alias).version
    return (name, rest) if rest.isdigit() else None


@task(retries=2, retry_delay_seconds=[2, 10])
def log_evaluation(summary: dict[str, Any], files: dict[str, str], params: dict[str, str], model_version: str,
                   tracking_uri: str) -> str:
    """An MLflow run of the evaluation of this model version: parameters, the scores as metrics, the
    files as artifacts. A registered model version gets the run's id and headline scores as tags."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from oldphoto.tracking import experiment_id

    client = MlflowClient(tracking_uri)
    run = client.create_run(experiment_id(client, EXPERIMENT), run_name=f"evaluate-{model_version}",
                            tags={"oldphoto.model_version": model_version, "oldphoto.model": params["model"],
                                  "oldphoto.model_ran_on": summary["model_ran_on"]})
    now = int(time.time() * 1000)
    metrics = {f"{method}.{k}": v for method, scores in summary["methods"].items() for k, v in scores.items()}
    metrics |= {f"mask.{k}": float(v) for k, v in summary["mask"].items()}
    metrics |= {f"mask.{scale}.{k}": float(v) for scale, scores in summary.get("mask_at_scale", {}).items() for k, v in scores.items()}
    metrics["model.megapixels_per_second"] = summary["model_megapixels_per_second"]
    metrics |= {f"{name}.passthrough.{k}": v for name, scores in summary["passthrough"].items() for k, v in scores.items()}
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in sorted(metrics.items())],
                     params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())])
    with tempfile.TemporaryDirectory() as folder:
        for name, url in files.items():
            (Path(folder) / name).write_bytes(storage.read_bytes(url))
        client.log_artifacts(run.info.run_id, folder, "evaluation")
    client.set_terminated(run.info.run_id)
    registered = _registered_version(client, params["model"])
    if registered:
        name, version = registered
        tags = {"oldphoto.evaluation_run": run.info.run_id,
                "oldphoto.eval.psnr_y": f"{summary['methods']['model']['psnr_y']:.2f}",
                "oldphoto.eval.ssim_y": f"{summary['methods']['model']['ssim_y']:.4f}",
                "oldphoto.eval.mask_f1": f"{summary['mask']['f1']:.3f}",
                "oldphoto.eval.passthrough_psnr_y": f"{summary['passthrough']['model']['psnr_y']:.2f}"}
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
    return run.info.run_id
