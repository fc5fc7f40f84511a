"""ONNX export of the shipped policy: parity with PyTorch on CPU, and the onnxruntime backend."""

import json
import shutil

import numpy as np
import pytest

from vla_ros.commands.export import sample_inputs
from vla_ros.paths import share_path
from vla_ros.policy.checkpoint import CheckpointError
from vla_ros.policy.export import export_onnx, parity_report
from vla_ros.policy.policy import ONNX_DIR, Policy


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("ckpt") / "policy"
    shutil.copytree(share_path("models", "policy"), checkpoint, ignore=shutil.ignore_patterns(ONNX_DIR))
    policy = Policy.load(checkpoint)
    files = {p: export_onnx(policy, checkpoint / ONNX_DIR, fp16=p == "fp16") for p in ("fp32", "fp16")}
    return checkpoint, policy, files


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnxruntime_matches_pytorch_on_simulator_frames(exported, precision):
    _, policy, files = exported
    frames, commands, states = sample_inputs(policy, 12, seed=5)
    report = parity_report(policy, files[precision], frames, commands, states, fp16=precision == "fp16")
    assert report["actions_match"] and report["same_direction"], report
    limit = 1e-4 if precision == "fp32" else 2e-2
    assert report["max_abs_diff_image_embedding"] < limit and report["max_abs_diff_text_embedding"] < limit


def test_metadata_describes_inputs_and_both_precisions(exported):
    checkpoint, policy, _ = exported
    meta = json.loads((checkpoint / ONNX_DIR / "onnx_metadata.json").read_text())
    assert meta["image_size"] == policy.encoder.image_size and meta["joint_names"] == list(policy.joint_names)
    assert set(meta["files"]) == {"fp32", "fp16"} and len(meta["normalisation"]["mean"]) == 3
    space = policy.encoder.preprocessor.colour_space  # the shipped CLIP reads value, saturation and hue
    assert space == "vsh" and meta["normalisation"]["colour_space"] == space
    assert meta["normalisation"]["input_layout"] == "NCHW VSH float"
    # the shipped CLIP's text tower is a masked (Hugging Face) encoder: its graph takes any command length
    assert meta["text_dynamic_length"] is policy.encoder.pretrained_text is True


def test_the_text_graph_gives_the_same_embedding_at_any_length(exported):
    from vla_ros.policy.export import onnx_session

    checkpoint, policy, files = exported
    session = onnx_session(files["fp32"].text_encoder)
    commands = ["touch the crimson orb", "please move your gripper over to the small green cylinder on the left"]
    tokens = policy.encoder.tokenize(commands).numpy().astype(np.int64)
    full = session.run(None, {"tokens": tokens})[0]
    trimmed = session.run(None, {"tokens": tokens[:, : int((tokens != 0).sum(1).max())]})[0]
    np.testing.assert_allclose(trimmed, full, atol=1e-5)
    np.testing.assert_allclose(full, policy.encoder.encode_text(commands).numpy(), atol=1e-4)


def test_onnxruntime_backend_selects_the_same_targets(exported):
    checkpoint, policy, _ = exported
    onnx_policy = Policy.load(checkpoint, backend="onnxruntime")
    frames, commands, states = sample_inputs(policy, 6, seed=9)
    for frame, command, state in zip(frames, commands, states):
        a = policy.select_action(frame, command, state)
        b = onnx_policy.select_action(frame, command, state)
        assert np.allclose(a, b, atol=1e-4)


def test_onnxruntime_backend_without_export_is_a_clear_error(tmp_path):
    checkpoint = tmp_path / "policy"
    shutil.copytree(share_path("models", "policy"), checkpoint, ignore=shutil.ignore_patterns(ONNX_DIR))
    with pytest.raises(CheckpointError, match="vla-ros export"):
        Policy.load(checkpoint, backend="onnxruntime")
