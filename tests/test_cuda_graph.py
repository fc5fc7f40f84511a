"""Batch-1 CUDA-graph inference: the captured computation equals the eager policy; capture needs a GPU."""

import numpy as np
import pytest
import torch

from vla_ros.commands.export import sample_inputs
from vla_ros.keys import FEAT_IMAGE_PATCHES
from vla_ros.paths import share_path
from vla_ros.policy.cuda_graph import CudaGraphFrame
from vla_ros.policy.export import frame_forward
from vla_ros.policy.policy import Policy

CHECKPOINT = share_path("models", "policy")


@pytest.fixture(scope="module")
def policy():
    return Policy.load(CHECKPOINT)


def test_the_captured_computation_equals_the_eager_policy_on_simulator_frames(policy):
    frames, commands, states = sample_inputs(policy, 8, seed=3)
    for frame, command, state in zip(frames, commands, states):
        expected = policy.normalized_action(frame, command, state)
        proprio = torch.as_tensor(policy.normalizer(state[None]), dtype=torch.float32)
        with torch.inference_mode():
            action, image, patches = frame_forward(policy.encoder.model.visual, policy.network,
                                                   policy.encoder.preprocess(frame),
                                                   policy.encoder.encode_text([command]), proprio)
        assert np.allclose(action.numpy()[0], expected, atol=1e-5)
        assert torch.allclose(patches, policy.last_features[FEAT_IMAGE_PATCHES], atol=1e-5)
        assert torch.allclose(image.norm(dim=-1), torch.ones(1))


def test_cuda_graphs_without_cuda_are_a_clear_error(policy):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA device"):
        Policy.load(CHECKPOINT, cuda_graphs=True)
    with pytest.raises(RuntimeError, match="CUDA"):
        CudaGraphFrame(policy.encoder.model.visual, policy.network, policy.encoder.image_size,
                       policy.encoder.embed_dim, 2 * policy.num_joints, torch.float32, "cpu")
    assert Policy.load(CHECKPOINT).cuda_graph is None  # auto: off where it does not apply


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_graph_replay_selects_the_eager_targets(policy, precision):
    graphed = Policy.load(CHECKPOINT, device="cuda", precision=precision, cuda_graphs=True)
    eager = Policy.load(CHECKPOINT, device="cuda", precision=precision, cuda_graphs=False)
    assert graphed.cuda_graph is not None and eager.cuda_graph is None
    frames, commands, states = sample_inputs(policy, 6, seed=4)
    for frame, command, state in zip(frames, commands, states):  # new inputs each replay
        a, b = graphed.select_action(frame, command, state), eager.select_action(frame, command, state)
        assert np.allclose(a, b, atol=1e-3 if precision == "fp16" else 1e-5)
    assert graphed.last_grounding is not None
