"""``vla-ros export``: ONNX export of a policy checkpoint (fp32 and fp16) with parity checks.

Writes ``<checkpoint>/onnx/`` (or ``--out``): ``policy.onnx`` (image tower + fusion + actor, dynamic batch),
``text_encoder.onnx``, their ``_fp16`` variants and ``onnx_metadata.json``; then compares ONNX Runtime
with PyTorch over simulator frames (max absolute differences of embeddings and actions) and fails
(exit code 1) when actions differ beyond tolerance.
"""

from __future__ import annotations

from vla_ros.reporting import add_json_argument


def add_arguments(parser) -> None:
    """Options of ``vla-ros export``."""
    parser.add_argument("--checkpoint", help="policy checkpoint folder (default: the shipped models/policy)")
    parser.add_argument("--out", help="output folder (default: <checkpoint>/onnx, where the onnxruntime backend "
                        "looks)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "fp16"], choices=["fp32", "fp16"])
    parser.add_argument("--samples", type=int, default=32, help="simulator frames for the parity check")
    parser.add_argument("--seed", type=int, default=0, help="seed of the parity scenes")
    add_json_argument(parser)


def sample_inputs(policy, count: int, seed: int):
    """Frames, commands and joint states from simulator episodes (a few steps in, so the arm varies)."""
    import gymnasium as gym
    import numpy as np

    import vla_ros.envs  # noqa: F401
    from vla_ros.policy.envs import env_id

    env = gym.make(env_id(policy.config["task"]), **policy.config.get("env", {}))
    rng = np.random.default_rng(seed)
    frames, commands, states = [], [], []
    try:
        for i in range(count):
            obs, info = env.reset(seed=seed + i)
            for _ in range(int(rng.integers(0, 6))):
                obs, _, _, _, info = env.step(env.action_space.sample())
            frames.append(obs["image"])
            commands.append(info["command"])
            states.append(obs["proprio"].astype(np.float64))
    finally:
        env.close()
    return np.stack(frames), commands, np.stack(states)


def run(args) -> int:
    """Export and check parity; print the table; write JSON."""
    from pathlib import Path

    from vla_ros.paths import share_path
    from vla_ros.policy.export import export_onnx, parity_report
    from vla_ros.policy.policy import ONNX_DIR, Policy
    from vla_ros.reporting import format_table, write_json

    checkpoint = Path(args.checkpoint) if args.checkpoint else share_path("models", "policy")
    out = Path(args.out) if args.out else checkpoint / ONNX_DIR
    policy = Policy.load(checkpoint)
    frames, commands, states = sample_inputs(policy, args.samples, args.seed)
    rows = []
    for precision in args.precision:
        files = export_onnx(policy, out, fp16=precision == "fp16")
        row = parity_report(policy, files, frames, commands, states, fp16=precision == "fp16")
        row["file"] = str(files.policy)
        rows.append(row)
    print(format_table(rows, ["precision", "samples", "max_abs_diff_image_embedding", "max_abs_diff_text_embedding",
                              "max_abs_diff_action", "actions_match", "file"]))
    write_json(args.json, {"checkpoint": str(checkpoint), "out": str(out), "parity": rows})
    return 0 if all(r["actions_match"] and r["same_direction"] for r in rows) else 1
