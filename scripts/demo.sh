#!/usr/bin/env bash
# The main job on the embedded default (README quick start): set up if needed, then run
# `vla-ros demo` (simulator + ROS nodes + shipped checkpoints) in a loopback-only namespace.
# Extra arguments go to `vla-ros demo`, e.g. `scripts/demo.sh --out artifacts/demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MUJOCO_GL=${MUJOCO_GL:-egl}
# Fast DDS large-data transports: camera frames between processes (see vla_ros/launcher.py)
export FASTDDS_BUILTIN_TRANSPORTS=${FASTDDS_BUILTIN_TRANSPORTS:-LARGE_DATA}
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((100 + RANDOM % 100))}
exec scripts/loopback_netns.sh .venv/bin/vla-ros demo "$@"
