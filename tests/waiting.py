"""Polling helper for tests that wait on other threads or processes."""

import time


def wait_until(predicate, timeout=60.0, what="condition"):
    """Return once ``predicate()`` is true; fail after ``timeout`` s (generous: CI machines are loaded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")
