"""``vla-ros bench latency``: frame -> action at batch 1, per model and inference backend.

Models: the shipped checkpoint (tiny sim-domain CLIP) and the same policy head on an open_clip
ViT-B-32 with random weights (timing only; no weights are downloaded). Backends: torch eager and
ONNX Runtime on the CPU; on a CUDA machine also torch fp32/fp16 eager, torch fp16 replayed from a CUDA
graph (``+cuda_graph``) and ONNX Runtime's CUDA/TensorRT providers.
Each row times ``Policy.normalized_action`` (preprocessing included; the command's text embedding is
cached, as on the robot) and reports the process's resident memory after it. A ``/text`` row per backend
times what a new command costs once: encoding it with the text tower (nothing cached). A ``/refusal`` row (torch,
checkpoints with a refusal rule) times judging a new command on its first frame (``Policy.judge``: the text gate's
sentence embedding, the CLIP text embedding, the frame's patches and the bars), also once per command.
"""

from __future__ import annotations

import time

import numpy as np

from vla_ros.reporting import add_json_argument


def add_arguments(parser) -> None:
    """Options of ``vla-ros bench latency``."""
    parser.add_argument("--checkpoint", help="policy checkpoint folder (default: the shipped models/policy)")
    parser.add_argument("--iterations", type=int, default=200, help="timed calls per row (default: 200)")
    parser.add_argument("--models", nargs="+", default=["shipped", "vit-b-32"], choices=["shipped", "vit-b-32"])
    parser.add_argument("--compare", metavar="CHECKPOINT",
                        help="also time this checkpoint (rows 'previous/...') in the same run, with p50 ratios "
                        "shipped/previous (e.g. models/ablations/scratch_text)")
    parser.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime CPU threads (default: 2)")
    add_json_argument(parser)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _vit_b32_policy(shipped):
    """The shipped policy's head on a randomly initialised ViT-B-32 (224 px, 49 patches, 512-d)."""
    import copy

    from vla_ros.grounding.encoder import ClipEncoder
    from vla_ros.policy.checkpoint import build_network
    from vla_ros.policy.policy import Policy

    config = copy.deepcopy(shipped.config)
    encoder = ClipEncoder.random_init("ViT-B-32", seed=0, patch_stitch=int(config["network"].get("patch_stitch", 1)))
    config["clip"].update(embed_dim=encoder.embed_dim, num_patches=encoder.num_patches,
                          image_size=encoder.image_size, sha256=None)
    config["network"]["grid_size"] = list(encoder.grid_size)
    network = build_network(config).eval()
    return Policy(network, config, encoder)


def time_policy(policy, iterations: int) -> dict:
    """Latency statistics of ``normalized_action`` at batch 1."""
    rng = np.random.default_rng(0)
    size = policy.encoder.image_size
    frame = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    state = np.zeros(2 * policy.num_joints)
    command = "touch the red cube"
    for _ in range(10):
        policy.normalized_action(frame, command, state)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        policy.normalized_action(frame, command, state)
        times.append((time.perf_counter() - start) * 1e3)
    t = np.asarray(times)
    return {"p50_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)), "per_s": float(1e3 / np.median(t))}


COMMANDS = ("touch the red cube", "push the blue ball to the left", "reach for the crimson orb",
            "move your gripper to the green cylinder", "please go to the small yellow box on the right")


def _time_new_commands(act, iterations: int) -> dict:
    """Latency statistics of ``act(command)`` on ``iterations`` commands (after one warm-up call per command)."""
    for k, command in enumerate(COMMANDS):
        act(command, k)
    times = []
    for i in range(iterations):
        start = time.perf_counter()
        act(COMMANDS[i % len(COMMANDS)], len(COMMANDS) + i)
        times.append((time.perf_counter() - start) * 1e3)
    t = np.asarray(times)
    return {"p50_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)), "per_s": float(1e3 / np.median(t))}


def time_text(policy, iterations: int) -> dict:
    """Latency statistics of encoding a command not seen before (text tower only, batch 1)."""
    def encode(command: str, _: int) -> None:
        if policy.onnx is not None:
            policy.onnx._text_cache.clear()
            policy.onnx.text_embedding(policy.encoder, command)
        else:
            policy.encoder.clear_text_cache()
            policy.encoder.encode_text([command])

    return _time_new_commands(encode, iterations)


def time_refusal(policy, iterations: int) -> dict:
    """Latency statistics of judging a command not seen before on a frame (``Policy.judge``).

    Each call judges a string never seen (a counter appended), so the command misses every cache while the
    rule's reference captions, embedded once, stay cached as on the robot.
    """
    frame = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)

    def judge(command: str, k: int) -> None:
        policy.reset()
        policy.judge(frame, f"{command} {k}")

    return _time_new_commands(judge, iterations)


def run(args) -> int:
    """Time every available model x backend; print the table; write JSON."""
    import tempfile
    from pathlib import Path

    import torch

    from vla_ros.paths import share_path
    from vla_ros.policy.export import export_onnx
    from vla_ros.policy.policy import OnnxGraphs, Policy
    from vla_ros.reporting import format_table, machine_description, write_json

    torch.set_num_threads(args.threads)
    checkpoint = Path(args.checkpoint) if args.checkpoint else share_path("models", "policy")
    shipped = Policy.load(checkpoint)
    cuda = torch.cuda.is_available()
    rows = []
    compare = getattr(args, "compare", None)
    models = list(args.models) + (["previous"] if compare else [])
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            if model == "previous":
                policy = Policy.load(compare)
            else:
                policy = shipped if model == "shipped" else _vit_b32_policy(shipped)
            iterations = args.iterations if model in ("shipped", "previous") else max(20, args.iterations // 4)
            onnx_dir = Path(tmp) / model
            export_onnx(policy, onnx_dir)
            if cuda:
                export_onnx(policy, onnx_dir, fp16=True)
            variants = [("torch", "cpu", "fp32"), ("onnxruntime", "cpu", "fp32")]
            if cuda:
                variants += [("torch", "cuda", "fp32"), ("torch", "cuda", "fp16"), ("torch+cuda_graph", "cuda", "fp16"),
                             ("onnxruntime", "cuda", "fp16")]
            for backend, device, precision in variants:
                policy.onnx, policy.cuda_graph = None, None
                policy.reset()  # a reference frame is held in the backend's own array type
                if backend == "onnxruntime":
                    policy.onnx = OnnxGraphs.load(onnx_dir, device, fp16=precision == "fp16", threads=args.threads)
                else:
                    dtype = torch.float16 if precision == "fp16" else torch.float32
                    policy.network.to(device)
                    policy.encoder.model.to(device, dtype)
                    policy.encoder.device, policy.encoder.dtype, policy.device = torch.device(device), dtype, device
                    policy.encoder.clear_text_cache()
                    if backend == "torch+cuda_graph":
                        policy.enable_cuda_graph()
                row = {"name": f"{model}/{backend}/{precision}", "device": device, **time_policy(policy, iterations),
                       "rss_mb": _rss_mb()}
                text_row = {"name": f"{model}/{backend}/{precision}/text", "device": device,
                            **time_text(policy, max(20, iterations // 4)), "rss_mb": _rss_mb()}
                entries = [row, text_row]
                if backend == "torch" and policy.refusal_rule is not None:
                    entries.append({"name": f"{model}/{backend}/{precision}/refusal", "device": device,
                                    **time_refusal(policy, max(20, iterations // 4)), "rss_mb": _rss_mb()})
                for entry in entries:
                    rows.append(entry)
                    print(f"{entry['name']} ({device}): p50 {entry['p50_ms']:.2f} ms, p99 {entry['p99_ms']:.2f} ms",
                          flush=True)
            policy.onnx, policy.cuda_graph = None, None
    by_name = {r["name"] + "@" + r["device"]: r for r in rows}
    ratios = {}
    for model in models:
        torch_row, ort_row = by_name.get(f"{model}/torch/fp32@cpu"), by_name.get(f"{model}/onnxruntime/fp32@cpu")
        if torch_row and ort_row:
            ratios[f"{model}: torch_cpu/onnxruntime_cpu"] = torch_row["p50_ms"] / ort_row["p50_ms"]
        eager, graphed = by_name.get(f"{model}/torch/fp16@cuda"), by_name.get(f"{model}/torch+cuda_graph/fp16@cuda")
        if eager and graphed:
            ratios[f"{model}: torch_cuda_fp16/cuda_graph_fp16"] = eager["p50_ms"] / graphed["p50_ms"]
    if compare:
        for row in rows:
            if row["name"].startswith("shipped/"):
                before = by_name.get(row["name"].replace("shipped/", "previous/", 1) + "@" + row["device"])
                if before:
                    ratios[f"{row['name']}@{row['device']}: shipped/previous"] = row["p50_ms"] / before["p50_ms"]
    print(format_table(rows, ["name", "device", "p50_ms", "p99_ms", "per_s", "rss_mb"]))
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    write_json(args.json, {"machine": machine_description(), "rows": rows, "ratios": ratios,
                           "checkpoint": str(checkpoint), "previous": compare})
    return 0

