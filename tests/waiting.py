"""Polling helper for tests that wait on other threads or processes."""

import time


def wait_until(predicate, timeout=15.0, what="condition"):
    """Return once ``predicate()`` is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")
