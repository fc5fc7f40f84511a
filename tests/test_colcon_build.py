"""`colcon build` of both packages (vla_ros and vla_ros_interfaces) in a fresh workspace, as on a robot."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def test_colcon_builds_both_packages_in_a_workspace(tmp_path):
    colcon = shutil.which("colcon", path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if colcon is None or shutil.which("cmake") is None:
        pytest.skip("needs colcon (requirements/dev.txt) and cmake (scripts/setup.sh installs both)")
    src = tmp_path / "src"
    src.mkdir()
    (src / "vla_ros").symlink_to(REPO)
    prefix = str(VENV_BIN.parent)  # the ROS wheels' install prefix (ament_cmake, rosidl, action_msgs)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "AMENT_PREFIX_PATH": prefix, "CMAKE_PREFIX_PATH": prefix}
    # colcon does not look inside a package for others: name the interfaces package's folder too (README)
    run = subprocess.run(
        [colcon, "build", "--base-paths", "src/vla_ros", "src/vla_ros/vla_ros_interfaces",
         "--cmake-args", "-DBUILD_TESTING=OFF", f"-DPython3_EXECUTABLE={sys.executable}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 packages finished" in run.stdout, run.stdout[-2000:]
    install = tmp_path / "install"
    assert (install / "vla_ros_interfaces/share/vla_ros_interfaces/action/FollowCommand.action").is_file()
    site = install / "vla_ros_interfaces/lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert list(site.glob("site-packages/vla_ros_interfaces/action/_follow_command.py"))
    for path in ("share/vla_ros/package.xml", "share/vla_ros/config/vla_node.yaml", "share/vla_ros/launch"):
        assert (install / "vla_ros" / path).exists(), path
