"""Keep Python's cyclic garbage collector from stalling the e-stop thread.

A collection holds the GIL from start to end, and a full (generation 2) one walks every object the collector
tracks in the process. The e-stop server runs on a thread of its own (:mod:`vla_ros.ros.estop_server`), but
every Python thread needs the GIL, so a full collection stalls the e-stop for as long as it lasts: 0.28 s for
the explicit ``gc.collect()`` that frees a policy, and 0.46 s for one that loading a checkpoint set off, both
in a test process that held about half a million objects (CI, 2026-12-06).

Two measures, both process-wide:

- :func:`freeze_long_lived` moves every object tracked so far (modules, functions, classes: the policy stack's
  imports) into the collector's permanent generation, which collections skip. vla_node calls it once it has
  imported the policy stack. Frozen objects are still freed when their reference count reaches zero; only
  reference cycles among them are never reclaimed, which is why nothing is frozen after a policy loads.
- :func:`collection_paused` turns automatic collection off while a checkpoint loads (loading allocates many
  objects in a burst and would set off collections up to a full one) and back on afterwards. Pauses nest,
  from any thread: collection resumes when the last one ends.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from typing import Iterator

_lock = threading.Lock()
_pauses = 0
_was_enabled = True


def freeze_long_lived() -> None:
    """Move every object the collector tracks now into its permanent generation (``gc.freeze``)."""
    gc.freeze()


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """Automatic collection is off inside the block (restored to what it was when the outermost pause began)."""
    global _pauses, _was_enabled
    with _lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()
