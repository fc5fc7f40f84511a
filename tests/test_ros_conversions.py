"""Message conversions: round trips through real rclpy publishers/subscribers, malformed input errors."""

from __future__ import annotations

import array
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from vla_ros.keys import COMMAND_MAX_BYTES  # noqa: E402
from vla_ros.ros import qos  # noqa: E402
from vla_ros.ros.conversions import (  # noqa: E402
    NonFiniteJointStateError,
    arrays_to_joint_state,
    image_to_numpy,
    joint_state_to_arrays,
    joint_trajectory,
    numpy_to_image,
    position_command_array,
    positions_from_command_array,
    positions_from_trajectory,
    stamp_to_seconds,
    validate_command,
)

EIGHT_BIT = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"]


def random_rgb(height=6, width=5, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def gray_of(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)


def through_ros(context, msg, topic, qos_profile):
    """Publish ``msg`` and return the message a subscriber in another node receives."""
    publisher_node = rclpy.create_node("conversions_publisher", context=context)
    subscriber_node = rclpy.create_node("conversions_subscriber", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(publisher_node)
    executor.add_node(subscriber_node)
    received = []
    try:
        publisher = publisher_node.create_publisher(type(msg), topic, qos_profile)
        subscriber_node.create_subscription(type(msg), topic, received.append, qos_profile)
        deadline = time.monotonic() + 10.0
        while not received and time.monotonic() < deadline:
            if publisher.get_subscription_count() > 0:
                publisher.publish(msg)
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.shutdown()
        publisher_node.destroy_node()
        subscriber_node.destroy_node()
    assert received, f"no message arrived on {topic}"
    return received[0]


# ---------------------------------------------------------------------------------- images


@pytest.mark.parametrize("encoding", EIGHT_BIT)
@pytest.mark.parametrize("row_padding", [0, 3])
def test_image_round_trip_every_encoding(encoding, row_padding):
    rgb = random_rgb()
    msg = numpy_to_image(rgb, encoding, stamp=12.5, frame_id="camera", row_padding=row_padding)
    channels = {"mono8": 1, "rgb8": 3, "bgr8": 3}.get(encoding, 4)
    assert msg.step == 5 * channels + row_padding and len(msg.data) == msg.step * 6
    decoded = image_to_numpy(msg)
    assert decoded.shape == (6, 5, 3) and decoded.dtype == np.uint8
    expected = gray_of(rgb) if encoding == "mono8" else rgb
    np.testing.assert_array_equal(decoded, expected)
    assert stamp_to_seconds(msg.header.stamp) == 12.5 and msg.header.frame_id == "camera"


def test_image_channel_order_is_rgb():
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    bgr = numpy_to_image(red, "bgr8")
    assert bytes(bgr.data[:3]) == b"\x00\x00\xff"  # stored blue, green, red
    np.testing.assert_array_equal(image_to_numpy(bgr)[..., 0], 255)


def test_decoded_image_does_not_alias_the_message():
    msg = numpy_to_image(random_rgb())
    decoded = image_to_numpy(msg)
    decoded[:] = 0
    assert image_to_numpy(msg).any()


@pytest.mark.parametrize("encoding, channels", [("mono16", 1), ("rgb16", 3), ("bgr16", 3), ("rgba16", 4)])
@pytest.mark.parametrize("bigendian", [False, True])
def test_sixteen_bit_images_scale_to_eight_bit(encoding, channels, bigendian):
    rng = np.random.default_rng(3)
    values = rng.integers(0, 65536, size=(4, 3, channels), dtype=np.uint16)
    padded = np.concatenate([values.reshape(4, -1), np.zeros((4, 2), np.uint16)], axis=1)
    msg = Image(height=4, width=3, encoding=encoding, is_bigendian=int(bigendian), step=padded.shape[1] * 2)
    msg.data = array.array("B", padded.astype(">u2" if bigendian else "<u2").tobytes())
    decoded = image_to_numpy(msg)
    high = (values >> 8).astype(np.uint8)
    expected = {1: np.repeat(high, 3, axis=2), 3: high, 4: high[..., :3]}[channels]
    if encoding.startswith("bgr"):
        expected = expected[..., ::-1]
    np.testing.assert_array_equal(decoded, expected)


def test_image_round_trip_through_ros_with_camera_qos(ros_context):
    rgb = random_rgb(48, 64, seed=7)
    sent = numpy_to_image(rgb, "bgra8", stamp=3.25, frame_id="cam", row_padding=8)
    received = through_ros(ros_context, sent, "test_conversions/image", qos.CAMERA_QOS)
    assert received.step == 64 * 4 + 8
    np.testing.assert_array_equal(image_to_numpy(received), rgb)
    assert stamp_to_seconds(received.header.stamp) == 3.25


def test_full_size_frame_decodes_quickly_enough_for_30_hz():
    msg = numpy_to_image(random_rgb(480, 640), "bgr8", row_padding=64)
    image_to_numpy(msg)
    start = time.perf_counter()
    for _ in range(10):
        image_to_numpy(msg)
    # Generous bound (shared CI cores); a per-pixel Python loop would take seconds per frame.
    assert (time.perf_counter() - start) / 10 < 0.03


def make_image(**fields) -> Image:
    msg = numpy_to_image(random_rgb(4, 5))
    for key, value in fields.items():
        setattr(msg, key, value)
    return msg


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(encoding="yuv422"), "unsupported image encoding 'yuv422'"),
        (dict(encoding=""), "unsupported image encoding"),
        (dict(step=14), r"image step 14 is smaller than width\*channels\*bytes"),
        (dict(data=array.array("B")), "image data is empty"),
        (dict(data=array.array("B", bytes(59))), r"image data has 59 bytes; step\*height = 15\*4 = 60"),
        (dict(data=array.array("B", bytes(61))), "image data has 61 bytes"),
        (dict(height=0), r"zero size \(5x0\)"),
        (dict(width=0), r"zero size \(0x4\)"),
        (dict(step=16), "image data has 60 bytes; step"),  # step changed but data not padded
    ],
)
def test_malformed_images_are_rejected_with_clear_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        image_to_numpy(make_image(**fields))


def test_odd_step_for_sixteen_bit_is_rejected():
    msg = Image(height=1, width=1, encoding="mono16", step=3, data=array.array("B", bytes(3)))
    with pytest.raises(ValueError, match="multiple of the 2-byte"):
        image_to_numpy(msg)


def test_numpy_to_image_rejects_bad_arrays():
    with pytest.raises(ValueError, match="uint8"):
        numpy_to_image(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        numpy_to_image(np.zeros((2, 2, 4), np.uint8))
    with pytest.raises(ValueError, match="zero size"):
        numpy_to_image(np.zeros((0, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="supports"):
        numpy_to_image(np.zeros((2, 2, 3), np.uint8), "yuv422")


# ---------------------------------------------------------------------------- joint states

NAMES = ("j1", "j2", "j3")


def test_joint_state_round_trip_reorders_to_the_requested_joint_order(ros_context):
    sent = arrays_to_joint_state(
        ["j3", "extra", "j1", "j2"], [3.0, 9.0, 1.0, 2.0], [-3.0, -9.0, -1.0, -2.0], stamp=5.0
    )
    received = through_ros(ros_context, sent, "test_conversions/joint_states", qos.JOINT_STATES_QOS)
    positions, velocities = joint_state_to_arrays(received, NAMES)
    np.testing.assert_array_equal(positions, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(velocities, [-1.0, -2.0, -3.0])


def test_joint_state_without_velocities():
    msg = arrays_to_joint_state(NAMES, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="no velocities"):
        joint_state_to_arrays(msg, NAMES)
    _, velocities = joint_state_to_arrays(msg, NAMES, require_velocity=False)
    np.testing.assert_array_equal(velocities, np.zeros(3))


@pytest.mark.parametrize("field, index, joint", [("position", 1, "j2"), ("velocity", 2, "j3")])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_joint_state_is_a_distinct_error(field, index, joint, bad):
    positions, velocities = [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]
    (positions if field == "position" else velocities)[index] = bad
    msg = arrays_to_joint_state(NAMES, positions, velocities)
    with pytest.raises(NonFiniteJointStateError, match=rf"non-finite {field} for joints \['{joint}'\]"):
        joint_state_to_arrays(msg, NAMES)


def test_non_finite_value_of_an_ignored_joint_is_fine():
    msg = arrays_to_joint_state(NAMES + ("gripper",), [1.0, 2.0, 3.0, float("nan")], [0.0] * 4)
    positions, _ = joint_state_to_arrays(msg, NAMES)
    np.testing.assert_array_equal(positions, [1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    "names, positions, velocities, message",
    [
        (["j1", "j2"], [1.0, 2.0], [0.0, 0.0], r"lacks joints \['j3'\]"),
        (["j1", "j2", "j3"], [1.0, 2.0], [0.0, 0.0, 0.0], "2 positions for 3 names"),
        (["j1", "j2", "j3"], [1.0, 2.0, 3.0], [0.0], "1 velocities for 3 names"),
        (["j1", "j1", "j3"], [1.0, 2.0, 3.0], [0.0] * 3, "duplicate joint names"),
    ],
)
def test_malformed_joint_states(names, positions, velocities, message):
    msg = JointState(name=names, position=positions, velocity=velocities)
    with pytest.raises(ValueError, match=message):
        joint_state_to_arrays(msg, NAMES)


# -------------------------------------------------------------------------------- commands


@pytest.mark.parametrize(
    "text, expected",
    [
        ("touch the red cube", "touch the red cube"),
        ("  push the blue ball  \n", "push the blue ball"),
        ("berühre den grünen Würfel", "berühre den grünen Würfel"),
        ("x" * COMMAND_MAX_BYTES, "x" * COMMAND_MAX_BYTES),
    ],
)
def test_valid_commands(text, expected):
    assert validate_command(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "command is empty"),
        ("  \t\n ", "whitespace only"),
        ("x" * (COMMAND_MAX_BYTES + 1), f"{COMMAND_MAX_BYTES + 1} bytes long; at most {COMMAND_MAX_BYTES}"),
        ("ü" * (COMMAND_MAX_BYTES // 2 + 1), "bytes long"),  # counts UTF-8 bytes, not characters
        ("touch\x00the cube", "non-printable"),
        ("touch the\x07 cube", "non-printable"),
        ("\x89PNG\r\n\x1a\n\x00\x00", "non-printable"),
        ("touch the red\ufffd cube", "not valid UTF-8"),
        ("red\ncube", "non-printable"),
        ("\u202eeduc der", "non-printable"),  # bidi override (format character)
    ],
)
def test_bad_commands_are_rejected_with_clear_errors(text, message):
    with pytest.raises(ValueError, match=message):
        validate_command(text)


def test_position_command_round_trip(ros_context):
    sent = position_command_array([0.1, -0.2, 0.3])
    received = through_ros(ros_context, sent, "test_conversions/commands", qos.JOINT_COMMAND_QOS)
    assert isinstance(received, Float64MultiArray)
    np.testing.assert_array_equal(positions_from_command_array(received, 3), [0.1, -0.2, 0.3])
    with pytest.raises(ValueError, match="3 values for 4 joints"):
        positions_from_command_array(received, 4)
    with pytest.raises(ValueError, match="non-finite"):
        positions_from_command_array(position_command_array([0.0, float("nan"), 0.0]), 3)


def test_joint_trajectory_round_trip(ros_context):
    sent = joint_trajectory(["j2", "j1", "j3"], [2.0, 1.0, 3.0], time_from_start_s=0.1)
    assert sent.header.stamp.sec == 0 and sent.header.stamp.nanosec == 0  # start on receipt
    received = through_ros(ros_context, sent, "test_conversions/trajectory", qos.JOINT_COMMAND_QOS)
    assert isinstance(received, JointTrajectory)
    assert received.points[0].time_from_start.nanosec == 100_000_000
    np.testing.assert_array_equal(positions_from_trajectory(received, NAMES, 0.1), [1.0, 2.0, 3.0])


def test_trajectory_target_is_the_point_due_after_one_period():
    msg = joint_trajectory(NAMES, [0.0, 0.0, 0.0], 0.05)
    later = joint_trajectory(NAMES, [1.0, 1.0, 1.0], 0.2).points[0]
    latest = joint_trajectory(NAMES, [2.0, 2.0, 2.0], 0.4).points[0]
    msg.points = [msg.points[0], later, latest]
    np.testing.assert_array_equal(positions_from_trajectory(msg, NAMES, 0.1), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(positions_from_trajectory(msg, NAMES, 1.0), [2.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="no points"):
        positions_from_trajectory(JointTrajectory(joint_names=list(NAMES)), NAMES, 0.1)
    with pytest.raises(ValueError, match="lacks joints"):
        positions_from_trajectory(msg, NAMES + ("j4",), 0.1)
    with pytest.raises(ValueError, match="2 positions for 3 joints"):
        joint_trajectory(NAMES, [0.0, 0.0], 0.1)


def test_messages_are_independent_of_threads():
    # Building messages from several threads at once (executor callbacks) must not interfere.
    results = []

    def build(seed):
        rgb = random_rgb(8, 8, seed)
        results.append(np.array_equal(image_to_numpy(numpy_to_image(rgb, "bgr8")), rgb))

    threads = [threading.Thread(target=build, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 8


# ------------------------------------------------------------------------------ compressed frames


def test_png_compressed_frames_decode_to_the_raw_frames_pixels_and_jpeg_close():
    from vla_ros.ros.conversions import compressed_to_numpy, frame_to_numpy, numpy_to_compressed_image

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    raw = numpy_to_image(frame, "bgr8")
    png = numpy_to_compressed_image(frame, "png")
    assert png.format.endswith("png compressed bgr8")
    np.testing.assert_array_equal(frame_to_numpy(png), frame_to_numpy(raw))
    smooth = np.repeat(np.repeat(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), 8, 0), 8, 1)
    jpeg = compressed_to_numpy(numpy_to_compressed_image(smooth, "jpeg"))
    assert jpeg.shape == smooth.shape and np.median(np.abs(jpeg.astype(int) - smooth)) <= 4  # lossy, close


def test_hostile_compressed_frames_are_refused_before_decoding():
    import struct
    import zlib

    from sensor_msgs.msg import CompressedImage

    from vla_ros.ros.conversions import MAX_FRAME_PIXELS, compressed_to_numpy, validate_image

    def png(width, height):  # a valid header whose pixels were never written: a decompression bomb
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        chunk = b"IHDR" + ihdr
        return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))

    cases = [
        (png(100_000, 100_000), "at most"),
        (b"", "empty"),
        (b"GIF89a....", "neither PNG nor JPEG"),
        (b"\xff\xd8\xff\xe0\x00\x01", "JPEG"),
        (png(64, 48), "could not be decoded"),  # a header and nothing else
    ]
    for data, message in cases:
        with pytest.raises(ValueError, match=message):
            compressed_to_numpy(CompressedImage(format="png", data=data))
    # raw frames have the same cap, checked from the header before any pixel is copied
    side = int(MAX_FRAME_PIXELS ** 0.5) + 1
    with pytest.raises(ValueError, match="at most"):
        validate_image(Image(height=side, width=side, encoding="mono8", step=side, data=b"\0"))
