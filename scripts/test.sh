#!/usr/bin/env bash
# The test command (README quick start, .ci/run): set up if needed, then run the whole suite,
# linters included, inside a loopback-only network namespace with a ROS domain of its own.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k safety`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MUJOCO_GL=${MUJOCO_GL:-egl}
# Fast DDS large-data transports: camera frames between processes (see vla_ros/launcher.py)
export FASTDDS_BUILTIN_TRANSPORTS=${FASTDDS_BUILTIN_TRANSPORTS:-LARGE_DATA}
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((100 + RANDOM % 100))}
exec scripts/loopback_netns.sh .venv/bin/python -m pytest "$@"
