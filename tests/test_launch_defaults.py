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
