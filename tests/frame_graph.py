"""The per-frame graph (``frame_forward``) against ``Policy.normalized_action`` on an episode's second frame."""

import torch

from vla_ros.commands.export import sample_inputs
from vla_ros.keys import FEAT_REFERENCE_PATCHES
from vla_ros.policy.export import frame_forward


def second_frame_actions(policy, seed: int):
    """(graph action (1, n), graph patches (1, P, D), policy action (n,)) for frame 2 of an episode.

    The policy acts on frame 1 first, so frame 1's patches are the reference both are given.
    """
    frames, commands, states = sample_inputs(policy, 2, seed=seed)
    policy.normalized_action(frames[0], commands[0], states[0])
    reference = policy.last_features[FEAT_REFERENCE_PATCHES]
    expected = policy.normalized_action(frames[1], commands[0], states[1])
    proprio = torch.as_tensor(policy.normalizer(states[1][None]), dtype=torch.float32)
    with torch.inference_mode():
        action, _, patches = frame_forward(policy.encoder.model.visual, policy.network,
                                           policy.encoder.preprocess(frames[1]),
                                           policy.encoder.encode_text([commands[0]]), proprio, reference)
    return action, patches, expected
