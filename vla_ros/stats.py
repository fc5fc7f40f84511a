"""Counters, gauges and rolling latency windows of a node (no rclpy; ``vla_ros.ros.diagnostics`` reports them)."""

from __future__ import annotations

import threading
from collections import Counter, deque

import numpy as np


class NodeStats:
    """Thread-safe monotonic counters plus rolling windows of per-stage latencies (seconds)."""

    def __init__(self, window: int = 200) -> None:
        """Keep the last ``window`` samples of each latency stage."""
        self._lock = threading.Lock()
        self._counters: Counter[str] = Counter()
        self._latency: dict[str, deque[float]] = {}
        self._window = window
        self._values: dict[str, str] = {}

    def count(self, key: str, amount: int = 1) -> None:
        """Increment counter ``key``."""
        with self._lock:
            self._counters[key] += amount

    def counter(self, key: str) -> int:
        """Current value of counter ``key`` (0 if never counted)."""
        with self._lock:
            return self._counters[key]

    def add_latency(self, stage: str, seconds: float) -> None:
        """Record one duration of ``stage``."""
        with self._lock:
            self._latency.setdefault(stage, deque(maxlen=self._window)).append(seconds)

    def set_value(self, key: str, value) -> None:
        """Set a gauge reported as-is (e.g. the frame age of the last step)."""
        with self._lock:
            self._values[key] = str(value)

    def items(self) -> list[tuple[str, str]]:
        """All counters, gauges and latency summaries (last, p50, p99, max in ms) as (key, value) strings."""
        with self._lock:
            counters = dict(self._counters)
            values = dict(self._values)
            latency = {stage: np.array(samples) for stage, samples in self._latency.items() if samples}
        out = [(key, value) for key, value in sorted(values.items())]
        out += [(key, str(value)) for key, value in sorted(counters.items())]
        for stage, samples in sorted(latency.items()):
            summary = {
                "last": samples[-1],
                "p50": np.percentile(samples, 50),
                "p99": np.percentile(samples, 99),
                "max": samples.max(),
            }
            out += [(f"latency_ms.{stage}.{name}", f"{1e3 * value:.3f}") for name, value in summary.items()]
        return out
