# Sourced by scripts/test.sh and scripts/demo.sh: the environment every ROS process of theirs shares.
export MUJOCO_GL=${MUJOCO_GL:-egl}
# Large camera frames between processes: the shipped Fast DDS profile (UDP + 16 MB shared-memory segments; why:
# vla_ros/launcher.py), unless the environment already chooses transports or a profile
if [ -z "${FASTDDS_BUILTIN_TRANSPORTS:-}${FASTDDS_DEFAULT_PROFILES_FILE:-}${FASTRTPS_DEFAULT_PROFILES_FILE:-}" ]; then
  export FASTDDS_DEFAULT_PROFILES_FILE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/config/fastdds/shm_large_frames.xml"
fi
# a DDS domain of its own per run, so parallel runs never see each other's nodes
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((100 + RANDOM % 100))}
