"""The grounding debug image: the camera frame with the command and per-object scores drawn on it."""

from __future__ import annotations

import cv2
import numpy as np

# Policy frames are small (64-224 px); text drawn at that size is unreadable, so upscale first.
_MIN_WIDTH = 320


def draw_grounding(frame_rgb: np.ndarray, command: str, scores: dict[str, float] | None = None) -> np.ndarray:
    """Return a new RGB image: ``frame_rgb`` (upscaled if small) with ``command`` and ``scores`` drawn."""
    frame = np.ascontiguousarray(frame_rgb)
    height, width = frame.shape[:2]
    factor = max(1, int(np.ceil(_MIN_WIDTH / max(width, 1))))
    canvas = (
        cv2.resize(frame, (width * factor, height * factor), interpolation=cv2.INTER_NEAREST)
        if factor > 1
        else frame.copy()
    )
    lines = [command]
    if scores:
        best = max(scores, key=scores.get)
        lines += [f"{'>' if name == best else ' '} {name}: {value:.2f}" for name, value in scores.items()]
    for row, text in enumerate(lines):
        origin = (6, 18 + 18 * row)
        # Dark outline under light text: readable on any background.
        cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1, cv2.LINE_AA)
    return canvas


def grounding_overlay(policy, frame_rgb: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``frame_rgb`` with the policy's grounding map blended in when it has one, else unchanged.

    See :func:`vla_ros.policy.rollout.attention_overlay`.
    """
    from vla_ros.policy.rollout import attention_overlay

    overlay = attention_overlay(policy, frame_rgb, alpha)
    return frame_rgb if overlay is None else overlay
