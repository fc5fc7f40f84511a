"""``vla-ros bench clip``: CLIP encoder images/s and latency per batch size, text cache hit vs miss.

Times :meth:`ClipEncoder.encode_images` on random uint8 frames (preprocessing included) at batch
1, 16 and 64 on the CPU, and on CUDA in fp32 and fp16 when a GPU is present; then
:meth:`ClipEncoder.encode_text` for a cached command (hit) and for fresh strings (miss). JSON::

    {"machine", "rows": [{"name", "device", "p50_ms", "p99_ms", "per_s", ...}], "ratios": {...}}

``per_s`` is images (or texts) per second at the median latency.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vla_ros.reporting import add_json_argument, format_table, machine_description, write_json

BATCH_SIZES = (1, 16, 64)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options: checkpoint, frame size, iterations, threads, --json."""
    parser.add_argument("--checkpoint", default=None,
                        help="CLIP checkpoint folder (default: shipped models/clip)")
    parser.add_argument("--frame-size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"),
                        help="input frame height and width; larger frames include the resize "
                             "(default: 64 64)")
    parser.add_argument("--iterations", type=int, default=50, help="timed calls per row (default: 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first (default: 5)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: 1; on a busy 2-core machine 2 threads oversubscribe)")
    parser.add_argument("--no-cuda", action="store_true", help="skip the GPU rows even when CUDA is present")
    add_json_argument(parser)


def _time_calls(fn, iterations: int, warmup: int, sync=None) -> np.ndarray:
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return np.array(times) * 1000.0


def _row(name: str, device: str, precision: str, items: int, times_ms: np.ndarray, **extra) -> dict:
    p50 = float(np.percentile(times_ms, 50))
    return {"name": name, "device": device, "precision": precision, "batch": items, "p50_ms": p50,
            "p99_ms": float(np.percentile(times_ms, 99)), "per_s": items * 1000.0 / p50, **extra}


def image_rows(encoder, frame_size, iterations: int, warmup: int, sync=None) -> list[dict]:
    """One row per batch size for ``encoder`` (frames made once, outside the timing)."""
    rng = np.random.default_rng(0)
    rows = []
    for batch in BATCH_SIZES:
        frames = rng.integers(0, 256, (batch, *frame_size, 3), dtype=np.uint8)
        times = _time_calls(lambda frames=frames: encoder.encode_images(frames), iterations, warmup, sync)
        rows.append(_row(f"images_batch{batch}", encoder.device.type, encoder.precision, batch, times))
    return rows


def text_rows(encoder, iterations: int, warmup: int, sync=None) -> list[dict]:
    """Cache hit (same command again) vs miss (a new command each call), one string per call."""
    command = ["touch the red cube"]
    encoder.clear_text_cache()
    encoder.encode_text(command)
    hit = _time_calls(lambda: encoder.encode_text(command), iterations, warmup, sync)
    counter = iter(range(10**9))
    # a different number each call: always a miss, same token count as a real command
    miss = _time_calls(lambda: encoder.encode_text([f"touch the red cube {next(counter)}"]),
                       iterations, warmup, sync)
    device = encoder.device.type
    return [_row("text_cache_hit", device, encoder.precision, 1, hit),
            _row("text_cache_miss", device, encoder.precision, 1, miss)]


def run(args: argparse.Namespace) -> int:
    """Benchmark and report."""
    import torch

    from vla_ros.grounding.encoder import ClipEncoder
    from vla_ros.paths import share_path

    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or str(share_path("models", "clip"))
    frame_size = tuple(args.frame_size)
    cpu = ClipEncoder.from_pretrained(checkpoint)
    rows = image_rows(cpu, frame_size, args.iterations, args.warmup)
    rows += text_rows(cpu, args.iterations, args.warmup)
    if torch.cuda.is_available() and not args.no_cuda:
        for precision in ("fp32", "fp16"):
            gpu = ClipEncoder.from_pretrained(checkpoint, device="cuda", precision=precision)
            rows += image_rows(gpu, frame_size, args.iterations, args.warmup, torch.cuda.synchronize)
        rows += text_rows(gpu, args.iterations, args.warmup, torch.cuda.synchronize)
    per_image = {(r["device"], r["precision"], r["batch"]): r["per_s"]
                 for r in rows if r["name"].startswith("images")}
    ratios = {}
    for device, precision in sorted({(d, p) for d, p, _ in per_image}):
        prefix = "" if (device, precision) == ("cpu", "fp32") else f"{device}_{precision}_"
        for batch in BATCH_SIZES[1:]:
            ratios[f"{prefix}batch{batch}/{prefix}batch1"] = per_image[(device, precision, batch)] / \
                per_image[(device, precision, 1)]
    texts = {r["name"]: r["per_s"] for r in rows if r["name"].startswith("text") and r["device"] == "cpu"}
    ratios["text_cache_hit/text_cache_miss"] = texts["text_cache_hit"] / texts["text_cache_miss"]
    if ("cuda", "fp16", 64) in per_image:
        ratios["cuda_fp16_batch64/cpu_batch64"] = (per_image[("cuda", "fp16", 64)]
                                                   / per_image[("cpu", "fp32", 64)])
    report = {"machine": machine_description(), "checkpoint": checkpoint, "frame_size": list(frame_size),
              "threads": torch.get_num_threads(), "rows": rows, "ratios": ratios}
    print(f"{report['machine']}; {report['threads']} torch threads; frames {frame_size[0]}x{frame_size[1]}")
    print(format_table(rows, ["name", "device", "precision", "batch", "p50_ms", "p99_ms", "per_s"]))
    print(format_table([{"ratio": k, "value": v} for k, v in ratios.items()], ["ratio", "value"]))
    write_json(args.json, report)
    return 0
