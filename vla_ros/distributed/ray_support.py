"""Connecting to Ray: an embedded local instance by default, an existing cluster with an address.

Ray is an optional extra (``requirements/ray.txt``, installed by ``scripts/setup.sh``). Nothing else in
``vla_ros`` imports it at module level: without it every command still runs on this machine, and only the
options that ask for Ray workers fail, with :class:`RayUnavailable` naming the fix.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

RAY_REQUIREMENTS = "requirements/ray.txt"


class RayUnavailable(RuntimeError):
    """Ray workers were asked for but Ray is not installed."""


def import_ray():
    """The ``ray`` module, or :class:`RayUnavailable` with the install command."""
    try:
        import ray
    except ImportError as error:
        raise RayUnavailable(f"Ray workers need the optional extra: .venv/bin/python -m pip install -r "
                             f"{RAY_REQUIREMENTS} (scripts/setup.sh installs it); without Ray use --workers 0") \
            from error
    return ray


def ray_available() -> bool:
    """Whether Ray can be imported."""
    try:
        import_ray()
    except RayUnavailable:
        return False
    return True


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[object]:
    """Ray connected for the duration of the block; yields the ``ray`` module.

    Without ``address`` a local Ray starts on this machine (embedded: no dashboard, no usage reporting,
    ``num_cpus`` defaults to the machine's cores) and stops at the end of the block. With ``address``
    (``host:port`` of a running head, or ``auto``) the block joins that cluster and leaves it running.
    A session already connected in this process (a test's cluster) is reused and left as it was.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    ensure_ray(address, num_cpus)
    try:
        yield ray
    finally:
        ray.shutdown()


def ensure_ray(address: str | None = None, num_cpus: int | None = None):
    """The ``ray`` module, connected: to ``address`` if given, else to a local Ray started now (embedded).

    For objects that need Ray for their lifetime (``RayVecEnv``); a session already open is reused. Ray
    disconnects when the process exits. ``num_cpus`` sizes a local Ray (default: this machine's cores).
    """
    ray = import_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network calls home from an offline robot
    if not ray.is_initialized():
        if address:
            ray.init(address=address, logging_level="WARNING")
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING")
    return ray


def cluster_cpus(ray) -> int:
    """CPUs the connected cluster offers (all nodes)."""
    return int(ray.cluster_resources().get("CPU", 1))
