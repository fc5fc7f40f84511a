"""MCAP recording of ROS 2 topics (readable by Foxglove and ``ros2 bag``), without rosbag2.

Messages are written exactly as they travelled (CDR bytes from raw subscriptions), with
``ros2msg`` schemas built from the ``.msg`` files installed beside the message packages, the way
rosbag2's MCAP storage plugin writes them.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from mcap.writer import CompressionType, Writer

_BUILTIN = {"bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32",
            "int64", "uint64", "string", "wstring"}
_SEPARATOR = "=" * 80


def _msg_file(type_name: str) -> Path:
    package, _, name = type_name.partition("/msg/") if "/msg/" in type_name else type_name.partition("/")
    # ament prefixes (a sourced ROS install), then this interpreter's prefix (PyPI ROS wheels)
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    for prefix in prefixes:
        path = Path(prefix) / "share" / package / "msg" / f"{name}.msg"
        if path.is_file():
            return path
    raise FileNotFoundError(f"message definition of {type_name} not found under {prefixes}")


def _dependencies(text: str, package: str) -> list[str]:
    deps = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        # "float64[] position", "uint8[9] data", "string<=8 name": keep the bare type name
        field_type = re.sub(r"\[.*\]$", "", re.sub(r"<=\d+", "", line.split()[0]))
        if field_type in _BUILTIN:
            continue
        if field_type == "Header":
            field_type = "std_msgs/Header"
        if "/" not in field_type:
            field_type = f"{package}/{field_type}"
        deps.append(field_type)
    return deps


def message_definition(type_name: str) -> str:
    """Full ``ros2msg`` definition of ``pkg/msg/Type`` with its nested types appended (MCAP schema)."""
    main_text = _msg_file(type_name).read_text()
    parts, seen = [main_text], set()
    queue = _dependencies(main_text, type_name.split("/")[0])
    while queue:
        dep = queue.pop(0)
        if dep in seen:
            continue
        seen.add(dep)
        text = _msg_file(dep).read_text()
        parts.append(f"{_SEPARATOR}\nMSG: {dep}\n{text}")
        queue.extend(_dependencies(text, dep.split("/")[0]))
    return "\n".join(parts)


class McapRecorder:
    """Writes raw CDR messages of several topics into one MCAP file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("wb")
        self._writer = Writer(self._file, compression=CompressionType.ZSTD)
        self._writer.start(profile="ros2", library="vla_ros")
        self._channels: dict[str, int] = {}
        self.counts: dict[str, int] = {}

    def add_topic(self, topic: str, type_name: str) -> None:
        """Register a topic of message type ``pkg/msg/Type``."""
        schema = self._writer.register_schema(name=type_name, encoding="ros2msg",
                                              data=message_definition(type_name).encode())
        self._channels[topic] = self._writer.register_channel(topic=topic, message_encoding="cdr",
                                                              schema_id=schema)
        self.counts[topic] = 0

    def write(self, topic: str, data: bytes, stamp_ns: int | None = None) -> None:
        """Append one serialized message."""
        now = stamp_ns if stamp_ns is not None else time.time_ns()
        self._writer.add_message(self._channels[topic], log_time=now, data=bytes(data), publish_time=now,
                                 sequence=self.counts[topic])
        self.counts[topic] += 1

    def close(self) -> None:
        """Finish the file (summary and index)."""
        if self._file.closed:
            return
        self._writer.finish()
        self._file.close()
