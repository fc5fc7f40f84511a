"""Counters and latency statistics for a node, reported as ``diagnostic_msgs/DiagnosticArray``."""

from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from vla_ros.stats import NodeStats


def stats_key_values(stats: NodeStats) -> list[KeyValue]:
    """A node's counters, gauges and latency summaries as ``diagnostic_msgs/KeyValue``."""
    return [KeyValue(key=key, value=value) for key, value in stats.items()]


def diagnostic_array(
    stamp, name: str, level: bytes, message: str, values: list[KeyValue], hardware_id: str = ""
) -> DiagnosticArray:
    """One-status DiagnosticArray; ``level`` is a ``DiagnosticStatus`` level (OK, WARN, ERROR, STALE)."""
    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id, values=values)
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array


def key_values_to_dict(status: DiagnosticStatus) -> dict[str, str]:
    """KeyValues of a status as a dict (for tests and tools reading /diagnostics)."""
    return {item.key: item.value for item in status.values}
