"""Does ``data.augment=default`` earn its place? The recipes trained for the same time, compared on
held-out images.

    .venv/bin/python benchmarks/augment.py [--minutes 10] [--train-images 300] [--val-images 300]
        [--recipes flip default] [--out runs/augment] [--seed 0] [--device auto] [--set KEY=VALUE ...]

The data is frcnn's synthetic generator with settings the recipes were not tuned on
(``HELD_OUT_DATA``: another seed, smaller images of another shape, fewer and larger objects of
milder aspect, none empty, stronger JPEG compression), ``--train-images`` for training and
``--val-images`` other images for evaluation, generated once under ``--out``. Each recipe runs
``frcnn train`` in a subprocess with the same seed, time budget (``--minutes`` of training) and
everything else; only the final evaluation runs (on the whole held-out split, as metrics.json
reports it). Printed: the command line, then one row per recipe: iterations, voc07_map, coco_ap.
``--set`` passes further configuration keys to every run (e.g. ``train.num_workers=2``).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

# The held-out generator's settings, far from the default synthetic data's (docs/data.md).
HELD_OUT_DATA = {
    "seed": 20261207,
    "long_side": [180, 300],
    "min_side_ratio": 0.75,
    "object_size": [24.0, 150.0],
    "max_object_aspect": 2.0,
    "max_objects": 3,
    "empty_fraction": 0.0,
    "jpeg_quality": 50,
}


def run_settings(args: argparse.Namespace) -> list[str]:
    """The ``--set`` assignments every recipe's run shares."""
    synthetic = {**HELD_OUT_DATA, "num_train": args.train_images, "num_val": args.val_images}
    values = [f"data.synthetic.{key}={json.dumps(value)}" for key, value in synthetic.items()]
    # Only the final evaluation: no evaluation takes time from the training budget.
    return [*values, "train.eval_every=1000000000", "train.eval_minutes=null", *args.set]


def train(recipe: str, args: argparse.Namespace) -> dict:
    """Run ``frcnn train`` with ``data.augment=recipe``; its metrics.json."""
    out = Path(args.out) / recipe
    command = [sys.executable, "-m", "frcnn", "train", "--data", f"synthetic:{Path(args.out) / 'data'}",
               "--out", str(out), "--max-minutes", str(args.minutes), "--seed", str(args.seed),
               "--device", args.device, "--set", f"data.augment={recipe}", *run_settings(args)]
    print(f"training {recipe}: {shlex.join(command)}", flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training minutes per recipe")
    parser.add_argument("--train-images", type=int, default=300)
    parser.add_argument("--val-images", type=int, default=300)
    parser.add_argument("--recipes", nargs="+", default=["flip", "default"])
    parser.add_argument("--out", default="runs/augment")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if not 1 <= args.train_images <= 300:
        parser.error("--train-images must be in 1..300")
    results = {recipe: train(recipe, args) for recipe in args.recipes}
    print(f"\n{shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"{args.train_images} training and {args.val_images} held-out images, {args.minutes:g} min per recipe, "
          f"seed {args.seed}")
    print("| recipe | iterations | voc07_map | coco_ap |\n| --- | ---: | ---: | ---: |")
    for recipe, metrics in results.items():
        print(f"| {recipe} | {metrics['iteration']} | {metrics['voc07_map']:.4f} | {metrics['coco_ap']:.4f} |")


if __name__ == "__main__":
    main()
