"""Where the package's data folders (``sim/``, ``models/``, ``config/``, ``launch/``) live.

In a source checkout they sit beside the ``vla_ros`` import root; after ``colcon build`` or
``pip install`` they are installed under ``share/vla_ros``. ``VLA_ROS_SHARE`` overrides both.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE_NAME = "vla_ros"
_DATA_DIRS = ("sim", "models", "config", "launch")


def _candidates() -> list[Path]:
    found = []
    env = os.environ.get("VLA_ROS_SHARE")
    if env:
        found.append(Path(env))
    found.append(Path(__file__).resolve().parent.parent)  # source checkout
    found.append(Path(sys.prefix) / "share" / PACKAGE_NAME)  # pip install
    try:  # colcon / ament install
        from ament_index_python.packages import get_package_share_directory

        found.append(Path(get_package_share_directory(PACKAGE_NAME)))
    except Exception:  # ament_index_python absent or package not in an ament index
        pass
    return found


def share_dir() -> Path:
    """Return the folder holding ``sim/`` and ``models/``; raise if none is found."""
    for candidate in _candidates():
        if (candidate / "sim").is_dir():
            return candidate
    raise FileNotFoundError(
        "vla_ros data folders not found; set VLA_ROS_SHARE to the folder holding sim/ and models/"
    )


def share_path(*parts: str) -> Path:
    """Return a path inside the share folder, e.g. ``share_path("sim", "robot", "vla_arm.urdf")``."""
    if parts and parts[0] not in _DATA_DIRS:
        raise ValueError(f"unknown data folder {parts[0]!r}; expected one of {_DATA_DIRS}")
    return share_dir().joinpath(*parts)
