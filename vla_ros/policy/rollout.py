"""Single-env episodes through the ``Policy`` wrapper (the path ``vla_node`` uses), optionally filmed.

Used for the evaluation's sample videos (command + grounding heatmap drawn in) and as the in-process
reference of the ROS closed-loop parity test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vla_ros.keys import OBS_IMAGE, OBS_PROPRIO


@dataclass
class EpisodeResult:
    """Outcome of one episode."""

    command: str
    success: bool
    steps: int
    frames: list[np.ndarray] = field(default_factory=list)


def attention_overlay(policy, frame: np.ndarray, alpha: float = 0.4) -> np.ndarray | None:
    """``frame`` with the policy's map over patches for its last action blended in; None if it has none.

    The map is the fusion's own (``region_map``: where the CLIP puts the command), kept by an eager torch
    policy (``Policy.last_attention``); ONNX and CUDA-graph runs, and fusions without a map, give None.
    """
    from vla_ros.grounding.zero_shot import draw_heatmap

    attention = getattr(policy, "last_attention", None)
    if attention is None:
        return None
    weights = attention[0].detach().float().cpu().numpy()
    side = int(round(np.sqrt(weights.size)))
    if side * side != weights.size:
        return None
    return draw_heatmap(frame, weights.reshape(side, side), alpha=alpha)


def run_episode(policy, env, seed: int, options: dict | None = None, record: bool = False) -> EpisodeResult:
    """Run one episode of ``env`` (a Gymnasium env with a time limit) driven by ``policy``."""
    from vla_ros.envs.video_layout import compose_frame, title_card
    from vla_ros.grounding.zero_shot import draw_heatmap, relevance_heatmap

    obs, info = env.reset(seed=seed, options=options)
    policy.reset()
    command = info["command"]
    frames, steps = [], 0
    while True:
        action = policy.normalized_action(obs[OBS_IMAGE], command, obs[OBS_PROPRIO])
        if record:
            # the policy's own map over patches where its fusion has one, else CLIP's relevance map
            overlay = attention_overlay(policy, obs[OBS_IMAGE])
            if overlay is None:
                heat = relevance_heatmap(policy.encoder, obs[OBS_IMAGE], command)
                overlay = draw_heatmap(obs[OBS_IMAGE], heat, alpha=0.4, encoder=policy.encoder)
            frame = compose_frame(env.unwrapped.render_view(), overlay, command, f"step {steps}")
            if not frames:
                frames += [title_card(command, 1, frame.shape[1], frame.shape[0], f"seed {seed}")] * 10
            frames.append(frame)
        obs, _, terminated, truncated, info = env.step(action)
        steps += 1
        if terminated or truncated:
            break
    if record:
        status = "success" if info["is_success"] else "no success"
        frames.extend([compose_frame(env.unwrapped.render_view(), obs[OBS_IMAGE], command,
                                     f"{steps} steps - {status}")] * 10)
    return EpisodeResult(command, bool(info["is_success"]), steps, frames)
