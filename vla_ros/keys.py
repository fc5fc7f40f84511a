"""Key names and encodings shared by the simulator, the policy and the ROS nodes.

The command travels inside Gymnasium observations as a fixed-size array of UTF-8 bytes so that
vectorised envs, SB3 buffers and ``check_env`` all see a plain ``Box``; the text encoder decodes it
back to a string (and caches its embedding, since commands repeat).
"""

from __future__ import annotations

import numpy as np

# Environment observation keys (Dict observation space).
OBS_IMAGE = "image"  # uint8 (H, W, 3) RGB camera frame
OBS_COMMAND = "command"  # uint8 (COMMAND_MAX_BYTES,) UTF-8 bytes, zero padded
OBS_PROPRIO = "proprio"  # float32 (2 * n_joints,): joint positions (rad) then velocities (rad/s)

# Observation keys after the frozen CLIP towers have run (policy training / inference).
FEAT_IMAGE_GLOBAL = "image_embedding"  # float32 (D,)
FEAT_IMAGE_PATCHES = "image_patches"  # float32 (P, D)
FEAT_TEXT = "text_embedding"  # float32 (D,)
# Patch tokens of the episode's first frame (the frame a command arrived with): where the objects were
# before the arm moved in and hid them. Only in observations of policies trained with a reference frame.
FEAT_REFERENCE_PATCHES = "reference_patches"  # float32 (P, D)
# The pretrained text tower's sentence embedding of the command (before the CLIP projection). Only in
# observations of policies with a skill reader (``network.skill_reader_width``).
FEAT_SENTENCE = "command_sentence"  # float32 (W,)
# A token skill reader's logits of the command (reach, push left / right / forward / back), read from the text
# tower's token states before the network runs. Instead of the sentence in policies with ``skill_reader_tokens``.
FEAT_SKILL_LOGITS = "command_skill_logits"  # float32 (5,)

COMMAND_MAX_BYTES = 128


def encode_command(text: str) -> np.ndarray:
    """Encode a command string into the fixed-size byte array used in observations."""
    if not isinstance(text, str):
        raise TypeError(f"command must be a str, got {type(text).__name__}")
    raw = text.encode("utf-8")
    if len(raw) > COMMAND_MAX_BYTES:
        raise ValueError(f"command is {len(raw)} bytes; at most {COMMAND_MAX_BYTES} are allowed")
    if b"\x00" in raw:
        raise ValueError("command must not contain NUL characters")
    out = np.zeros(COMMAND_MAX_BYTES, dtype=np.uint8)
    out[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return out


def decode_command(data: np.ndarray) -> str:
    """Decode a byte array made by :func:`encode_command` (trailing zeros stripped)."""
    raw = np.asarray(data, dtype=np.uint8).tobytes().rstrip(b"\x00")
    return raw.decode("utf-8", errors="replace")
