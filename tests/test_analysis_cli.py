"""``frcnn anchors --fit / --suggest`` as users run it, on a tiny synthetic dataset of small objects."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from frcnn.config import RunConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["data.synthetic.num_train=12", "data.synthetic.num_val=2", "data.synthetic.long_side=[64,96]",
        "data.synthetic.object_size=[6,24]", "data.synthetic.max_objects=4", "model.preprocess.min_size=64",
        "model.preprocess.max_size=96"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("anchors")


def frcnn(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CACHE_HOME": str(workdir / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "frcnn", "anchors", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def suggested(workdir: Path) -> dict:
    result = ok(frcnn(workdir, "--fit", "--suggest", "--sample-images", "8", "--json", "--out", "fit",
                      "--set", *TINY))
    return json.loads(result.stdout)


def test_suggest_writes_its_files_and_is_never_worse(workdir: Path, suggested: dict) -> None:
    assert (workdir / "fit" / "anchors_fit.png").read_bytes()[:8] == PNG_MAGIC
    assert json.loads((workdir / "fit" / "anchors_fit.json").read_text()) == suggested
    proposal = suggested["suggested"]
    assert {"scales", "ratios", "coverage", "low_quality_only", "unmatched", "positives_per_gt"} <= set(proposal)
    assert proposal["coverage"] >= suggested["coverage"]
    assert suggested["coverage_bound"] >= proposal["coverage"]
    assert proposal["coverage"] + proposal["low_quality_only"] + proposal["unmatched"] == pytest.approx(1)


def test_the_suggested_coverage_is_what_fit_measures_with_anchors_yaml(workdir: Path, suggested: dict) -> None:
    again = json.loads(ok(frcnn(workdir, "--fit", "--json", "--out", "again", "--config", "fit/anchors.yaml",
                                "--set", *TINY)).stdout)
    for key in ("coverage", "low_quality_only", "unmatched", "positives_per_gt", "best_iou"):
        assert again[key] == suggested["suggested"][key]
    assert again["anchors"]["scales"] == suggested["suggested"]["scales"]


def test_anchors_yaml_changes_model_anchors_only(workdir: Path, suggested: dict) -> None:
    base = RunConfig().to_dict()
    layered = RunConfig().with_yaml_file(workdir / "fit" / "anchors.yaml").to_dict()
    assert layered["model"]["anchors"]["scales"] == suggested["suggested"]["scales"]
    layered["model"]["anchors"] = base["model"]["anchors"]
    assert layered == base


def test_fpn_suggestion_sizes_each_level_and_fit_measures_it(workdir: Path) -> None:
    table = ok(frcnn(workdir, "--fit", "--suggest", "--fpn", "--sample-images", "8", "--out", "fpn",
                     "--set", *TINY)).stdout
    for stride in (4, 8, 16, 32):
        assert f"sizes at stride {stride} (px)" in table
    suggested = json.loads((workdir / "fpn" / "anchors_fit.json").read_text())
    sizes = suggested["suggested"]["sizes"]
    assert len(sizes) == 4 and all(len(level) == 1 for level in sizes)
    again = json.loads(ok(frcnn(workdir, "--fit", "--fpn", "--json", "--out", "fpn_again", "--config",
                                "fpn/anchors.yaml", "--set", *TINY)).stdout)
    assert again["anchors"]["sizes"] == sizes
    assert again["coverage"] == suggested["suggested"]["coverage"]


def test_table_and_drawing_still_work(workdir: Path) -> None:
    table = ok(frcnn(workdir, "--fit", "--out", "table", "--set", *TINY)).stdout
    assert "coverage" in table and "low_quality_only" in table and "coverage bound" in table
    ok(frcnn(workdir, "--out", "one.png", "--set", *TINY))
    assert (workdir / "one.png").read_bytes()[:8] == PNG_MAGIC


def test_suggest_without_fit_is_one_line(workdir: Path) -> None:
    result = frcnn(workdir, "--suggest", "--set", *TINY)
    assert result.returncode == 1
    assert result.stderr.strip() == ("frcnn anchors: error: --suggest, --json and --anchors-per-cell need --fit "
                                     "(--debug shows the traceback)")


def test_a_checkpoint_brings_its_anchors_and_class_names(workdir: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(workdir / "cache"), "OMP_NUM_THREADS": "1"}
    trained = subprocess.run([sys.executable, "-m", "frcnn", "train", "--out", "run", "--set", *TINY,
                              "train.max_iters=1", "train.batch_size=2", "model.anchors.scales=[2,4]"],
                             cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    report = json.loads(ok(frcnn(workdir, "--fit", "--json", "--checkpoint", "run/model_final.pt", "--out", "ckpt",
                                 "--set", *TINY)).stdout)
    assert report["anchors"]["scales"] == [2.0, 4.0]
    ok(frcnn(workdir, "--checkpoint", "run/model_final.pt", "--out", "ckpt.png", "--set", *TINY))
    assert (workdir / "ckpt.png").read_bytes()[:8] == PNG_MAGIC
    refused = frcnn(workdir, "--checkpoint", "run/model_final.pt", "--fpn")
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("frcnn anchors: error: --checkpoint brings its own model: give it without "
                                      "--backbone and --fpn (--debug shows the traceback)")
