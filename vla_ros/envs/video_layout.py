"""The demo video's layout: the viewing camera large, the policy's view inset, the caption below the scene.

One layout serves ``vla-ros demo``, ``vla-ros eval --video`` and ``python -m vla_ros.envs.video``::

    +--------------------------------------+
    | +--------+                           |
    | | policy |   viewing camera          |   the inset: the policy's own camera frame, with the
    | | view   |   (640x480)               |   grounding heatmap blended in when there is one
    | +--------+                           |
    +--------------------------------------+
    | command, in large type               |   the caption band: outside the scene, never over it
    | status / outcome                     |
    +--------------------------------------+

:func:`title_card` opens each episode; :func:`contact_sheet` puts the first and last frame of every episode
on one image with its outcome (the README shows the demo's).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import cv2
import numpy as np

CAPTION_HEIGHT = 96  # 480 + 96 = 576: a multiple of 16, as H.264 encoders want
INSET_FRACTION = 0.3  # inset side as a share of the view's height
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_WHITE, _GREY, _GREEN, _RED = (255, 255, 255), (190, 190, 190), (90, 220, 110), (240, 90, 80)
_BAND = (28, 30, 34)


def outcome_colour(status: str | None) -> tuple[int, int, int]:
    """Green for a success, red for a failure or refusal, grey otherwise."""
    text = (status or "").lower()
    if any(word in text for word in ("no success", "fail", "refused", "timed out")):
        return _RED
    return _GREEN if "success" in text else _GREY


def _put_lines(image: np.ndarray, lines: Sequence[str], origin: tuple[int, int], scale: float,
               colour: tuple[int, int, int], thickness: int, spacing: int) -> None:
    x, y = origin
    for row, line in enumerate(lines):
        cv2.putText(image, line, (x, y + row * spacing), _FONT, scale, colour, thickness, cv2.LINE_AA)


def _wrap(text: str, width_px: int, scale: float) -> list[str]:
    char_px = max(1, cv2.getTextSize("M", _FONT, scale, 2)[0][0] * 0.8)
    return textwrap.wrap(text, max(10, int(width_px / char_px))) or [""]


def compose_frame(view: np.ndarray, policy_view: np.ndarray | None, command: str,
                  status: str | None = None) -> np.ndarray:
    """One video frame: ``view`` (H, W, 3) with ``policy_view`` inset top left, the caption band below.

    ``policy_view`` is the policy's camera frame (any size; a heatmap already blended in, or not); None
    leaves the view whole. Returns (H + CAPTION_HEIGHT, W, 3) uint8 RGB.
    """
    view = np.ascontiguousarray(view, dtype=np.uint8)
    if view.ndim != 3 or view.shape[2] != 3:
        raise ValueError(f"view must be (H, W, 3) RGB, got shape {view.shape}")
    height, width = view.shape[:2]
    canvas = np.empty((height + CAPTION_HEIGHT, width, 3), np.uint8)
    canvas[:height] = view
    canvas[height:] = _BAND
    if policy_view is not None:
        side = max(32, int(height * INSET_FRACTION))
        inset = cv2.resize(np.ascontiguousarray(policy_view, dtype=np.uint8), (side, side),
                           interpolation=cv2.INTER_NEAREST)
        x0 = y0 = 10
        canvas[y0 - 2:y0 + side + 2, x0 - 2:x0 + side + 2] = _WHITE  # a frame around the inset
        canvas[y0:y0 + side, x0:x0 + side] = inset
        cv2.putText(canvas, "policy view", (x0 + 4, y0 + side - 6), _FONT, 0.4, _WHITE, 1, cv2.LINE_AA)
    lines = _wrap(f'"{command}"', width - 190, 0.8)[:2]  # clear of the status at the right
    _put_lines(canvas, lines, (12, height + 30), 0.8, _WHITE, 2, 28)
    if status:
        size = cv2.getTextSize(status, _FONT, 0.6, 2)[0]
        cv2.putText(canvas, status, (width - size[0] - 12, height + CAPTION_HEIGHT - 12), _FONT, 0.6,
                    outcome_colour(status), 2, cv2.LINE_AA)
    return canvas


def title_card(command: str, episode: int, width: int = 640, height: int = 480 + CAPTION_HEIGHT,
               subtitle: str | None = None) -> np.ndarray:
    """A plain card that opens an episode: its number, the command, and an optional subtitle."""
    card = np.full((height, width, 3), _BAND, np.uint8)
    _put_lines(card, [f"Episode {episode}"], (40, height // 2 - 50), 1.0, _GREY, 2, 40)
    _put_lines(card, _wrap(f'"{command}"', width - 80, 1.1), (40, height // 2 + 10), 1.1, _WHITE, 2, 44)
    if subtitle:
        _put_lines(card, [subtitle], (40, height - 40), 0.6, _GREY, 1, 24)
    return card


def contact_sheet(episodes: Sequence[tuple[np.ndarray, np.ndarray, str]], thumb_width: int = 320) -> np.ndarray:
    """First and last frame of each episode side by side, one row per episode, with its caption.

    ``episodes``: (first frame, last frame, caption); the caption's colour follows its outcome.
    """
    if not episodes:
        raise ValueError("a contact sheet needs at least one episode")
    rows = []
    for first, last, caption in episodes:
        thumbs = []
        for frame in (first, last):
            h, w = frame.shape[:2]
            thumbs.append(cv2.resize(np.ascontiguousarray(frame, dtype=np.uint8),
                                     (thumb_width, max(1, round(h * thumb_width / w))), interpolation=cv2.INTER_AREA))
        pair = np.concatenate([thumbs[0], np.full((thumbs[0].shape[0], 6, 3), _BAND, np.uint8), thumbs[1]], axis=1)
        band = np.full((34, pair.shape[1], 3), _BAND, np.uint8)
        cv2.putText(band, caption[:90], (8, 23), _FONT, 0.55, outcome_colour(caption), 1, cv2.LINE_AA)
        rows.append(np.concatenate([band, pair, np.full((6, pair.shape[1], 3), _BAND, np.uint8)], axis=0))
    return np.concatenate(rows, axis=0)
