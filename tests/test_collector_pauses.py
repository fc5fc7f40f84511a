"""collection_paused turns automatic garbage collection off and back on, nesting across threads."""

from __future__ import annotations

import gc
import threading

import pytest

from vla_ros.ros.collector_pauses import collection_paused, freeze_long_lived


def test_pauses_nest_across_threads_and_restore_collection():
    assert gc.isenabled()
    inner_entered, release = threading.Event(), threading.Event()

    def other_thread():
        with collection_paused():
            inner_entered.set()
            release.wait(5)

    with collection_paused():
        assert not gc.isenabled()
        thread = threading.Thread(target=other_thread)
        thread.start()
        assert inner_entered.wait(5)
    assert not gc.isenabled()  # the other thread's pause is still open
    release.set()
    thread.join(5)
    assert gc.isenabled()


def test_a_pause_restores_collection_after_an_error_and_leaves_a_disabled_collector_disabled():
    with pytest.raises(RuntimeError), collection_paused():
        raise RuntimeError("load failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with collection_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_frozen_objects_leave_the_collected_generations():
    objects = [[index] for index in range(1000)]
    before = gc.get_freeze_count()
    freeze_long_lived()
    assert gc.get_freeze_count() >= before + len(objects)
    assert sum(gc.get_count()) < len(objects)
