"""A VecEnv wrapper that runs the frozen CLIP towers once per vectorised step for all envs.

Raw env observations (image, command bytes, proprioception) become CLIP features (global image
embedding, patch tokens, cached text embedding, normalised proprioception). ``batched=False``
encodes env by env instead: the slower baseline ``vla-ros bench train`` compares against.
``reference_frame=True`` adds the patch tokens of each env's first frame of its current episode;
``sentence=True`` the text tower's sentence embedding of each command (a skill reader reads it), or
``skill_reader`` (a :class:`vla_ros.policy.skill_reader.CommandSkillReader`) a token reader's logits. The states a
chunked step passed (``info["chunk_steps"]``, :class:`vla_ros.policy.envs.ExpertLabelWrapper`) are encoded too.
"""

from __future__ import annotations

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from vla_ros.keys import (
    FEAT_IMAGE_GLOBAL,
    FEAT_IMAGE_PATCHES,
    FEAT_REFERENCE_PATCHES,
    FEAT_SENTENCE,
    FEAT_SKILL_LOGITS,
    FEAT_TEXT,
    OBS_COMMAND,
    OBS_IMAGE,
    OBS_PROPRIO,
    decode_command,
)
from vla_ros.policy.features import clip_feature_space
from vla_ros.policy.proprio import ProprioNormalizer


class ClipFeatureVecEnv(VecEnvWrapper):
    """Replace image + command observations by frozen CLIP features, batched over all envs."""

    def __init__(self, venv: VecEnv, encoder, normalizer: ProprioNormalizer, batched: bool = True,
                 reference_frame: bool = False, sentence: bool = False, skill_reader=None):
        if (sentence or skill_reader is not None) and not encoder.sentence_dim:
            raise ValueError("sentence embeddings and token readers need a CLIP with a pretrained text tower")
        if sentence and skill_reader is not None:
            raise ValueError("a policy observes the sentence embedding or a token reader's logits, not both")
        self.encoder = encoder
        self.sentence = sentence
        self.skill_reader = skill_reader
        self.normalizer = normalizer
        self.batched = batched
        self.reference_frame = reference_frame
        space = clip_feature_space(encoder.embed_dim, encoder.num_patches, 2 * normalizer.num_joints,
                                   reference_frame, encoder.sentence_dim if sentence else 0,
                                   skill_logits=skill_reader is not None)
        super().__init__(venv, observation_space=space)
        self.commands: list[str] = [""] * venv.num_envs
        self.reference: np.ndarray | None = None  # (num_envs, P, D) first-frame patches of each episode

    @classmethod
    def for_network(cls, venv: VecEnv, network, encoder, normalizer: ProprioNormalizer,
                    skill_reader=None) -> ClipFeatureVecEnv:
        """The wrapper that observes what ``network`` (an SB3 policy with a CLIP features extractor) reads.

        Its first frame's patches with a reference-frame fusion, the sentence embedding for a sentence skill reader
        and a token reader's logits for a token one. ``skill_reader``: the
        :class:`~vla_ros.policy.skill_reader.CommandSkillReader` to use (a loaded ``Policy`` keeps one with its
        cache); None builds it from the network's own buffers.
        """
        from vla_ros.policy.skill_reader import CommandSkillReader

        extractor = network.features_extractor
        if skill_reader is None:
            skill_reader = CommandSkillReader.of_network(network, encoder)
        return cls(venv, encoder, normalizer, reference_frame=getattr(extractor, "reference_frame", False),
                   sentence=bool(getattr(extractor, "sentence_dim", 0)), skill_reader=skill_reader)

    @torch.no_grad()
    def features(self, images: np.ndarray, commands: list[str], proprio: np.ndarray) -> dict[str, np.ndarray]:
        """CLIP features for a batch of raw observations."""
        if self.batched:
            image = self.encoder.encode_images(images)
            glob, patches = image.global_embedding, image.patches
        else:
            parts = [self.encoder.encode_images(frame[None]) for frame in images]
            glob = torch.cat([p.global_embedding for p in parts])
            patches = torch.cat([p.patches for p in parts])
        text = self.encoder.encode_text(commands)
        feats = {
            FEAT_IMAGE_GLOBAL: glob.float().cpu().numpy(),
            FEAT_IMAGE_PATCHES: patches.float().cpu().numpy(),
            FEAT_TEXT: text.float().cpu().numpy(),
            OBS_PROPRIO: self.normalizer(proprio),
        }
        if self.sentence:
            feats[FEAT_SENTENCE] = self.encoder.encode_sentences(commands).float().cpu().numpy()
        if self.skill_reader is not None:
            feats[FEAT_SKILL_LOGITS] = self.skill_reader.logits(commands).numpy()
        return feats

    def _convert(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.commands = [decode_command(c) for c in obs[OBS_COMMAND]]
        return self.features(obs[OBS_IMAGE], self.commands, obs[OBS_PROPRIO])

    def _with_reference(self, feats: dict[str, np.ndarray], new_episode: np.ndarray) -> dict[str, np.ndarray]:
        if not self.reference_frame:
            return feats
        if self.reference is None:
            self.reference = feats[FEAT_IMAGE_PATCHES].copy()
        self.reference[new_episode] = feats[FEAT_IMAGE_PATCHES][new_episode]
        return {**feats, FEAT_REFERENCE_PATCHES: self.reference.copy()}

    def reset(self):
        """Reset all envs and return CLIP features."""
        obs = self.venv.reset()
        self.reset_infos = self.venv.reset_infos  # VecEnvWrapper keeps its own (empty) list otherwise
        return self._with_reference(self._convert(obs), np.ones(self.num_envs, dtype=bool))

    def _convert_passed(self, infos: list[dict]) -> None:
        """Replace each ``info[CHUNK_STEPS]``'s raw observations by features, in one batch over all envs.

        Each becomes ``{"obs": features (n, ...), EXPERT_ACTION: (n, K * joints), TARGET_XY: (n, 2)}`` (None
        where the chunk passed none); the
        reference patches are those of the episode the states belong to (before a reset replaces them).
        """
        from vla_ros.policy.envs import CHUNK_STEPS, EXPERT_ACTION, TARGET_XY

        owners = [(i, step) for i, info in enumerate(infos) for step in info.get(CHUNK_STEPS, ())]
        if not owners:
            return
        raw = [step["obs"] for _, step in owners]
        feats = self.features(np.stack([o[OBS_IMAGE] for o in raw]), [decode_command(o[OBS_COMMAND]) for o in raw],
                              np.stack([o[OBS_PROPRIO] for o in raw]))
        env_of = np.array([i for i, _ in owners])
        if self.reference_frame:
            feats[FEAT_REFERENCE_PATCHES] = self.reference[env_of].copy()
        for i, info in enumerate(infos):
            if CHUNK_STEPS in info:
                rows = np.flatnonzero(env_of == i)
                if not rows.size:  # the chunk's first step ended the episode
                    info[CHUNK_STEPS] = None
                    continue
                steps = [owners[r][1] for r in rows]
                info[CHUNK_STEPS] = {
                    "obs": {k: v[rows] for k, v in feats.items()},
                    EXPERT_ACTION: np.array([s[EXPERT_ACTION] for s in steps], dtype=np.float32).reshape(len(rows), -1),
                    TARGET_XY: np.array([s[TARGET_XY] for s in steps], dtype=np.float32).reshape(len(rows), 2),
                }

    def step_wait(self):
        """Step all envs; terminal observations (kept for bootstrapping) and passed states are converted too."""
        obs, rewards, dones, infos = self.venv.step_wait()
        self.reset_infos = self.venv.reset_infos
        self._convert_passed(infos)
        for i in np.flatnonzero(dones):
            terminal = infos[i].get("terminal_observation")
            if terminal is not None:
                feats = self.features(terminal[OBS_IMAGE][None], [decode_command(terminal[OBS_COMMAND])],
                                      terminal[OBS_PROPRIO][None])
                if self.reference_frame:  # the finished episode's reference, before the new one replaces it
                    feats[FEAT_REFERENCE_PATCHES] = self.reference[i][None].copy()
                infos[i]["terminal_observation"] = {k: v[0] for k, v in feats.items()}
        return self._with_reference(self._convert(obs), np.asarray(dones, dtype=bool)), rewards, dones, infos
