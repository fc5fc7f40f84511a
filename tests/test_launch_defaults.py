"""Launch arguments override config/*.yaml, so their defaults must be the YAML's (launch_ros is not needed)."""

import yaml

from vla_ros.launch_support import COMMON_ARGUMENTS
from vla_ros.paths import share_path


def test_launch_argument_defaults_are_the_config_files_values():
    configured = yaml.safe_load(share_path("config", "vla_node.yaml").read_text())["/**"]["ros__parameters"]
    defaults = {name: default for name, default, _ in COMMON_ARGUMENTS}
    shared = set(defaults) & set(configured) - {"policy_path"}  # the YAML's "" means the shipped policy
    assert {"control_rate_hz", "device", "backend", "output_mode"} <= shared
    for name in shared:
        assert type(configured[name])(defaults[name]) == configured[name], name
    # the shipped policy acts at the rate it was trained at (control_dt 0.05 s)
    assert float(defaults["control_rate_hz"]) == 20.0


def test_both_launch_files_select_the_large_data_transport_first():
    import ast

    for name in ("vla.launch.py", "sim.launch.py"):
        tree = ast.parse(share_path("launch", name).read_text())
        calls = [node.func.id for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]
        assert "large_data_transport_action" in calls, name
        # before any node is created: the environment is read when a node process starts
        assert calls.index("large_data_transport_action") < calls.index("node_action"), name


def test_the_large_frame_profile_applies_unless_the_environment_chooses():
    import xml.etree.ElementTree as ET

    from vla_ros.launcher import FASTDDS_PROFILE_VARIABLE, large_frame_transport_env

    chosen = large_frame_transport_env({})
    profile = chosen[FASTDDS_PROFILE_VARIABLE]
    root = ET.parse(profile).getroot()
    ns = {"f": "http://www.eprosima.com"}
    shm = [d for d in root.iterfind(".//f:transport_descriptor", ns) if d.findtext("f:type", namespaces=ns) == "SHM"]
    assert shm and int(shm[0].findtext("f:segment_size", namespaces=ns)) >= 4 * 640 * 480 * 3  # frames queue
    assert root.find(".//f:participant", ns).get("is_default_profile") == "true"
    for name in ("FASTDDS_BUILTIN_TRANSPORTS", "FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        assert large_frame_transport_env({name: "LARGE_DATA"}) == {}, name
