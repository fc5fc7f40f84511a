#!/usr/bin/env bash
# The test command (README quick start, .ci/run): set up if needed, then run the whole suite,
# linters included, inside a loopback-only network namespace with a ROS domain of its own.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k safety`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/ros_env.sh
exec scripts/loopback_netns.sh .venv/bin/python -m pytest "$@"
