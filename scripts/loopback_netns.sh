#!/usr/bin/env bash
# Runs a command in a fresh network namespace whose only interface is loopback, so DDS
# discovery (multicast) can never leave the machine. Needs root (or user namespaces).
# Usage: scripts/loopback_netns.sh COMMAND [ARGS...]
set -euo pipefail
if [ "${VLA_ROS_IN_NETNS:-}" = 1 ]; then exec "$@"; fi
setup='ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo && export VLA_ROS_IN_NETNS=1 && exec "$@"'
if [ "$(id -u)" = 0 ]; then
  exec unshare --net -- bash -c "$setup" bash "$@"
else
  exec unshare --user --map-root-user --net -- bash -c "$setup" bash "$@"
fi
