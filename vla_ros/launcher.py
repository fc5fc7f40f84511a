"""Starts a node graph (``vla_ros.graph``) as child processes, for machines without ``ros2 launch``.

Each node runs as ``python -m <module> --ros-args -r __node:=<name> --params-file <yaml> -p k:=v``,
the same command line ``ros2 launch`` would build. Output goes to one log file per node. On exit every
child gets SIGINT (rclpy shuts down cleanly), then SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from vla_ros.graph import NodeSpec


def _param_value(value) -> str:
    # ROS parses -p values as YAML; JSON is valid YAML and keeps strings quoted (so "1" stays a string).
    return json.dumps(value)


# Large camera frames between processes on one machine. Fast DDS's default transports (UDP and shared memory
# with 512 KB segments) lose almost every 640x480 frame (2 of 173 at 30 Hz); its builtin LARGE_DATA mode (TCP
# and shared memory) carries them, but nodes started together on a loaded machine sometimes never matched (CI:
# a node that never received a topic for 120 s; 2 of 33 graphs in a reproduction). The shipped profile
# config/fastdds/shm_large_frames.xml (UDP for discovery and other hosts, shared memory with 16 MB segments)
# carried 173 of 173 frames and matched every graph (docs/EXPERIMENT_LOG.md, 2026-12-05). It applies unless
# the environment already chooses transports or a profile (e.g. LARGE_DATA for cameras on another host).
FASTDDS_PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"
FASTDDS_CHOICE_VARIABLES = ("FASTDDS_BUILTIN_TRANSPORTS", FASTDDS_PROFILE_VARIABLE, "FASTRTPS_DEFAULT_PROFILES_FILE")
FASTDDS_PROFILE = ("config", "fastdds", "shm_large_frames.xml")


def large_frame_transport_env(environ=None) -> dict[str, str]:
    """Environment variables that select the large-frame profile; none when ``environ`` already chooses."""
    from vla_ros.paths import share_path

    environ = os.environ if environ is None else environ
    if any(environ.get(name) for name in FASTDDS_CHOICE_VARIABLES):
        return {}
    return {FASTDDS_PROFILE_VARIABLE: str(share_path(*FASTDDS_PROFILE))}


def use_large_data_transport() -> None:
    """Select the large-frame Fast DDS profile for this process unless the environment already chooses."""
    os.environ.update(large_frame_transport_env())


def node_command(spec: NodeSpec, python: str = sys.executable) -> list[str]:
    """The command line that starts ``spec`` as a process."""
    cmd = [python, "-m", spec.module, "--ros-args", "-r", f"__node:={spec.name}"]
    if spec.namespace:
        cmd += ["-r", f"__ns:={spec.namespace}"]
    for path in spec.param_file_paths():
        cmd += ["--params-file", path]
    for key, value in spec.parameters.items():
        cmd += ["-p", f"{key}:={_param_value(value)}"]
    for src, dst in spec.remappings.items():
        cmd += ["-r", f"{src}:={dst}"]
    return cmd


def only_loopback() -> bool:
    """True when this process's network namespace has no interface but ``lo``."""
    # /proc/net/dev follows the network namespace; /sys/class/net does not unless /sys is remounted.
    try:
        with open("/proc/net/dev") as f:
            names = {line.split(":", 1)[0].strip() for line in f.readlines()[2:]}
    except OSError:
        return False
    return names <= {"lo"}


class NodeGraphProcesses:
    """Context manager running a list of ``NodeSpec`` as processes."""

    def __init__(self, specs: Sequence[NodeSpec], log_dir: str | Path, env: dict | None = None):
        self.specs = list(specs)
        self.log_dir = Path(log_dir)
        base = {**os.environ, **(env or {})}
        self.env = {**base, **large_frame_transport_env(base)}  # the caller's env may choose transports itself
        self.processes: dict[str, subprocess.Popen] = {}
        self._logs = []

    def __enter__(self) -> "NodeGraphProcesses":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Start every node; raise if one exits at once."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for spec in self.specs:
            log = open(self.log_dir / f"{spec.key}.log", "w")
            self._logs.append(log)
            self.processes[spec.key] = subprocess.Popen(
                node_command(spec), stdout=log, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True,
            )
        self.check_alive()

    def check_alive(self) -> None:
        """Raise ``RuntimeError`` (with the log's tail) if a node process has exited."""
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                tail = self.log_tail(name)
                raise RuntimeError(f"node {name} exited with code {proc.returncode}:\n{tail}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        """Last lines of a node's log file."""
        path = self.log_dir / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> dict[str, int]:
        """Stop all nodes (SIGINT, then SIGTERM, then SIGKILL); return their exit codes."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in self.processes.values():
                remaining = max(0.0, deadline - time.monotonic())
                try:
                    proc.wait(timeout=remaining)
                except subprocess.TimeoutExpired:
                    proc.send_signal(sig)
            deadline = time.monotonic() + 3.0
        for proc in self.processes.values():
            proc.wait()
        for log in self._logs:
            log.close()
        self._logs.clear()
        return {name: proc.returncode for name, proc in self.processes.items()}
