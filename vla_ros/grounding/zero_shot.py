"""Zero-shot grounding with a :class:`ClipEncoder`: label probabilities, object picking, heatmaps.

* :func:`label_probabilities`: which of some candidate labels the frame shows (global embedding vs
  prompt-ensembled label embeddings, ``softmax(sim / T)``).
* :func:`pick_object`: which of the objects on the table a command means: region embedding of
  each object (patch tokens pooled around its pixel) vs the command embedding. The whole frame holds
  every object, so only the spatial tokens can tell them apart.
* :func:`relevance_heatmap` / :func:`draw_heatmap`: softmax over patches of text-patch similarity,
  and that map drawn over the frame for debugging (``vla/grounding/debug_image``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vla_ros.grounding.encoder import ClipEncoder
from vla_ros.grounding.preprocess import as_frame_batch
from vla_ros.grounding.regions import region_embeddings

LABEL_TEMPLATES = ("a {}", "the {}", "a {} on the table", "a render of a {}")


def _temperature(encoder: ClipEncoder, temperature: float | None) -> float:
    if temperature is None:
        return 1.0 / encoder.logit_scale  # the temperature the model was trained with
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return float(temperature)


def ensembled_text_embeddings(encoder: ClipEncoder, labels: Sequence[str],
                              templates: Sequence[str] = LABEL_TEMPLATES) -> torch.Tensor:
    """Prompt ensembling: mean of the normalised embeddings of each label in every template, (L, D)."""
    if not labels:
        raise ValueError("labels must not be empty")
    if not templates:
        raise ValueError("templates must not be empty")
    texts = [template.format(label) for label in labels for template in templates]
    embedded = encoder.encode_text(texts).view(len(labels), len(templates), -1)
    return F.normalize(embedded.mean(dim=1), dim=-1)


def label_probabilities(encoder: ClipEncoder, frame: np.ndarray, labels: Sequence[str],
                        templates: Sequence[str] = LABEL_TEMPLATES,
                        temperature: float | None = None) -> np.ndarray:
    """Probability of each label for one frame (L,) or a batch (B, L); ``T`` defaults to the model's."""
    frames = as_frame_batch(frame)
    image = encoder.encode_images(frames).global_embedding
    sims = image @ ensembled_text_embeddings(encoder, labels, templates).T
    probs = torch.softmax(sims / _temperature(encoder, temperature), dim=-1).numpy()
    return probs[0] if frame.ndim == 3 else probs


@dataclass
class ObjectChoice:
    """Result of :func:`pick_object`: chosen index, per-object probabilities and similarities."""

    index: int
    probabilities: np.ndarray
    similarities: np.ndarray


def object_pixels_to_model(encoder: ClipEncoder, frame_shape: tuple[int, ...],
                           pixels: np.ndarray) -> torch.Tensor:
    """Map object pixels (K, 2) as (u, v) in the source frame to model-input pixels, (K, 2)."""
    geometry = encoder.frame_geometry(frame_shape[0], frame_shape[1])
    pixels = np.asarray(pixels, dtype=np.float32).reshape(-1, 2)
    mapped = [geometry.to_model(u, v) for u, v in pixels]
    return torch.tensor(mapped, dtype=torch.float32).view(-1, 2)


def region_similarities(encoder: ClipEncoder, frames: np.ndarray, pixels: np.ndarray,
                        texts: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each object's region with a text embedding per frame.

    frames (B, H, W, 3); pixels (B, K, 2) source-frame (u, v); texts (B, D) -> (B, K).
    """
    frames = as_frame_batch(frames)
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 3 or pixels.shape[0] != frames.shape[0] or pixels.shape[2] != 2:
        raise ValueError(f"pixels must be (B, K, 2) for {frames.shape[0]} frames, got {pixels.shape}")
    features = encoder.encode_images(frames)
    geometry = encoder.frame_geometry(frames.shape[1], frames.shape[2])
    scale = torch.tensor([geometry.scale_x, geometry.scale_y])
    offset = torch.tensor([geometry.offset_x, geometry.offset_y])
    model_pixels = torch.from_numpy(pixels) * scale + offset
    regions = region_embeddings(features.patches, model_pixels, encoder.grid_size, encoder.image_size)
    return torch.einsum("bkd,bd->bk", regions, texts.to(regions.dtype))


def pick_object(encoder: ClipEncoder, frame: np.ndarray, command: str, object_pixels: np.ndarray,
                temperature: float | None = None) -> ObjectChoice:
    """Which of the objects at ``object_pixels`` (K, 2) (u, v in the frame) does ``command`` mean."""
    frame = as_frame_batch(frame)
    if frame.shape[0] != 1:
        raise ValueError("pick_object takes one frame; use region_similarities for batches")
    pixels = np.asarray(object_pixels, dtype=np.float32).reshape(1, -1, 2)
    if pixels.shape[1] == 0:
        raise ValueError("object_pixels must hold at least one object")
    sims = region_similarities(encoder, frame, pixels, encoder.encode_text([command]))[0]
    probs = torch.softmax(sims / _temperature(encoder, temperature), dim=-1)
    return ObjectChoice(int(sims.argmax()), probs.numpy(), sims.numpy())


def relevance_heatmap(encoder: ClipEncoder, frame: np.ndarray, text: str,
                      temperature: float | None = None) -> np.ndarray:
    """Softmax over patches of text-patch similarity for one frame, (grid_h, grid_w), sums to 1."""
    frames = as_frame_batch(frame)
    if frames.shape[0] != 1:
        raise ValueError("relevance_heatmap takes one frame")
    patches = encoder.encode_images(frames).patches[0]
    sims = patches @ encoder.encode_text([text])[0]
    heat = torch.softmax(sims / _temperature(encoder, temperature), dim=0)
    return heat.view(*encoder.grid_size).numpy()


def heatmap_to_frame(encoder: ClipEncoder, heatmap: np.ndarray, frame_shape: tuple[int, ...]) -> np.ndarray:
    """Resample a patch-grid heatmap onto the source frame's pixels (undoing resize and crop), (H, W)."""
    height, width = frame_shape[:2]
    size = encoder.image_size
    model_map = cv2.resize(heatmap.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    geo = encoder.frame_geometry(height, width)
    # affine taking model-input pixels to frame pixels; warpAffine samples the inverse
    to_frame = np.array([[1 / geo.scale_x, 0, -geo.offset_x / geo.scale_x],
                         [0, 1 / geo.scale_y, -geo.offset_y / geo.scale_y]], dtype=np.float64)
    return cv2.warpAffine(model_map, to_frame, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def draw_heatmap(frame: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5,
                 encoder: ClipEncoder | None = None) -> np.ndarray:
    """Blend a heatmap (grid or frame sized) over an RGB uint8 frame; returns a new (H, W, 3) uint8 frame.

    A patch-grid map is upsampled to the frame (through the encoder's crop geometry when ``encoder``
    is given, else stretched); values are scaled to the map's own maximum.
    """
    frame = as_frame_batch(frame)
    if frame.shape[0] != 1:
        raise ValueError("draw_heatmap takes one frame")
    frame = frame[0]
    height, width = frame.shape[:2]
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {heatmap.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if heatmap.shape != (height, width):
        if encoder is not None:
            heatmap = heatmap_to_frame(encoder, heatmap, frame.shape)
        else:
            heatmap = cv2.resize(heatmap, (width, height), interpolation=cv2.INTER_LINEAR)
    peak = float(heatmap.max())
    scaled = np.clip(heatmap / peak if peak > 0 else heatmap, 0.0, 1.0)
    colours = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colours = cv2.cvtColor(colours, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(frame, 1.0 - alpha, colours, alpha, 0.0)
