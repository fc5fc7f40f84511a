"""Package foundation: import root, data folders, CLI, keys, launch files, linters."""

import importlib
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import vla_ros
from vla_ros import keys
from vla_ros.cli import BENCHMARKS, COMMANDS, build_parser
from vla_ros.graph import robot_graph, sim_graph
from vla_ros.paths import share_dir, share_path

ROOT = Path(__file__).resolve().parent.parent


def test_import_does_not_pull_rclpy_or_torch():
    code = "import sys, vla_ros, vla_ros.cli, vla_ros.keys, vla_ros.graph; " \
           "print('rclpy' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert vla_ros.__version__


def test_share_folders_found():
    assert (share_dir() / "sim").is_dir()
    assert share_path("config").name == "config"
    with pytest.raises(ValueError, match="unknown data folder"):
        share_path("etc", "passwd")


def test_package_xml_is_format_3_and_declares_every_ros_package_and_rosdep_key():
    import re

    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "vla_ros"
    assert root.findtext("license") == "Apache-2.0"
    deps = {e.text for e in root if e.tag.endswith("depend")}
    # every ROS interface package the code imports ("from sensor_msgs.msg import ...", "from rclpy ...")
    imported = set()
    for path in (ROOT / "vla_ros").rglob("*.py"):
        imported |= set(re.findall(r"^\s*from (\w+)\.(?:msg|srv|action) import", path.read_text(), re.M))
    assert imported and imported <= deps, f"imported but not declared: {sorted(imported - deps)}"
    assert {"rclpy", "rcl_interfaces", "builtin_interfaces"} <= deps
    # Python dependencies appear by their rosdep keys, never by pip names
    assert {"python3-numpy", "python3-torch", "python3-mujoco-pip", "python3-stable-baselines3-pip"} <= deps
    assert not deps & {"torch", "numpy", "open_clip_torch", "stable-baselines3", "mujoco", "gymnasium"}
    assert root.find("export/build_type").text == "ament_python"


def test_command_bytes_round_trip_and_errors():
    text = "schiebe den roten Würfel nach links"
    encoded = keys.encode_command(text)
    assert encoded.dtype == np.uint8 and encoded.shape == (keys.COMMAND_MAX_BYTES,)
    assert keys.decode_command(encoded) == text
    with pytest.raises(ValueError, match="at most"):
        keys.encode_command("x" * (keys.COMMAND_MAX_BYTES + 1))
    with pytest.raises(TypeError):
        keys.encode_command(b"bytes")
    with pytest.raises(ValueError, match="NUL"):
        keys.encode_command("a\x00b")


@pytest.mark.parametrize("argv", [[name] for name in COMMANDS] + [["bench", w] for w in BENCHMARKS])
def test_every_subcommand_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*argv, "--help"])
    assert exit_info.value.code == 0
    assert "usage: vla-ros" in capsys.readouterr().out


def test_reporting_commands_offer_json(capsys):
    for argv in [["eval"], ["eval-clip"], *(["bench", w] for w in BENCHMARKS)]:
        with pytest.raises(SystemExit):
            build_parser().parse_args([*argv, "--help"])
        assert "--json" in capsys.readouterr().out, argv


def test_graph_specs_point_at_real_modules_and_param_files():
    for spec in [*sim_graph(), *robot_graph()]:
        module = importlib.import_module(spec.module)
        assert callable(module.main)
        for path in spec.param_file_paths():
            assert Path(path).is_file()
    setup_text = (ROOT / "setup.py").read_text()
    for spec in sim_graph():
        assert f"{spec.executable} = {spec.module}:main" in setup_text


@pytest.mark.parametrize("launch_file", ["vla.launch.py", "sim.launch.py"])
def test_launch_files_build_a_launch_description(launch_file):
    pytest.importorskip("launch_ros", reason="launch_ros is not installable from PyPI")
    from launch.actions import DeclareLaunchArgument
    from launch.launch_description_sources import get_launch_description_from_python_launch_file

    from launch import LaunchDescription

    description = get_launch_description_from_python_launch_file(str(ROOT / "launch" / launch_file))
    assert isinstance(description, LaunchDescription)
    arguments = [e for e in description.entities if isinstance(e, DeclareLaunchArgument)]
    assert arguments and all(a.description and a.description != "no description given" for a in arguments)


def test_ruff_lint_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
