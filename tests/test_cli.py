"""The command line, run as users run it (subprocesses), on a tiny synthetic dataset."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from frcnn.cli import main
from frcnn.engine import RESULTS_COLUMNS, load_checkpoint, read_log, read_results
from test_charts import assert_png_not_blank

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["data.synthetic.num_train=8", "data.synthetic.num_val=4", "data.synthetic.long_side=[64,96]",
        "data.synthetic.object_size=[12,40]", "data.synthetic.max_objects=3", "model.preprocess.min_size=64",
        "model.preprocess.max_size=96", "train.batch_size=2", "train.log_every=1", "train.checkpoint_every=2"]
HEADLINE_KEYS = {"voc07_map", "voc_map", "coco_ap", "coco_ap50", "coco_ap75", "rpn_recall@300", "rpn_ar@300"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


def _env(workdir: Path) -> dict[str, str]:
    return {**os.environ, "XDG_CACHE_HOME": str(workdir / "cache"), "OMP_NUM_THREADS": "1"}


def frcnn(workdir: Path, *args: str, launcher: tuple[str, ...] = (sys.executable, "-m", "frcnn"),
          timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the command line in ``workdir``, the synthetic data cached there. On a timeout the whole
    process group goes (torchrun's workers too, which would otherwise outlive the test)."""
    with subprocess.Popen([*launcher, *args], cwd=workdir, env=_env(workdir), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained(workdir: Path) -> Path:
    """A 3-iteration run evaluated at iteration 2 and at the end; the output folder."""
    ok(frcnn(workdir, "train", "--out", "run", "--set", *TINY, "train.max_iters=3", "train.eval_every=2",
             "train.best_metric=val_loss"))
    return workdir / "run"


PICTURES = {"results.png", "PR_curve.png", "F1_curve.png", "confusion_matrix.png", "confusion_matrix_normalized.png",
            "labels.png", "train_batch0.png", "val_batch0_labels.png", "val_batch0_pred.png", "loss.png"}


def test_train_writes_every_promised_file(trained: Path) -> None:
    names = {p.name for p in trained.iterdir()}
    assert {"model_final.pt", "model_best.pt", "checkpoint.pt", "config.yaml", "log.jsonl", "metrics.json",
            "results.csv"} | PICTURES <= names
    assert any(name.startswith("events.out.tfevents.") for name in names)
    for name in PICTURES:
        assert_png_not_blank(trained / name)
    assert (trained / "results.csv").read_text().splitlines()[0] == ",".join(RESULTS_COLUMNS)
    assert [row["iter"] for row in read_results(trained / "results.csv")] == [2, 3]
    assert [record["iter"] for record in read_log(trained / "log.jsonl")] == [1, 2, 3]
    assert {"loss", "rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box", "lr", "images_per_s"} <= set(
        read_log(trained / "log.jsonl")[0])
    assert (trained / "loss.png").read_bytes()[:8] == PNG_MAGIC
    assert HEADLINE_KEYS <= set(json.loads((trained / "metrics.json").read_text()))
    final = load_checkpoint(trained / "model_final.pt")
    precision = final["numerics"]["precision"]
    assert precision in ("fp32", "bf16") and final["numerics"] == {"precision": precision,
                                                                   "memory_format": "contiguous"}
    assert (trained / "config.yaml").read_text().startswith(f"# on cpu: training in {precision} (auto), contiguous, "
                                                            "evaluating in ")
    assert final["class_names"] == ["circle", "cross", "ring", "square", "star", "triangle"]
    assert final["config"]["data"]["synthetic"]["num_train"] == 8


def test_eval_json_matches_the_training_metrics(workdir: Path, trained: Path) -> None:
    result = ok(frcnn(workdir, "eval", "run/model_final.pt", "--json", "--save-detections", "dets.json"))
    metrics = json.loads(result.stdout)
    assert HEADLINE_KEYS <= set(metrics)
    # Another process: the same numbers up to float rounding (MKL's results may depend on alignment).
    written = json.loads((trained / "metrics.json").read_text())
    assert (written.pop("checkpoint"), written.pop("iteration"), written.pop("images")) == ("model_final.pt", 3, 4)
    assert set(metrics) == set(written)
    assert {k: v for k, v in metrics.items() if v is not None} == pytest.approx(
        {k: v for k, v in written.items() if v is not None}, abs=0.02)
    scored = ok(frcnn(workdir, "eval", "--detections", "dets.json", "--data", "synthetic", "--json",
                      "--set", *TINY))
    from_file = json.loads(scored.stdout)
    assert from_file["voc07_map"] == pytest.approx(metrics["voc07_map"])
    assert from_file["coco_ap"] == pytest.approx(metrics["coco_ap"])
    assert "rpn_recall@300" not in from_file


def test_eval_runs_in_the_precision_asked_for(workdir: Path, trained: Path) -> None:
    found = {}
    for precision in ("fp32", "bf16"):
        result = ok(frcnn(workdir, "eval", "run/model_final.pt", "--json", "--precision", precision, "--device", "cpu"))
        assert f"evaluating on cpu in {precision}, " in result.stderr
        found[precision] = json.loads(result.stdout)
    assert found["bf16"]["rpn_recall@300"] == pytest.approx(found["fp32"]["rpn_recall@300"], abs=0.1)


def test_eval_of_the_best_checkpoint_reproduces_its_row_and_draws_the_plots(workdir: Path, trained: Path) -> None:
    rows = read_results(trained / "results.csv")
    best_row = min(rows, key=lambda row: row["val_loss"])
    best = load_checkpoint(trained / "model_best.pt")["best"]
    assert best == {"metric": "val_loss", "value": best_row["val_loss"], "iteration": best_row["iter"]}
    result = ok(frcnn(workdir, "eval", "run/model_best.pt", "--json", "--plots", "plots"))
    metrics = json.loads(result.stdout)
    for column in ("voc07_map", "voc_map", "coco_ap", "coco_ap50", "coco_ap75", "rpn_recall@300"):
        assert metrics[column] == pytest.approx(best_row[column], abs=0.02), column
    for name in ("PR_curve.png", "F1_curve.png", "confusion_matrix.png", "confusion_matrix_normalized.png"):
        assert_png_not_blank(workdir / "plots" / name)


def test_ctrl_c_leaves_a_checkpoint_and_the_resumed_run_equals_a_straight_one(workdir: Path) -> None:
    args = ["--set", *TINY, "train.max_iters=16", "train.eval_every=6", "train.checkpoint_every=100"]
    ok(frcnn(workdir, "train", "--out", "straight", *args))
    running = subprocess.Popen([sys.executable, "-m", "frcnn", "train", "--out", "stopped", *args], cwd=workdir,
                               env=_env(workdir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = workdir / "stopped" / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 3):
        assert running.poll() is None and time.monotonic() < deadline, "the run ended before it could be stopped"
        time.sleep(0.01)
    running.send_signal(signal.SIGINT)
    _, stderr = running.communicate(timeout=120)
    assert running.returncode == 130, stderr[-3000:]
    told = [line for line in stderr.splitlines() if "stopped by" in line]
    assert len(told) == 1
    stopped_at = re.fullmatch(r"frcnn train: stopped by SIGINT after iteration (\d+); wrote "
                              r"stopped/checkpoint\.pt \(--resume continues the run\)", told[0])
    assert stopped_at and 3 <= int(stopped_at[1]) < 16
    assert load_checkpoint(workdir / "stopped" / "checkpoint.pt")["progress"]["iteration"] == int(stopped_at[1])
    ok(frcnn(workdir, "train", "--out", "stopped", "--resume"))
    straight, resumed = (
        load_checkpoint(workdir / name / "model_final.pt")["model"] for name in ("straight", "stopped")
    )
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name
    straight, resumed = (read_results(workdir / name / "results.csv") for name in ("straight", "stopped"))
    assert [row["iter"] for row in resumed] == [6, 12, 16]
    for a, b in zip(straight, resumed):
        assert {k: v for k, v in a.items() if k != "elapsed_s"} == {k: v for k, v in b.items() if k != "elapsed_s"}


def test_detect_draws_every_image_and_writes_json(workdir: Path, trained: Path) -> None:
    images = sorted((workdir / "cache").rglob("JPEGImages/val_*.jpg"))[:2]
    ok(frcnn(workdir, "detect", "run/model_final.pt", *map(str, images), "--out", "seen",
             "--score-threshold", "0.0", "--save-images"))
    for image in images:
        assert (workdir / "seen" / f"{image.stem}.png").read_bytes()[:8] == PNG_MAGIC
    listed = json.loads((workdir / "seen" / "images.json").read_text())
    assert [entry["file_name"] for entry in listed["images"]] == list(map(str, images))
    for detection in json.loads((workdir / "seen" / "detections.json").read_text()):
        assert set(detection) == {"image_id", "category_id", "bbox", "score"} and len(detection["bbox"]) == 4


def test_anchors_draws_the_targets_of_an_image(workdir: Path) -> None:
    result = ok(frcnn(workdir, "anchors", "--index", "1", "--out", "anchors.png", "--set", *TINY))
    assert (workdir / "anchors.png").read_bytes()[:8] == PNG_MAGIC
    assert "positive anchors" in result.stderr and "sampled negatives" in result.stderr


def test_resume_continues_from_the_checkpoint(workdir: Path) -> None:
    ok(frcnn(workdir, "train", "--out", "resumed", "--no-eval", "--set", *TINY, "train.max_iters=2"))
    ok(frcnn(workdir, "train", "--out", "resumed", "--no-eval", "--resume", "--set", "train.max_iters=4",
             launcher=(str(Path(sys.executable).parent / "frcnn"),)))
    assert [record["iter"] for record in read_log(workdir / "resumed" / "log.jsonl")] == [1, 2, 3, 4]
    assert load_checkpoint(workdir / "resumed" / "model_final.pt")["progress"]["iteration"] == 4


def test_two_gloo_processes_train_together(workdir: Path) -> None:
    ok(frcnn(workdir, "--standalone", "--nproc_per_node", "2", "-m", "frcnn", "train", "--out", "ddp",
             "--no-eval", "--device", "cpu", "--set", *TINY, "train.max_iters=2",
             launcher=(sys.executable, "-m", "torch.distributed.run")))
    checkpoint = load_checkpoint(workdir / "ddp" / "checkpoint.pt")
    assert checkpoint["progress"]["iteration"] == 2 and len(checkpoint["rng"]) == 2
    assert [record["iter"] for record in read_log(workdir / "ddp" / "log.jsonl")] == [1, 2]


@pytest.mark.parametrize("args, message", [
    (["eval", "missing.pt"], "checkpoint missing.pt does not exist"),
    (["train", "--data", "voc:/nonexistent", "--no-eval"], "/nonexistent"),
    (["train", "--set", "train.lrr=1"], "unknown config key 'train.lrr'"),
    (["train", "--set", "train.amp=true"], "train.amp is no longer a configuration key: use train.precision instead"),
    (["train", "--device", "cpu", "--set", "train.precision=fp16"], "precision fp16 needs a CUDA device, not cpu"),
    (["detect", "model.onnx", "image.png", "--precision", "bf16"],
     "--precision bf16 is for checkpoints: model.onnx, an exported model, computes in fp32"),
])
def test_errors_are_one_line_unless_debug(workdir: Path, args: list[str], message: str) -> None:
    result = frcnn(workdir, *args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"frcnn {args[0]}: error:") and message in lines[0]
    assert "Traceback" in frcnn(workdir, *args, "--debug").stderr


@pytest.mark.parametrize("command", ["train", "eval", "detect", "anchors", "export"])
def test_every_command_explains_its_options(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_status:
        main([command, "--help"])
    assert exit_status.value.code == 0
    options_text = capsys.readouterr().out.split("options:")[1]
    blocks = [block for block in re.split(r"\n(?=  -)", options_text) if block.strip().startswith("--")]
    assert len(blocks) >= 3
    for block in blocks:
        assert "(default: " in " ".join(block.split()), block
