#!/usr/bin/env bash
# The main job on the embedded default (README quick start): set up if needed, then run
# `vla-ros demo` (simulator + ROS nodes + shipped checkpoints) in a loopback-only namespace.
# Extra arguments go to `vla-ros demo`, e.g. `scripts/demo.sh --out artifacts/demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/ros_env.sh
exec scripts/loopback_netns.sh .venv/bin/vla-ros demo "$@"
