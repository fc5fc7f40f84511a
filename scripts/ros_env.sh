# Sourced by scripts/test.sh and scripts/demo.sh: the environment every ROS process of theirs shares.
export MUJOCO_GL=${MUJOCO_GL:-egl}
# Fast DDS large-data transports: camera frames between processes (see vla_ros/launcher.py)
export FASTDDS_BUILTIN_TRANSPORTS=${FASTDDS_BUILTIN_TRANSPORTS:-LARGE_DATA}
# a DDS domain of its own per run, so parallel runs never see each other's nodes
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((100 + RANDOM % 100))}
