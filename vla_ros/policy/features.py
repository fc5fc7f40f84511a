"""SB3 features extractor: the fusion module over frozen CLIP features, plus proprioception.

Observation (Dict, produced by ``ClipFeatureVecEnv``):

| key | shape | meaning |
|---|---|---|
| ``image_embedding`` | (D,) | CLIP global image embedding |
| ``image_patches`` | (P, D) | CLIP patch tokens in the joint space |
| ``text_embedding`` | (D,) | CLIP text embedding of the command |
| ``proprio`` | (2n,) | normalised joint positions then velocities (also into the fusion with ``fusion_proprio``) |
| ``reference_patches`` | (P, D) | patch tokens of the episode's first frame (reference-frame policies only) |
| ``command_sentence`` | (W,) | the text tower's sentence embedding of the command (skill-reader policies only) |
| ``command_skill_logits`` | (5,) | a token skill reader's logits of the command, instead of the sentence |

Output: ``fusion.out_dim + 2n`` features. The fusion module is trainable; CLIP is not part of it.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from vla_ros.grounding.fusion import NUM_SKILLS, FusionOutput, RegionMaps, build_fusion
from vla_ros.keys import (
    FEAT_IMAGE_GLOBAL,
    FEAT_IMAGE_PATCHES,
    FEAT_REFERENCE_PATCHES,
    FEAT_SENTENCE,
    FEAT_SKILL_LOGITS,
    FEAT_TEXT,
    OBS_PROPRIO,
)
from vla_ros.policy.action_chunk import ActionChunk
from vla_ros.policy.network_config import NetworkConfig


def clip_feature_space(embed_dim: int, num_patches: int, proprio_dim: int,
                       reference_frame: bool = False, sentence_dim: int = 0,
                       skill_logits: bool = False) -> gym.spaces.Dict:
    """The observation space of the policy (after the frozen CLIP towers).

    ``sentence_dim``: the command's sentence embedding of that width; ``skill_logits``: a token skill reader's
    five logits of the command instead (:class:`vla_ros.policy.skill_reader.CommandSkillReader`).
    """
    box = lambda *shape: gym.spaces.Box(-np.inf, np.inf, shape=shape, dtype=np.float32)  # noqa: E731
    spaces = {
        FEAT_IMAGE_GLOBAL: box(embed_dim),
        FEAT_IMAGE_PATCHES: box(num_patches, embed_dim),
        FEAT_TEXT: box(embed_dim),
        OBS_PROPRIO: box(proprio_dim),
    }
    if reference_frame:
        spaces[FEAT_REFERENCE_PATCHES] = box(num_patches, embed_dim)
    if sentence_dim and skill_logits:
        raise ValueError("a policy observes the command's sentence embedding or a token reader's logits, not both")
    if sentence_dim:
        spaces[FEAT_SENTENCE] = box(sentence_dim)
    if skill_logits:
        spaces[FEAT_SKILL_LOGITS] = box(NUM_SKILLS)
    return gym.spaces.Dict(spaces)


class FusionFeaturesExtractor(BaseFeaturesExtractor):
    """Fusion of CLIP image and text features, concatenated with proprioception.

    ``image_scale`` / ``text_scale`` buffers (1 by default) zero a modality for the image-blind and
    command-blind ablations without changing the network.
    """

    def __init__(self, observation_space: gym.spaces.Dict, network: NetworkConfig):
        num_patches, embed_dim = observation_space[FEAT_IMAGE_PATCHES].shape
        proprio_dim = observation_space[OBS_PROPRIO].shape[0]
        if not isinstance(network, NetworkConfig):
            raise TypeError(f"network must be a NetworkConfig, got {type(network).__name__}")
        network.check_embed_dim(embed_dim)
        super().__init__(observation_space, features_dim=network.fusion_dim + proprio_dim)
        self.reference_frame = FEAT_REFERENCE_PATCHES in observation_space.spaces
        if self.reference_frame != network.reference_frame:
            raise ValueError(f"the observation space {'has' if self.reference_frame else 'lacks'} reference "
                             f"patches but network.reference_frame is {network.reference_frame}")
        sentence = observation_space.spaces.get(FEAT_SENTENCE)
        self.sentence_dim = int(sentence.shape[0]) if sentence is not None else 0
        # a token skill reader's logits (read before the network) instead of the sentence embedding
        self.skill_logits = FEAT_SKILL_LOGITS in observation_space.spaces
        if self.skill_logits != network.skill_reader_tokens:
            raise ValueError(f"the observation space {'has' if self.skill_logits else 'lacks'} a token reader's "
                             f"skill logits but network.skill_reader_tokens is {network.skill_reader_tokens}")
        if self.sentence_dim != (0 if self.skill_logits else network.skill_reader_width):
            raise ValueError(f"the observation space's sentence embedding has width {self.sentence_dim} but "
                             f"network.skill_reader_width is {network.skill_reader_width}")
        # actions per decision of the actor this extractor feeds (its envs run chunks: vla_ros.policy.action_chunk)
        self.action_chunk = ActionChunk.of(network)
        self.patch_stitch = network.patch_stitch  # the image tower's shift-and-stitch factor (frame_forward reads it)
        self.fusion = build_fusion(network.fusion, embed_dim=embed_dim, num_patches=num_patches,
                                   out_dim=network.fusion_dim, **network.fusion_kwargs(),
                                   **({"proprio_dim": proprio_dim} if network.fusion_proprio else {}))
        self.register_buffer("image_scale", torch.ones(()))
        self.register_buffer("text_scale", torch.ones(()))

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        """Fuse a batch of observations into features."""
        return self.extract(observations)[0]

    def extract(self, observations: dict[str, torch.Tensor],
                maps: RegionMaps | None = None) -> tuple[torch.Tensor, FusionOutput]:
        """Features and the fusion's whole output (where it grounds the command) for a batch.

        ``maps``: the batch's :meth:`region_maps`, computed before (the patches are then not read).
        """
        extra = {}
        if self.sentence_dim or self.skill_logits:  # the fusion's skill reader reads one or the other
            command = observations[FEAT_SKILL_LOGITS if self.skill_logits else FEAT_SENTENCE]
            extra["sentence"] = command * self.text_scale
        if getattr(self.fusion, "proprio_dim", 0):
            extra["proprio"] = observations[OBS_PROPRIO]
        text = observations[FEAT_TEXT] * self.text_scale
        if maps is not None:
            fused = self.fusion.fuse_maps(maps, text, **extra)
        else:
            patches, reference = self._scaled_patches(observations)
            fused = self.fusion.fuse(observations[FEAT_IMAGE_GLOBAL] * self.image_scale, patches, text, reference,
                                     **extra)
        return torch.cat([fused.features, observations[OBS_PROPRIO]], dim=-1), fused

    def _scaled_patches(self, observations: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(patches, first frame's patches or None without a reference frame), both times ``image_scale``."""
        reference = observations[FEAT_REFERENCE_PATCHES] * self.image_scale if self.reference_frame else None
        return observations[FEAT_IMAGE_PATCHES] * self.image_scale, reference

    @property
    def fixed_maps(self) -> bool:
        """Whether the fusion's maps (:meth:`region_maps`) depend on no parameter being trained.

        A ``region_map`` fusion's do while its object locator (if any) is frozen, as in the policy's fits.
        """
        return hasattr(self.fusion, "fuse_maps") and not self.fusion.object_locator_trains

    @torch.no_grad()
    def region_maps(self, observations: dict[str, torch.Tensor]) -> RegionMaps:
        """The ``region_map`` fusion's maps of a batch (:meth:`vla_ros.grounding.fusion.RegionMapFusion.maps`)."""
        patches, reference = self._scaled_patches(observations)
        return self.fusion.maps(patches, observations[FEAT_TEXT] * self.text_scale, reference)
