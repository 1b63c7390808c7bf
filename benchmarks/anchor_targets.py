"""RPN anchor targets: frcnn against torchvision's per-image path, and peak memory on an FPN case.

    .venv/bin/python benchmarks/anchor_targets.py [--repeats 24] [--skip-memory] [--warm-heap] [--profile] [--stages]

Both sides run in this process with 2 threads on the same anchors and boxes; medians of
interleaved runs. frcnn runs the torchvision preset, the same work as torchvision's
box_iou + Matcher + BalancedPositiveNegativeSampler + BoxCoder.encode, on three anchor forms:
an ``AnchorGrid`` ("grid"), the same anchors as a plain (N, 4) tensor ("plain", recognised as the
grid) and that tensor shuffled ("shuffled", which no grid rebuilds: the box-matching path).

``--warm-heap`` reruns the table with glibc's malloc held where a long-running process ends up
(mmap threshold at its 32 MiB dynamic maximum, no trimming): in a fresh process many of both
sides' multi-megabyte temporaries are fresh pages, and the page faults cost torchvision's path
up to half its time, an amount that depends on what ran before.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

# OpenMP reads this when torch loads. Both sides are chains of short parallel ops, for which
# sleeping between ops (PASSIVE, which frcnn's import picks when nothing is set) would mostly time
# thread wake-ups; run with OMP_WAIT_POLICY=PASSIVE to see that case.
os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import torch
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import box_iou

from frcnn import AnchorTargetConfig, assign_anchor_targets, concat_anchors, generate_anchors, grid_anchors
from frcnn.anchor_targets.checks import check_inputs
from frcnn.anchor_targets.geometry import anchor_codes, as_grids, grid_levels
from frcnn.anchor_targets.grid_matching import match_grids
from frcnn.anchor_targets.recognition import recognise_grids
from frcnn.anchor_targets.targets import finish_targets
from frcnn.sampling import random_keys

IMAGE_HEIGHT, IMAGE_WIDTH, STRIDE = 600, 1000, 16
WARM_HEAP = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=67108864"


def random_gt(batch: int, num_gt: int, height: float, width: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    size = torch.rand(batch, num_gt, 2, generator=generator) * torch.tensor([width, height]) * 0.4 + 8
    corner = torch.rand(batch, num_gt, 2, generator=generator) * (torch.tensor([width, height]) - size)
    labels = torch.ones(batch, num_gt, 1)
    return torch.cat([corner, corner + size, labels], dim=-1)


def torchvision_targets(anchors: torch.Tensor, gt: torch.Tensor, matcher, sampler, coder):
    """torchvision's RPN target path (RegionProposalNetwork.assign_targets_to_anchors + sampling)."""
    labels, targets = [], []
    for boxes in gt[..., :4]:
        matched = matcher(box_iou(boxes, anchors))
        image_labels = (matched >= 0).to(torch.float32)
        image_labels[matched == matcher.BELOW_LOW_THRESHOLD] = 0.0
        image_labels[matched == matcher.BETWEEN_THRESHOLDS] = -1.0
        labels.append(image_labels)
        targets.append(coder.encode_single(boxes[matched.clamp(min=0)], anchors))
    sampled_pos, sampled_neg = sampler(labels)
    return labels, targets, sampled_pos, sampled_neg


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def speed_table(repeats: int) -> None:
    height, width = -(-IMAGE_HEIGHT // STRIDE), -(-IMAGE_WIDTH // STRIDE)
    grid = grid_anchors(generate_anchors(), height, width, STRIDE)
    anchors = grid.boxes
    matcher = det_utils.Matcher(0.7, 0.3, allow_low_quality_matches=True)
    sampler = det_utils.BalancedPositiveNegativeSampler(256, 0.5)
    coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    preset = AnchorTargetConfig.preset("torchvision")
    print(f"{IMAGE_HEIGHT}x{IMAGE_WIDTH} image, {height}x{width} cells x 9 = {anchors.shape[0]} anchors, "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', 'unset')}; median ms per call over {repeats} runs")
    print("| gts | B | torchvision | grid | speed-up | plain | speed-up | shuffled | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    shuffled = anchors[torch.randperm(anchors.shape[0], generator=torch.Generator().manual_seed(0))]
    for num_gt in (20, 100):
        for batch in (1, 8, 16):
            gt = random_gt(batch, num_gt, IMAGE_HEIGHT, IMAGE_WIDTH, seed=batch * 1000 + num_gt)
            num_boxes = torch.full((batch,), num_gt)
            im_info = torch.tensor([[IMAGE_HEIGHT, IMAGE_WIDTH, 1.0]]).repeat(batch, 1)
            runs = {
                "torchvision": lambda: torchvision_targets(anchors, gt, matcher, sampler, coder),
                "grid": lambda: assign_anchor_targets(grid, gt, num_boxes, im_info, preset),
                "plain": lambda: assign_anchor_targets(anchors, gt, num_boxes, im_info, preset),
                "shuffled": lambda: assign_anchor_targets(shuffled, gt, num_boxes, im_info, preset),
            }
            for fn in runs.values():  # warm-up
                fn()
            samples = {name: [] for name in runs}
            for _ in range(3):  # interleaved rounds, so that machine noise hits every side alike
                for name, fn in runs.items():
                    samples[name].append(median_ms(fn, max(1, repeats // 3)))
            ms = {name: statistics.median(values) for name, values in samples.items()}
            cells = " | ".join(
                f"{ms[name]:.2f} | {ms['torchvision'] / ms[name]:.1f}x" for name in ("grid", "plain", "shuffled")
            )
            print(f"| {num_gt} | {batch} | {ms['torchvision']:.2f} | {cells} |")


def profile_call(repeats: int) -> None:
    """Where one frcnn call (torchvision preset, B = 8, 20 gts) spends its time, op by op."""
    grid = grid_anchors(generate_anchors(), -(-IMAGE_HEIGHT // STRIDE), -(-IMAGE_WIDTH // STRIDE), STRIDE)
    gt = random_gt(8, 20, IMAGE_HEIGHT, IMAGE_WIDTH, seed=8020)
    inputs = (grid, gt, torch.full((8,), 20), torch.tensor([[IMAGE_HEIGHT, IMAGE_WIDTH, 1.0]]).repeat(8, 1),
              AnchorTargetConfig.preset("torchvision"))
    for _ in range(3):
        assign_anchor_targets(*inputs)
    with torch.profiler.profile() as profiler:
        for _ in range(repeats):
            assign_anchor_targets(*inputs)
    print(f"frcnn (torchvision preset), B = 8, 20 gts: self CPU time of {repeats} calls by op "
          f"(the compiled kernels are not aten ops and do not show)")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def fastest_ms(fn, repeats: int) -> float:
    for _ in range(5):  # warm-up
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def stage_times(repeats: int) -> None:
    """Each part of one frcnn call (torchvision preset, grid, B = 8, 20 gts) timed alone: the
    fastest of ``repeats`` calls, which machine noise disturbs least."""
    grid = grid_anchors(generate_anchors(), -(-IMAGE_HEIGHT // STRIDE), -(-IMAGE_WIDTH // STRIDE), STRIDE)
    gt_boxes = random_gt(8, 20, IMAGE_HEIGHT, IMAGE_WIDTH, seed=8020)
    num_boxes = torch.full((8,), 20)
    im_info = torch.tensor([[IMAGE_HEIGHT, IMAGE_WIDTH, 1.0]]).repeat(8, 1)
    config = AnchorTargetConfig.preset("torchvision")
    gt, valid, has_gt = gt_boxes[..., :4].contiguous(), torch.ones(8, 20, dtype=torch.bool), num_boxes > 0
    levels = grid_levels(as_grids(grid), gt.dtype, 0.0)
    match = match_grids(levels, gt, valid, im_info, config, 0.0)
    keys = random_keys(match.max_iou.shape)
    codes, scales = anchor_codes(grid, False, gt.dtype)
    plain = grid.boxes.clone()
    stages = {
        "whole call (assign_anchor_targets)": lambda: assign_anchor_targets(grid, gt_boxes, num_boxes, im_info, config),
        "input checks": lambda: check_inputs(grid, gt_boxes, num_boxes, im_info, None, None),
        "matching (match_grids)": lambda: match_grids(levels, gt, valid, im_info, config, 0.0),
        "sampling keys (random_keys)": lambda: random_keys(match.max_iou.shape),
        "labels to targets (finish_targets)": lambda: finish_targets(match, has_gt, gt, codes, scales, config, None,
                                                                     keys),
        "plain tensor recognised (recognise_grids)": lambda: recognise_grids(plain, gt.dtype, 0.0),
    }
    print(f"frcnn, torchvision preset, grid, B = 8, 20 gts: fastest of {repeats} calls of each part alone (ms)")
    for name, fn in stages.items():
        print(f"| {name} | {fastest_ms(fn, repeats):.3f} |")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss_mb() -> float:
    """Reset the kernel's peak-RSS mark (Linux) and return the current RSS in MB."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return _status_mb("VmRSS")


FPN_FORMS = ("grid", "plain", "shuffled")


def fpn_memory_child(form: str) -> None:
    """Run in a fresh process: print the extra peak RSS (MB) of one FPN-sized assignment, the
    anchors given as ``form`` (one of FPN_FORMS)."""
    torch.set_num_threads(2)
    height, width, batch, num_gt = 800, 1333, 2, 500
    levels = [grid_anchors(generate_anchors(stride, (0.5, 1, 2), (8,)), -(-height // stride), -(-width // stride),
                           stride) for stride in (4, 8, 16, 32, 64)]
    gt = random_gt(batch, num_gt, height, width, seed=5)
    num_boxes = torch.full((batch,), num_gt)
    im_info = torch.tensor([[height, width, 1.0]]).repeat(batch, 1)
    config = AnchorTargetConfig.preset("torchvision")
    anchors = {"grid": levels, "plain": concat_anchors(levels)}.get(form)
    if anchors is None:
        plain = concat_anchors(levels)
        anchors = plain[torch.randperm(plain.shape[0], generator=torch.Generator().manual_seed(0))]
    num_anchors = sum(level.num_anchors for level in levels)
    before = _reset_peak_rss_mb()
    start = time.perf_counter()
    assign_anchor_targets(anchors, gt, num_boxes, im_info, config)
    elapsed = time.perf_counter() - start
    peak = _status_mb("VmHWM")
    one_shot_gb = batch * num_anchors * num_gt * 4 / 1e9
    path = "PyTorch-op twin" if os.environ.get("FRCNN_NATIVE") == "0" else "compiled kernels"
    print(f"FPN case, {form} ({path}): {height}x{width}, strides 4..64, 3 ratios = {num_anchors} anchors, "
          f"{num_gt} gts, B = {batch}: extra peak memory {peak - before:.0f} MB (budget "
          f"{config.working_set_bytes / 2**20:.0f} MB working set; one (B, N, K) float32 tensor alone is "
          f"{one_shot_gb:.2f} GB), {elapsed * 1e3:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=24, help="timed runs per case (default 24)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the FPN peak-memory case")
    parser.add_argument("--warm-heap", action="store_true",
                        help="also run the table with malloc in a long-running process's steady state")
    parser.add_argument("--profile", action="store_true",
                        help="only print where one frcnn call at B = 8, 20 gts spends its time, op by op")
    parser.add_argument("--stages", action="store_true",
                        help="only print the time of each part of one frcnn call at B = 8, 20 gts")
    parser.add_argument("--memory-child", choices=FPN_FORMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        fpn_memory_child(args.memory_child)
        return
    torch.set_num_threads(2)
    if args.profile:
        profile_call(args.repeats)
        return
    if args.stages:
        stage_times(max(args.repeats, 100))
        return
    if args.warm_heap:
        command = [sys.executable, __file__, "--repeats", str(args.repeats), "--skip-memory"]
        subprocess.run(command, check=True, env={**os.environ, "GLIBC_TUNABLES": WARM_HEAP})
    speed_table(args.repeats)
    if not args.skip_memory:
        for form in FPN_FORMS:
            subprocess.run([sys.executable, __file__, "--memory-child", form], check=True)
        twin = {**os.environ, "FRCNN_NATIVE": "0"}
        for form in ("plain", "shuffled"):
            subprocess.run([sys.executable, __file__, "--memory-child", form], check=True, env=twin)


if __name__ == "__main__":
    main()
