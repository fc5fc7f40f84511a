"""Conversions between ROS messages and numpy arrays / plain Python values.

Thin and allocation-aware: images are read with ``np.frombuffer`` on ``msg.data`` (no per-pixel
Python), since frames arrive at 640x480 and 30 Hz. Every malformed input raises ``ValueError`` with a
message that names the field and the expected value, so a node can log it and count it.
"""

from __future__ import annotations

import array
import math
import unicodedata
from dataclasses import dataclass

import cv2
import numpy as np
from builtin_interfaces.msg import Duration, Time
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, Header, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_ros.keys import COMMAND_MAX_BYTES

# encoding -> (channels, bytes per channel); channel order is handled in image_to_numpy.
IMAGE_ENCODINGS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1),
    "bgr8": (3, 1),
    "rgba8": (4, 1),
    "bgra8": (4, 1),
    "mono8": (1, 1),
    "rgb16": (3, 2),
    "bgr16": (3, 2),
    "rgba16": (4, 2),
    "bgra16": (4, 2),
    "mono16": (1, 2),
}
# Indices that turn each layout into RGB (mono is repeated into three channels).
_TO_RGB = {
    "rgb": [0, 1, 2],
    "bgr": [2, 1, 0],
    "rgba": [0, 1, 2],
    "bgra": [2, 1, 0],
    "mono": [0, 0, 0],
}


class NonFiniteJointStateError(ValueError):
    """A JointState carries NaN or Inf; a separate type so nodes can count it apart."""


@dataclass(frozen=True)
class ImageLayout:
    """The validated geometry of an Image message."""

    height: int
    width: int
    channels: int
    bytes_per_channel: int
    step: int
    encoding: str


# --------------------------------------------------------------------------------------- time


def stamp_to_seconds(stamp: Time) -> float:
    """``builtin_interfaces/Time`` -> float seconds."""
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def seconds_to_stamp(seconds: float) -> Time:
    """Float seconds -> ``builtin_interfaces/Time`` (non-negative)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a stamp must be a finite, non-negative number of seconds, got {seconds}")
    nanoseconds = int(round(seconds * 1e9))
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def seconds_to_duration(seconds: float) -> Duration:
    """Float seconds -> ``builtin_interfaces/Duration`` (non-negative)."""
    stamp = seconds_to_stamp(seconds)
    return Duration(sec=stamp.sec, nanosec=stamp.nanosec)


def _as_stamp(stamp) -> Time:
    """Accept ``None`` (zero), a ``Time`` message, an ``rclpy.time.Time`` or float seconds."""
    if stamp is None:
        return Time()
    if isinstance(stamp, Time):
        return stamp
    if hasattr(stamp, "to_msg"):
        return stamp.to_msg()
    return seconds_to_stamp(float(stamp))


# -------------------------------------------------------------------------------------- images

MAX_FRAME_PIXELS = 3840 * 2160
"""largest camera frame accepted (4K UHD): bigger ones are refused before any pixel is copied or decoded"""
MAX_COMPRESSED_BYTES = 16 * 1024 * 1024
"""largest compressed frame accepted"""


def _check_frame_size(width: int, height: int) -> None:
    if width * height > MAX_FRAME_PIXELS:
        raise ValueError(f"image is {width}x{height} = {width * height} pixels; at most {MAX_FRAME_PIXELS} "
                         "(3840x2160) are accepted")


def validate_image(msg: Image) -> ImageLayout:
    """Check an Image's encoding, size, step and data length without copying its pixels."""
    encoding = msg.encoding.strip().lower()
    if encoding not in IMAGE_ENCODINGS:
        raise ValueError(
            f"unsupported image encoding {msg.encoding!r}; expected one of {sorted(IMAGE_ENCODINGS)}"
        )
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ValueError(f"image has zero size ({width}x{height})")
    _check_frame_size(width, height)
    channels, depth = IMAGE_ENCODINGS[encoding]
    row_bytes = width * channels * depth
    if step < row_bytes:
        raise ValueError(
            f"image step {step} is smaller than width*channels*bytes"
            f" = {width}*{channels}*{depth} = {row_bytes}"
        )
    if depth > 1 and step % depth:
        raise ValueError(f"image step {step} is not a multiple of the {depth}-byte channel size")
    size = len(msg.data)
    if size == 0:
        raise ValueError(f"image data is empty (expected step*height = {step * height} bytes)")
    if size != step * height:
        raise ValueError(f"image data has {size} bytes; step*height = {step}*{height} = {step * height}")
    return ImageLayout(height, width, channels, depth, step, encoding)


def image_to_numpy(msg: Image) -> np.ndarray:
    """Return the frame as a new (H, W, 3) uint8 RGB array; raise ``ValueError`` if malformed.

    Handles rgb8, bgr8, rgba8, bgra8, mono8 and their 16-bit variants (scaled to 8 bit), row
    padding (``step`` larger than a row) and big-endian 16-bit data.
    """
    layout = validate_image(msg)
    dtype = np.uint8
    if layout.bytes_per_channel == 2:
        dtype = np.dtype(">u2" if msg.is_bigendian else "<u2")
    rows = np.frombuffer(msg.data, dtype=dtype).reshape(
        layout.height, layout.step // layout.bytes_per_channel
    )
    pixels = rows[:, : layout.width * layout.channels].reshape(layout.height, layout.width, layout.channels)
    if layout.bytes_per_channel == 2:
        pixels = (pixels >> 8).astype(np.uint8)  # keep the high byte: 16-bit -> 8-bit full range
    order = _TO_RGB[layout.encoding.rstrip("0123456789")]
    if layout.channels == 3 and order == [0, 1, 2]:
        return pixels.copy()  # a copy so the array does not alias the message buffer
    # Fancy indexing on the channel axis copies into a new contiguous array in one pass.
    return np.ascontiguousarray(pixels[:, :, order])


def _compressed_size(data: bytes) -> tuple[str, int, int]:
    """(kind, width, height) read from a PNG or JPEG header, without decoding the pixels."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return "png", int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 <= len(data):
            if data[i] != 0xFF:
                raise ValueError("compressed image: corrupt JPEG marker stream")
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
                i += 2
                continue
            length = int.from_bytes(data[i + 2:i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                return "jpeg", int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
            if length < 2:
                raise ValueError("compressed image: corrupt JPEG segment length")
            i += 2 + length
        raise ValueError("compressed image: JPEG without a frame header")
    raise ValueError("compressed image is neither PNG nor JPEG")


def validate_compressed_image(msg: CompressedImage) -> tuple[str, int, int]:
    """Check a CompressedImage's size and header (PNG or JPEG, dimensions within the cap) without decoding."""
    data = bytes(msg.data)
    if not data:
        raise ValueError("compressed image data is empty")
    if len(data) > MAX_COMPRESSED_BYTES:
        raise ValueError(f"compressed image is {len(data)} bytes; at most {MAX_COMPRESSED_BYTES} are accepted")
    kind, width, height = _compressed_size(data)
    if width == 0 or height == 0:
        raise ValueError(f"compressed image has zero size ({width}x{height})")
    _check_frame_size(width, height)
    return kind, width, height


def compressed_to_numpy(msg: CompressedImage) -> np.ndarray:
    """Decode a PNG or JPEG CompressedImage (image_transport's ``compressed``) to (H, W, 3) uint8 RGB.

    The header is checked first (:func:`validate_compressed_image`), so a small file declaring a huge frame is
    refused before OpenCV allocates it. Grey and 16-bit images are converted like raw ones.
    """
    _, width, height = validate_compressed_image(msg)
    pixels = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ValueError("compressed image could not be decoded")
    if pixels.shape[:2] != (height, width):
        raise ValueError(f"compressed image decodes to {pixels.shape[1]}x{pixels.shape[0]}, "
                         f"its header says {width}x{height}")
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    if pixels.ndim == 2:
        return np.ascontiguousarray(np.repeat(pixels[:, :, None], 3, axis=2))
    code = cv2.COLOR_BGRA2RGB if pixels.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(pixels, code)


def numpy_to_compressed_image(array_rgb: np.ndarray, fmt: str = "png", stamp=None,
                              frame_id: str = "") -> CompressedImage:
    """Encode an (H, W, 3) uint8 RGB array as a CompressedImage (``png``: lossless, or ``jpeg``)."""
    if fmt not in ("png", "jpeg"):
        raise ValueError(f"format must be png or jpeg, got {fmt!r}")
    ok, encoded = cv2.imencode(".png" if fmt == "png" else ".jpg",
                               cv2.cvtColor(np.ascontiguousarray(array_rgb, np.uint8), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode the image")
    msg = CompressedImage(format=f"rgb8; {fmt} compressed bgr8", data=encoded.tobytes())
    msg.header.stamp = _as_stamp(stamp)
    msg.header.frame_id = frame_id
    return msg


def frame_to_numpy(msg: Image | CompressedImage) -> np.ndarray:
    """A raw or compressed camera frame as (H, W, 3) uint8 RGB."""
    return compressed_to_numpy(msg) if isinstance(msg, CompressedImage) else image_to_numpy(msg)


def numpy_to_image(
    array_rgb: np.ndarray,
    encoding: str = "rgb8",
    stamp=None,
    frame_id: str = "",
    row_padding: int = 0,
) -> Image:
    """Build an Image from an (H, W, 3) uint8 RGB array (or (H, W) gray for mono8).

    The pixels are converted to ``encoding`` (one of the 8-bit encodings). ``row_padding`` adds
    bytes at the end of each row (``step > width * channels``), as some camera drivers do.
    ``stamp``: ``None``, a ``builtin_interfaces/Time``, an ``rclpy.time.Time`` or float seconds.
    """
    pixels = np.asarray(array_rgb)
    if pixels.dtype != np.uint8:
        raise ValueError(f"image array must be uint8, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"image array must be (H, W, 3) RGB or (H, W) gray, got shape {pixels.shape}")
    height, width = pixels.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"image array has zero size ({width}x{height})")
    if encoding == "rgb8":
        out = pixels
    elif encoding == "bgr8":
        out = pixels[:, :, ::-1]
    elif encoding == "rgba8":
        out = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2RGBA)
    elif encoding == "bgra8":
        out = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2BGRA)
    elif encoding == "mono8":
        out = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)[:, :, None]
    else:
        raise ValueError(f"numpy_to_image supports rgb8, bgr8, rgba8, bgra8, mono8; got {encoding!r}")
    if row_padding < 0:
        raise ValueError(f"row_padding must be >= 0, got {row_padding}")
    channels = out.shape[2]
    rows = np.ascontiguousarray(out).reshape(height, width * channels)
    if row_padding:
        rows = np.concatenate([rows, np.zeros((height, row_padding), np.uint8)], axis=1)
    msg = Image()
    msg.header = Header(stamp=_as_stamp(stamp), frame_id=frame_id)
    msg.height, msg.width = height, width
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = width * channels + row_padding
    # array('B', bytes) is a single memcpy; assigning bytes to the field converts more slowly.
    msg.data = array.array("B", rows.tobytes())
    return msg


# -------------------------------------------------------------------------------- joint states


def joint_state_to_arrays(
    msg: JointState, joint_names, require_velocity: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Return (positions, velocities) as float64 arrays in the order of ``joint_names``.

    Extra joints in the message are ignored. Missing velocities are an error unless
    ``require_velocity`` is false (then they are zeros). NaN/Inf raise :class:`NonFiniteJointStateError`.
    """
    names = list(msg.name)
    if len(set(names)) != len(names):
        raise ValueError(f"joint state has duplicate joint names: {names}")
    if len(msg.position) != len(names):
        raise ValueError(f"joint state has {len(msg.position)} positions for {len(names)} names")
    has_velocity = len(msg.velocity) > 0
    if has_velocity and len(msg.velocity) != len(names):
        raise ValueError(f"joint state has {len(msg.velocity)} velocities for {len(names)} names")
    if not has_velocity and require_velocity:
        raise ValueError("joint state has no velocities")
    index_of = {name: i for i, name in enumerate(names)}
    missing = [name for name in joint_names if name not in index_of]
    if missing:
        raise ValueError(f"joint state lacks joints {missing}; it has {names}")
    index = np.array([index_of[name] for name in joint_names], dtype=np.intp)
    positions = np.asarray(msg.position, dtype=np.float64)[index]
    velocities = np.asarray(msg.velocity, dtype=np.float64)[index] if has_velocity else np.zeros(len(index))
    for label, values in (("position", positions), ("velocity", velocities)):
        bad = ~np.isfinite(values)
        if np.any(bad):
            joints = [name for name, is_bad in zip(joint_names, bad) if is_bad]
            raise NonFiniteJointStateError(f"joint state has non-finite {label} for joints {joints}")
    return positions, velocities


def arrays_to_joint_state(
    joint_names, positions, velocities=None, stamp=None, frame_id: str = ""
) -> JointState:
    """Build a JointState from names, positions and (optional) velocities."""
    msg = JointState()
    msg.header = Header(stamp=_as_stamp(stamp), frame_id=frame_id)
    msg.name = list(joint_names)
    msg.position = [float(value) for value in np.asarray(positions, dtype=np.float64).reshape(-1)]
    if velocities is not None:
        msg.velocity = [float(value) for value in np.asarray(velocities, dtype=np.float64).reshape(-1)]
    if len(msg.position) != len(msg.name) or (velocities is not None and len(msg.velocity) != len(msg.name)):
        raise ValueError(
            f"{len(msg.name)} joint names but {len(msg.position)} positions / {len(msg.velocity)} velocities"
        )
    return msg


# ------------------------------------------------------------------------------------ commands


def validate_command(text: str) -> str:
    """Return the command with outer whitespace removed; raise ``ValueError`` if it is unusable.

    Rejected: empty or whitespace-only text, more than ``COMMAND_MAX_BYTES`` UTF-8 bytes, and
    non-printable characters (control bytes, binary data decoded with replacement characters).
    """
    if not isinstance(text, str):
        raise ValueError(f"command must be text, got {type(text).__name__}")
    command = text.strip()
    if not command:
        raise ValueError("command is empty" if not text else "command is whitespace only")
    size = len(command.encode("utf-8", errors="surrogatepass"))
    if size > COMMAND_MAX_BYTES:
        raise ValueError(f"command is {size} bytes long; at most {COMMAND_MAX_BYTES} UTF-8 bytes are allowed")
    for position, char in enumerate(command):
        if char == "\ufffd":
            raise ValueError(f"command is not valid UTF-8 text (replacement character at {position})")
        # Printable text plus ordinary spaces; control (Cc), format, surrogate and unassigned are not.
        if not (char.isprintable() or char == " ") or unicodedata.category(char) in ("Cs", "Co", "Cn"):
            raise ValueError(f"command contains a non-printable character {char!r} at {position}")
    return command


def position_command_array(positions) -> Float64MultiArray:
    """``forward_position_controller/commands``: absolute joint positions in controller joint order."""
    values = np.asarray(positions, dtype=np.float64).reshape(-1)
    msg = Float64MultiArray()
    msg.layout.dim = [MultiArrayDimension(label="joints", size=values.size, stride=values.size)]
    msg.data = array.array("d", values.tobytes())
    return msg


def joint_trajectory(joint_names, positions, time_from_start_s: float, stamp=None) -> JointTrajectory:
    """``joint_trajectory_controller/joint_trajectory``: one point reached after ``time_from_start_s``.

    A zero header stamp (the default) tells the controller to start the trajectory on receipt.
    """
    values = np.asarray(positions, dtype=np.float64).reshape(-1)
    if values.size != len(joint_names):
        raise ValueError(f"{values.size} positions for {len(joint_names)} joints")
    msg = JointTrajectory()
    msg.header = Header(stamp=_as_stamp(stamp))
    msg.joint_names = list(joint_names)
    point = JointTrajectoryPoint()
    point.positions = [float(value) for value in values]
    point.time_from_start = seconds_to_duration(time_from_start_s)
    msg.points = [point]
    return msg


def positions_from_command_array(msg: Float64MultiArray, num_joints: int) -> np.ndarray:
    """Read absolute positions from a ``Float64MultiArray`` command; validates length and values."""
    values = np.asarray(msg.data, dtype=np.float64)
    if values.shape != (num_joints,):
        raise ValueError(f"position command has {values.size} values for {num_joints} joints")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"position command has non-finite values: {values.tolist()}")
    return values


def positions_from_trajectory(msg: JointTrajectory, joint_names, horizon_s: float) -> np.ndarray:
    """Read the target for the next ``horizon_s`` from a JointTrajectory, in ``joint_names`` order.

    The target is the first point due at or after ``horizon_s`` (else the last point), which is the
    position a trajectory controller would be heading to at the end of one control period.
    """
    if not msg.points:
        raise ValueError("joint trajectory has no points")
    names = list(msg.joint_names)
    missing = [name for name in joint_names if name not in names]
    if missing:
        raise ValueError(f"joint trajectory lacks joints {missing}; it has {names}")
    chosen = msg.points[-1]
    for point in msg.points:
        due = point.time_from_start.sec + 1e-9 * point.time_from_start.nanosec
        if due >= horizon_s - 1e-9:
            chosen = point
            break
    if len(chosen.positions) != len(names):
        raise ValueError(f"trajectory point has {len(chosen.positions)} positions for {len(names)} joints")
    values = np.asarray(chosen.positions, dtype=np.float64)[[names.index(name) for name in joint_names]]
    if not np.all(np.isfinite(values)):
        raise ValueError(f"joint trajectory has non-finite positions: {values.tolist()}")
    return values


def message_key(info) -> tuple | None:
    """(publisher gid, publication sequence number) of a received message, or None where the RMW gives none."""
    if not info or info.get("publication_sequence_number") is None or not info.get("publisher_gid"):
        return None
    gid = info["publisher_gid"]
    gid = gid.get("data", gid) if isinstance(gid, dict) else gid
    return bytes(gid), int(info["publication_sequence_number"])
