"""The typed network configuration: validation before allocation, round trips, every shipped checkpoint loads."""

import json
import math
import shutil
import time
from pathlib import Path

import pytest

from vla_ros.policy.checkpoint import CheckpointError, load_network, read_config
from vla_ros.policy.network_config import NetworkConfig, NetworkConfigError

MODELS = Path(__file__).resolve().parents[1] / "models"
POLICIES = [p.parent for p in sorted(MODELS.glob("**/policy.safetensors"))]


def test_every_shipped_policy_checkpoint_loads_and_its_network_round_trips():
    assert len(POLICIES) >= 11  # the shipped policy and the policy ablations
    for folder in POLICIES:
        network, config = load_network(folder)
        typed = NetworkConfig.from_dict(config["network"], str(folder))
        assert NetworkConfig.from_dict(typed.to_dict()) == typed
        assert network.features_extractor.fusion.num_patches == typed.num_patches


def test_old_checkpoints_without_newer_fields_get_the_values_they_were_trained_with():
    old = {"fusion": "cross_attention", "fusion_dim": 256, "hidden_dim": 256, "heads": 4, "grid_size": [4, 4],
           "net_arch": {"pi": [64], "vf": [64]}, "activation": "tanh", "log_std_init": 0.0}
    typed = NetworkConfig.from_dict(old)
    assert (typed.reference_frame, typed.peak_window, typed.patch_stitch, typed.map_weights,
            typed.text_features) == (False, 0.0, 1, True, 0)


@pytest.mark.parametrize("change, field", [
    ({"colour_boost": 1}, "colour_boost"),  # unknown option
    ({"net_arch": {"pi": [8192, 8192], "vf": [64]}}, "net_arch.pi[0]"),  # oversized
    ({"net_arch": {"pi": [64] * 20, "vf": [64]}}, "net_arch.pi"),
    ({"peak_window": float("nan")}, "peak_window"),
    ({"log_std_init": math.inf}, "log_std_init"),
    ({"fusion_dim": True}, "fusion_dim"),  # a bool is not a width
    ({"fusion_dim": "256"}, "fusion_dim"),
    ({"grid_size": [16]}, "grid_size"),
    ({"fusion": "film"}, "fusion"),
    ({"fusion": "cross_attention"}, "peak_window"),  # an option of region_map on another kind
    ({"reference_prior": True, "reference_frame": False}, "reference_prior"),
    ({"reference_prior": False, "current_estimate": True}, "current_estimate"),  # nothing to add it to
    ({"current_estimate": 1}, "current_estimate"),
    ({"reference_prior": False, "prior_spread": 1.0}, "prior_spread"),  # nothing to spread
    ({"prior_spread": -1.0}, "prior_spread"),
    ({"prior_spread": float("inf")}, "prior_spread"),
])
def test_a_bad_field_is_refused_with_its_name(change, field):
    shipped = json.loads((MODELS / "policy" / "config.json").read_text())["network"]
    with pytest.raises(NetworkConfigError) as error:
        NetworkConfig.from_dict({**shipped, **change}, "some/config.json")
    assert "some/config.json" in str(error.value) and field in str(error.value)


def test_a_hostile_checkpoint_is_refused_before_anything_is_allocated(tmp_path):
    folder = tmp_path / "policy"
    shutil.copytree(MODELS / "policy", folder, ignore=shutil.ignore_patterns("clip", "*.png"))
    config = json.loads((folder / "config.json").read_text())
    config["network"]["net_arch"] = {"pi": [8192, 8192], "vf": [8192, 8192]}
    (folder / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"config.json: network.net_arch.pi\[0\]"):
        load_network(folder)
    assert time.perf_counter() - start < 1.0  # refused from the JSON, no 8192-wide layer was built
    config["network"]["net_arch"] = {"pi": [256, 256], "vf": [256, 256]}
    config["clip"]["num_patches"] = 64  # the map's size disagrees with the grid
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="num_patches"):
        read_config(folder)


def test_fusion_modules_take_only_their_own_options():
    from vla_ros.grounding.fusion import LateFusion, RegionMapFusion

    with pytest.raises(TypeError):
        LateFusion(embed_dim=8, num_patches=4, heads=2)
    with pytest.raises(TypeError):
        RegionMapFusion(embed_dim=8, num_patches=4, grid_size=(2, 2), heads=2)


@pytest.mark.parametrize("section, field, value, message", [
    ("action", "max_delta", "nan", "NaN or infinite"),
    ("action", "max_delta", 0.0, "> 0"),
    ("proprio_normalization", "position_half_range", 0.0, "> 0"),
    ("action", "lower", 99.0, "below action.upper"),
    ("action", "upper", "x", "list of numbers"),
])
def test_a_checkpoint_whose_numbers_would_give_nan_actions_is_refused(tmp_path, section, field, value, message):
    folder = tmp_path / "policy"
    shutil.copytree(MODELS / "policy", folder, ignore=shutil.ignore_patterns("clip", "*.png"))
    config = json.loads((folder / "config.json").read_text())
    values = config[section][field]
    values[0] = float(value) if value == "nan" else value
    (folder / "config.json").write_text(json.dumps(config))  # json writes NaN, as a hostile file may carry it
    with pytest.raises(CheckpointError, match=rf"config.json: {section}.{field}.*{message}|{message}"):
        read_config(folder)


def test_unreadable_config_files_are_refused_with_the_file_named(tmp_path):
    folder = tmp_path / "policy"
    shutil.copytree(MODELS / "policy", folder, ignore=shutil.ignore_patterns("clip", "*.png"))
    for content, message in ((b"\xff\xfe{", "invalid JSON or not UTF-8"), (b"[1, 2]", "JSON object"),
                             (b" " * ((1 << 20) + 1), "at most")):
        (folder / "config.json").write_bytes(content)
        with pytest.raises(CheckpointError, match=message) as error:
            read_config(folder)
        assert "config.json" in str(error.value)


def test_log_lines_quote_at_most_a_bounded_part_of_hostile_text():
    from vla_ros.nodes.vla_node import LOG_TEXT_LIMIT, for_log

    huge = "x" * 1_000_000
    line = for_log(f"unsupported encoding {huge!r}")
    assert len(line) < LOG_TEXT_LIMIT + 40 and line.endswith("more characters]")
    assert for_log("short") == "short"


def test_loader_errors_name_the_file_and_field(tmp_path):
    """Corrupt weights, a config without clip.path and a CLIP config that is not UTF-8: each error names its file
    (before: the folder only, a bare KeyError 'path', a bare UnicodeDecodeError)."""
    import struct

    from vla_ros.policy.policy import Policy

    folder = tmp_path / "policy"
    shutil.copytree(MODELS / "policy", folder, ignore=shutil.ignore_patterns("clip", "*.png"))
    shutil.copytree(MODELS / "clip", folder / "clip")
    weights = folder / "policy.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")  # a header length of 1 TB
    with pytest.raises(CheckpointError, match=r"policy\.safetensors: cannot read weights"):
        load_network(folder)
    weights.write_bytes(original)
    config = json.loads((folder / "config.json").read_text())
    del config["clip"]["path"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: clip\.path"):
        read_config(folder)
    config["clip"]["path"] = "clip"
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "clip" / "open_clip_config.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ValueError, match=r"open_clip_config\.json: invalid JSON or not UTF-8"):
        Policy.load(folder)
