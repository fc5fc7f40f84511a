"""Frame preprocessing for CLIP straight from numpy: OpenCV resize, then normalise in torch.

Replaces open_clip's PIL/torchvision transform in the hot path (no PIL round trip, one batched
normalisation). The geometry follows open_clip's ``resize_mode`` so the same checkpoint sees the same
crop either way: ``shortest`` (resize the short side, centre crop), ``longest`` (resize the long side,
pad) or ``squash`` (resize both sides).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
COLOUR_SPACES = ("rgb", "vsh")
HUE_ORIGIN_DEG = 210.0  # the hue channel wraps here: between the cyan and blue objects, far from any colour used
HUE_SATURATION_RAMP = (0.1, 0.3)  # hue fades in over this saturation range: grey pixels have no hue


def rgb_to_vsh(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (value, saturation, hue) in [0, 1], the hue weighted by saturation.

    A shaded object's pattern (value) and outline (saturation) look the same whatever its colour, which
    sits in the flat hue channel. In RGB the same ball's pixels lie along a different direction for each
    colour, and a CLIP trained from scratch never sees the direction of an unseen colour-shape combination.
    """
    value, _ = rgb.max(dim=1)
    chroma = value - rgb.min(dim=1).values
    saturation = torch.where(value > 0, chroma / value.clamp_min(1e-6), torch.zeros_like(value))
    r, g, b = rgb.unbind(dim=1)
    safe = chroma.clamp_min(1e-6)
    hue_sector = torch.where(value == r, ((g - b) / safe) % 6,
                             torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = ((hue_sector * 60.0 - HUE_ORIGIN_DEG) % 360.0) / 360.0
    low, high = HUE_SATURATION_RAMP
    hue = hue * ((saturation - low) / (high - low)).clamp(0.0, 1.0)
    return torch.stack([value, saturation, hue], dim=1)


def as_frame_batch(frames: np.ndarray) -> np.ndarray:
    """Validate camera frames and return them as a (B, H, W, 3) uint8 array.

    Accepts one frame (H, W, 3) or a batch (B, H, W, 3); anything else raises a ``ValueError`` or
    ``TypeError`` naming what was expected.
    """
    if isinstance(frames, torch.Tensor):
        raise TypeError("frames must be a numpy array (H, W, 3) or (B, H, W, 3) uint8 RGB, "
                        "got a torch.Tensor")
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"frames must be a numpy array (H, W, 3) or (B, H, W, 3) uint8 RGB, "
                        f"got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise TypeError(f"frames must be uint8 RGB (0-255), got dtype {frames.dtype}")
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (H, W, 3) or (B, H, W, 3), got {tuple(frames.shape)}")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"frames must not be empty, got shape {tuple(frames.shape)}")
    return frames


@dataclass(frozen=True)
class FrameGeometry:
    """How a source frame maps onto the model input: ``model_xy = source_xy * scale + offset``."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    def to_model(self, u: float, v: float) -> tuple[float, float]:
        """Map a pixel (u = column, v = row) of the source frame to model-input pixels."""
        return u * self.scale_x + self.offset_x, v * self.scale_y + self.offset_y


def frame_geometry(height: int, width: int, size: int, resize_mode: str = "shortest") -> FrameGeometry:
    """Return the source-to-model pixel mapping for a frame of ``height`` x ``width``."""
    if resize_mode == "squash":
        return FrameGeometry(size / width, size / height, 0.0, 0.0)
    if resize_mode == "shortest":
        scale = size / min(height, width)
    elif resize_mode == "longest":
        scale = size / max(height, width)
    else:
        raise ValueError(f"unknown resize_mode {resize_mode!r}; expected shortest, longest or squash")
    new_w, new_h = round(width * scale), round(height * scale)
    # centre crop (shortest) gives negative offsets, centre pad (longest) positive ones
    return FrameGeometry(new_w / width, new_h / height, (size - new_w) / 2.0, (size - new_h) / 2.0)


def _resize_one(frame: np.ndarray, size: int, resize_mode: str, fill: int) -> np.ndarray:
    height, width = frame.shape[:2]
    geo = frame_geometry(height, width, size, resize_mode)
    new_w, new_h = round(width * geo.scale_x), round(height * geo.scale_y)
    # INTER_AREA averages when shrinking (no aliasing from camera-size frames); cubic when enlarging
    interp = cv2.INTER_AREA if new_w < width else cv2.INTER_CUBIC
    resized = frame if (new_w, new_h) == (width, height) else cv2.resize(frame, (new_w, new_h),
                                                                         interpolation=interp)
    if (new_w, new_h) == (size, size):
        return resized
    out = np.full((size, size, 3), fill, dtype=np.uint8)
    x0, y0 = round(geo.offset_x), round(geo.offset_y)
    src_x0, src_y0 = max(0, -x0), max(0, -y0)
    dst_x0, dst_y0 = max(0, x0), max(0, y0)
    w = min(size - dst_x0, new_w - src_x0)
    h = min(size - dst_y0, new_h - src_y0)
    out[dst_y0:dst_y0 + h, dst_x0:dst_x0 + w] = resized[src_y0:src_y0 + h, src_x0:src_x0 + w]
    return out


class FramePreprocessor:
    """Turn (B, H, W, 3) uint8 RGB frames into a normalised (B, 3, S, S) float tensor.

    ``colour_space="vsh"`` gives the model :func:`rgb_to_vsh` channels instead of RGB (then normalised with
    the same mean and std); the camera frames stay RGB.
    """

    def __init__(self, size: int, mean=OPENAI_MEAN, std=OPENAI_STD, resize_mode: str = "shortest",
                 fill_color: int = 0, colour_space: str = "rgb"):
        if resize_mode not in ("shortest", "longest", "squash"):
            raise ValueError(f"unknown resize_mode {resize_mode!r}; expected shortest, longest or squash")
        if colour_space not in COLOUR_SPACES:
            raise ValueError(f"unknown colour_space {colour_space!r}; expected one of {COLOUR_SPACES}")
        self.colour_space = colour_space
        self.size = int(size)
        self.resize_mode = resize_mode
        self.fill_color = int(fill_color)
        # folded into one multiply-add: (x / 255 - mean) / std = x * a + b
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t

    def resize(self, frames: np.ndarray) -> np.ndarray:
        """Resize validated frames to (B, S, S, 3) uint8 (a no-op for frames already S x S)."""
        frames = as_frame_batch(frames)
        if frames.shape[1] == self.size and frames.shape[2] == self.size:
            return frames
        return np.stack([_resize_one(f, self.size, self.resize_mode, self.fill_color) for f in frames])

    def geometry(self, height: int, width: int) -> FrameGeometry:
        """Source-to-model pixel mapping for frames of this size."""
        return frame_geometry(height, width, self.size, self.resize_mode)

    def __call__(self, frames: np.ndarray, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Return the model input for ``frames`` on ``device`` in ``dtype``."""
        resized = np.ascontiguousarray(self.resize(frames))
        # move uint8 (4x smaller) to the device first, then convert and normalise there
        x = torch.from_numpy(resized).to(device, non_blocking=True).permute(0, 3, 1, 2).float()
        if self.colour_space == "vsh":
            x = rgb_to_vsh(x / 255.0) * 255.0
        x = x * self._scale.to(x.device) + self._shift.to(x.device)
        return x.to(dtype).contiguous()
