"""ament_python package definition; ``colcon build`` and ``pip install`` both use it."""

import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "vla_ros"


def tree(folder):
    """data_files entries installing every file below ``folder`` under share/vla_ros/."""
    entries = {}
    for path in glob(os.path.join(folder, "**", "*"), recursive=True):
        if os.path.isfile(path) and "__pycache__" not in path:
            entries.setdefault(os.path.join("share", PACKAGE, os.path.dirname(path)), []).append(path)
    return sorted(entries.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, PACKAGE + ".*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        *tree("launch"),
        *tree("config"),
        *tree("sim"),
        *tree("models"),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="vla_ros maintainers",
    maintainer_email="vla-ros@example.com",
    description="Language-commanded arm control: CLIP grounding + PPO policy on ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "vla-ros = vla_ros.cli:main",
            "vla_node = vla_ros.nodes.vla_node:main",
            "sim_node = vla_ros.nodes.sim_node:main",
        ],
    },
)
