#!/usr/bin/env bash
# Builds the vla_ros_interfaces package (the FollowCommand action) with plain CMake against the
# ROS 2 wheels in .venv and installs it into .venv, so nothing needs sourcing at run time.
# On a ROS machine use colcon instead (README). Called by scripts/setup.sh; about 12 s.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(pwd)/.venv
py=$venv/bin/python
# The wheels' rosidl Python-generator CMake exports name the wheel build machine's Python and numpy
# include directories; point them at this interpreter's before configuring (idempotent).
py_include=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
np_include=$("$py" -c "import numpy; print(numpy.get_include())")
{ grep -rl "/opt/python/cp311-cp311" "$venv"/share/*/cmake/ 2>/dev/null || true; } | while IFS= read -r f; do
  sed -i -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$np_include#g" \
         -e "s#/opt/python/cp311-cp311/include/python3.11#$py_include#g" "$f"
done
build=build/vla_ros_interfaces
mkdir -p build
export AMENT_PREFIX_PATH=$venv CMAKE_PREFIX_PATH=$venv PATH=$venv/bin:$PATH
cmake -S vla_ros_interfaces -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
  -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$py" -DPYTHON_EXECUTABLE="$py" \
  -DCMAKE_INSTALL_RPATH="$venv/lib" -DCMAKE_INSTALL_RPATH_USE_LINK_PATH=ON >"$build.log" 2>&1 \
  || { tail -40 "$build.log" >&2; exit 1; }
cmake --build "$build" -j "$(nproc)" >>"$build.log" 2>&1 || { tail -40 "$build.log" >&2; exit 1; }
cmake --install "$build" >>"$build.log" 2>&1 || { tail -40 "$build.log" >&2; exit 1; }
"$py" -c "from vla_ros_interfaces.action import FollowCommand; FollowCommand.Goal(command='x')" \
  || { echo "build_interfaces: the installed package does not import" >&2; exit 1; }
echo "build_interfaces: vla_ros_interfaces installed into $venv"
