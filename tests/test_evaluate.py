"""The evaluation flow on a tiny model and a few photographs: scores checked against a recomputation
from the pairs, the files, the MLflow run, the held-out set kept and reused, and the CLI."""

from __future__ import annotations

import io
import json

import mlflow
import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from oldphoto import SAMPLES, storage
from oldphoto.cli import main
from oldphoto.flows.evaluate import evaluate
from oldphoto.model.baselines import non_local_means
from oldphoto.model.config import ModelConfig
from oldphoto.model.device import cpu_has_fast_bf16
from oldphoto.model.engine import Restorer
from oldphoto.model.metrics import mask_scores_from_counts, quality
from oldphoto.models import load_restorer
from oldphoto.model.restorer import RestorerNetwork
from oldphoto.pairs import read_pairs
from oldphoto.settings import get_settings
from oldphoto.tasks.evaluate import METHODS, EvaluateConfig, markdown_table, summarize

from test_metrics import lpips_weights

pytestmark = pytest.mark.usefixtures("prefect_api")


def row(sample_id: int, ops: list[str], base: float, tp: int, fp: int, fn: int) -> dict:
    scores = {f"{m}.{k}": base + i for i, m in enumerate(METHODS) for k in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")}
    return {"sample_id": sample_id, "ops": ops, "pixels": 1_000_000, "model_seconds": 0.5,
            "model_ran_on": "bfloat16 on cpu" if sample_id else "float32 on cpu", "mask_tp": tp,
            "mask_fp": fp, "mask_fn": fn, "mask_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0, **scores}


def test_summary_means_pools_mask_counts_and_breaks_down_by_kind():
    rows = [row(0, ["jpeg", "scratches"], 10.0, tp=30, fp=10, fn=0),
            row(1, ["jpeg"], 20.0, tp=0, fp=0, fn=0),
            row(2, ["scratches"], 30.0, tp=10, fp=0, fn=40)]
    summary = summarize(rows)
    assert summary["samples"] == 3
    assert summary["methods"]["degraded"]["psnr_y"] == pytest.approx(20.0)
    assert summary["methods"]["model"]["ssim_rgb"] == pytest.approx(24.0)  # base + 4 for the fifth method
    # Pooled: tp 40, fp 10, fn 40.
    assert summary["mask"]["precision"] == pytest.approx(0.8)
    assert summary["mask"]["recall"] == pytest.approx(0.5)
    assert summary["mask"]["f1"] == pytest.approx(2 * 0.8 * 0.5 / 1.3)
    assert summary["mask"]["iou"] == pytest.approx(40 / 90)
    assert summary["mask"]["damaged_samples"] == 2  # the pair without damage does not count
    assert summary["mask"]["mean_f1_damaged"] == pytest.approx((60 / 70 + 20 / 60) / 2)
    assert set(summary["by_kind"]) == {"jpeg", "scratches"}
    assert summary["by_kind"]["jpeg"]["samples"] == 2
    assert summary["by_kind"]["scratches"]["methods"]["nlm"]["psnr_y"] == pytest.approx(21.0)
    assert summary["model_megapixels_per_second"] == pytest.approx(2.0)
    table = markdown_table(summary)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")]
    assert ["model", "24.00", "24.0000", "24.00", "24.0000"] in cells
    assert ["scratches", "2", "20.00", "21.00", "22.00", "23.00", "24.00", "25.00"] in cells
    assert "LPIPS: skipped" in table
    assert "Model speed over the set: 2.00 megapixels/s (bfloat16 on cpu, float32 on cpu)" in table


def test_clean_pass_through_is_summarized_by_mean_and_worst_with_unchanged_photos_capped():
    rows = [row(i, ["jpeg"], 20.0, tp=0, fp=0, fn=0) for i in range(3)]
    for r, (psnr_y, ssim_y, marked) in zip(rows, [(30.0, 0.9, 0.0), (float("inf"), 1.0, 0.0), (26.0, 0.8, 0.03)]):
        r |= {"model.passthrough.psnr_y": psnr_y, "model.passthrough.ssim_y": ssim_y, "model.passthrough.psnr_rgb": psnr_y,
              "model.passthrough.ssim_rgb": ssim_y, "model.passthrough.marked": marked}
    summary = summarize(rows)
    assert list(summary["passthrough"]) == ["model"]  # no compared restorer, no gray rows
    assert summary["passthrough"]["model"] == pytest.approx({"psnr_y": (30 + 100 + 26) / 3, "psnr_y_worst": 26.0,
                                                             "ssim_y": 0.9, "ssim_y_worst": 0.8,
                                                             "psnr_rgb": (30 + 100 + 26) / 3, "marked": 0.01})
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in markdown_table(summary).splitlines()]
    assert ["model", "52.00", "26.00", "0.9000", "0.8000", "1.00%"] in cells


def test_evaluation_on_a_heldout_set_scores_logs_and_reuses_the_set(tmp_path, clean_folder):
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(RestorerNetwork(ModelConfig.load("tiny")).eval().bundle(), other)
    # Random networks restore to nearly flat grey and their detectors mark all or nothing: spread the
    # model's output over the range and its logits around the threshold, so that its scores and mask
    # are its own.
    network = RestorerNetwork(ModelConfig.load("tiny")).eval()
    with torch.no_grad():
        network.decoder.body[-2].weight.mul_(40)
        network.scratch.out.weight.mul_(200)
        network.scratch.out.bias.copy_(-0.4 - network.scratch(torch.zeros(1, 1, 48, 48)).median())
    model = str(tmp_path / "model.pt")
    torch.save(network.bundle(), model)
    config = EvaluateConfig(model=model, compare=str(other), count=6, seed=3, crop=48, sheet_samples=2)
    out = tmp_path / "eval"
    result = evaluate(clean=str(clean_folder), config=config, out=str(out), real=str(clean_folder / "sub"))

    # The held-out pairs were synthesized once, under OLDPHOTO_HOME, and are what was scored.
    pairs = list(read_pairs(result["pairs"]))
    assert result["pairs"].startswith(str(get_settings().home / "heldout"))
    assert len(pairs) == result["samples"] == 6
    degraded = np.mean([quality(p["degraded"], p["clean"])["psnr_y"] for p in pairs])
    nlm = np.mean([quality(non_local_means(p["degraded"]), p["clean"])["ssim_rgb"] for p in pairs])
    assert result["methods"]["degraded"]["psnr_y"] == pytest.approx(degraded)
    assert result["methods"]["nlm"]["ssim_rgb"] == pytest.approx(nlm)
    # The model's own scores and mask, recomputed through the engine as `oldphoto restore` runs it.
    for method, bundle in (("compare", str(other)), ("model", model)):
        engine = Restorer(load_restorer(bundle))
        outputs = [engine.restore(p["degraded"]) for p in pairs]
        scores = [quality(restored, p["clean"]) for (restored, _, _), p in zip(outputs, pairs)]
        for metric in ("psnr_y", "ssim_y", "psnr_rgb"):
            assert result["methods"][method][metric] == pytest.approx(np.mean([s[metric] for s in scores]), abs=1e-3)
        # Its clean pass-through: the clean photographs restored, against themselves; and in gray.
        for row, photos in ((method, [p["clean"] for p in pairs]),
                            (f"{method}.gray", [cv2.cvtColor(p["clean"], cv2.COLOR_RGB2GRAY) for p in pairs])):
            passed = [engine.restore(photo) for photo in photos]
            psnrs = [quality(restored, photo)["psnr_y"] for (restored, _, _), photo in zip(passed, photos)]
            expected = {"psnr_y": np.mean(psnrs), "psnr_y_worst": min(psnrs), "marked": np.mean([m.mean() for _, m, _ in passed])}
            assert {k: result["passthrough"][row][k] for k in expected} == pytest.approx(expected, abs=1e-3), row
        assert result["passthrough"][f"{method}.gray"] != result["passthrough"][method]
    masks, truths = np.concatenate([m.ravel() for _, m, _ in outputs]), np.concatenate([p["mask"].ravel() for p in pairs])
    counts = [int((masks & truths).sum()), int((masks & ~truths).sum()), int((~masks & truths).sum())]
    assert min(counts) > 0, counts  # the model's mask is neither empty nor everything
    assert result["mask"] == pytest.approx(mask_scores_from_counts(*counts) | {k: result["mask"][k] for k in (
        "damaged_samples", "mean_f1_damaged")}, rel=0.01)
    # The mask again on the pairs enlarged 2x and 4x, pooled the same way.
    for factor in (2, 4):
        found = [engine.detect(cv2.resize(p["degraded"], None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)) for p in pairs]
        true = [cv2.resize(p["mask"].astype(np.uint8), None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST) > 0 for p in pairs]
        found, true = np.concatenate([f.ravel() for f in found]), np.concatenate([t.ravel() for t in true])
        expected = mask_scores_from_counts(int((found & true).sum()), int((found & ~true).sum()), int((~found & true).sum()))
        assert result["mask_at_scale"][f"x{factor}"] == pytest.approx(expected), factor
    assert np.array_equal(engine.detect(pairs[0]["degraded"]), outputs[0][1])  # detect alone finds what restore does
    assert list(result["methods"]) == [*METHODS]  # the compared restorer scored beside the model
    assert result["methods"]["compare"]["psnr_y"] != result["methods"]["model"]["psnr_y"]
    kinds = {op["op"] for p in pairs for op in p["record"]["ops"]}
    assert set(result["by_kind"]) == kinds

    # Files: a row per pair, the table, the sheets (2 pairs x 6 columns; 2 real photographs x 5).
    samples = pq.read_table(out / "samples.parquet").to_pylist()
    assert [r["sample_id"] for r in samples] == list(range(6))
    assert json.loads((out / "evaluation.json").read_text())["methods"] == result["methods"]
    assert "| nlm_telea_truth " in (out / "table.md").read_text()
    sheet = np.asarray(Image.open(out / "sheet.png"))
    assert sheet.shape == (2 * 204 + 4, 6 * 204 + 4, 3)
    real = np.asarray(Image.open(out / "real_sheet.png"))
    assert real.shape == (2 * 364 + 4, 5 * 364 + 4, 3)

    # MLflow: a run of this model version holding the same numbers and the files.
    client = MlflowClient(get_settings().tracking_uri)
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.tags["oldphoto.model_version"] == result["model_version"]
    ran_on = f"{'bfloat16' if cpu_has_fast_bf16() else 'float32'} on cpu"  # precision auto
    assert run.data.tags["oldphoto.model_ran_on"] == result["model_ran_on"] == ran_on
    assert f"megapixels/s ({ran_on})" in (out / "table.md").read_text()
    assert "Clean pass-through" in (out / "table.md").read_text()
    assert "| compare, in gray " in (out / "table.md").read_text()
    assert run.data.metrics["model.passthrough.psnr_y"] == pytest.approx(result["passthrough"]["model"]["psnr_y"])
    assert run.data.metrics["model.gray.passthrough.psnr_y"] == pytest.approx(result["passthrough"]["model.gray"]["psnr_y"])
    assert run.data.metrics["model.psnr_y"] == pytest.approx(result["methods"]["model"]["psnr_y"])
    assert run.data.metrics["mask.f1"] == pytest.approx(result["mask"]["f1"])
    assert run.data.metrics["mask.x4.f1"] == pytest.approx(result["mask_at_scale"]["x4"]["f1"])
    assert "4x F1" in (out / "table.md").read_text()
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/table.md", "evaluation/sheet.png", "evaluation/samples.parquet"} <= artifacts

    # A second evaluation on the same set reuses the pairs byte for byte and scores the same.
    shards = {p: p.stat().st_mtime_ns for p in (get_settings().home / "heldout").rglob("*.parquet")}
    again = evaluate(clean=str(clean_folder), config=config.model_copy(update={"compare": None}),
                     out=str(tmp_path / "again"))
    assert again["pairs"] == result["pairs"]
    assert {p: p.stat().st_mtime_ns for p in (get_settings().home / "heldout").rglob("*.parquet")} == shards
    assert again["methods"] == {k: v for k, v in result["methods"].items() if k != "compare"}


def test_registered_model_version_gets_its_evaluation(tmp_path, s3_endpoint, bucket, model):
    """Pairs on S3, the model by registry reference: the version is tagged with its evaluation."""
    for p in _pairs(tmp_path):
        storage.write_bytes_atomic(f"{bucket}/pairs/{p.name}", p.read_bytes())
    tracking = get_settings().tracking_uri
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(tracking)
    bundle = tmp_path / "restorer.pt"
    bundle.write_bytes(open(model, "rb").read())
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(bundle), "restorer")
    client = MlflowClient(tracking)
    client.create_registered_model("eval-test")
    version = client.create_model_version("eval-test", f"{run.info.artifact_uri}/restorer", run.info.run_id)
    client.set_registered_model_alias("eval-test", "candidate", version.version)

    vgg, linear = lpips_weights()
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(linear, tmp_path / "lin.pth")
    config = EvaluateConfig(model="models:/eval-test@candidate", sheet_samples=0,
                            lpips_vgg16=str(tmp_path / "vgg16.pth"), lpips_linear=str(tmp_path / "lin.pth"))
    result = evaluate(pairs=f"{bucket}/pairs", config=config, out=f"{bucket}/evaluation")
    assert storage.exists(f"{bucket}/evaluation/table.md") and not storage.exists(f"{bucket}/evaluation/sheet.png")
    # LPIPS scored for every method: positive for the degraded input, and in the table and MLflow.
    assert result["methods"]["degraded"]["lpips"] > 0 and all("lpips" in m for m in result["methods"].values())
    assert "lpips " in result["table"] and "LPIPS: skipped" not in result["table"]
    tags = client.get_model_version("eval-test", version.version).tags
    assert tags["oldphoto.evaluation_run"] == result["mlflow_run_id"]
    assert float(tags["oldphoto.eval.psnr_y"]) == pytest.approx(result["methods"]["model"]["psnr_y"], abs=0.01)


def _pairs(tmp_path):
    """Shards of 4 synthetic pairs made by the synthesis CLI's flow."""
    from oldphoto.flows.synth import synthesize
    from oldphoto.tasks.synth import SynthConfig

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray((rng.random((64, 80, 3)) * 255).astype(np.uint8)).save(src / f"{i}.png")
    synthesize(str(src), str(tmp_path / "pairs"), SynthConfig(count=4, crop=48, shard_size=2))
    return sorted((tmp_path / "pairs").glob("*.parquet"))


def test_bad_requests_fail_before_any_work(tmp_path, clean_folder, model):
    with pytest.raises(ValueError, match="not both"):
        evaluate(pairs=str(tmp_path), clean=str(clean_folder), config=EvaluateConfig(model=model))
    heldout = get_settings().home / "heldout"
    before = set(heldout.iterdir()) if heldout.exists() else set()
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        evaluate(clean=str(clean_folder), config=EvaluateConfig(model=str(tmp_path / "missing.pt")))
    assert (set(heldout.iterdir()) if heldout.exists() else set()) == before  # nothing synthesized
    with pytest.raises(FileNotFoundError, match="no Parquet shards"):
        evaluate(pairs=str(tmp_path), config=EvaluateConfig(model=model))
    with pytest.raises(ValueError, match="both lpips_vgg16 and lpips_linear"):
        EvaluateConfig(lpips_vgg16=model)
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        evaluate(clean=str(clean_folder), config=EvaluateConfig(model=model, lpips_vgg16=str(tmp_path / "v.pth"),
                                                                 lpips_linear=str(tmp_path / "l.pth")))


def test_cli_prints_the_table_and_where_the_results_are(tmp_path, clean_folder, model, capsys, on_the_cluster):
    code = main(["evaluate", "--model", model, "--clean", str(clean_folder), "--count", "2", "--crop", "40",
                 "--seed", "9", "--out", str(tmp_path / "cli")])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| degraded " in printed and "| model " in printed and "Damage mask of the model" in printed
    assert f"results: {tmp_path / 'cli'}" in printed
    assert len(pq.read_table(io.BytesIO((tmp_path / "cli" / "samples.parquet").read_bytes()))) == 2
    # Without --clean or --pairs: a held-out set from the photographs the package ships.
    assert main(["evaluate", "--model", model, "--count", "2", "--crop", "40", "--out", str(tmp_path / "shipped")]) == 0
    keys = pq.read_table(io.BytesIO((tmp_path / "shipped" / "samples.parquet").read_bytes()))["source_key"].to_pylist()
    assert len(keys) == 2 and all((SAMPLES / key).is_file() for key in keys)
    with pytest.raises(SystemExit):  # argparse: --pairs and --clean exclude each other
        main(["evaluate", "--pairs", str(tmp_path), "--clean", str(clean_folder)])
    assert main(["evaluate", "--model", str(tmp_path / "nope.pt"), "--clean", str(clean_folder)]) == 2
    assert "no such weights file" in capsys.readouterr().err
