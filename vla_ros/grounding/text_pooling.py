"""How a pretrained text tower's token states become one joint-space vector.

``mean`` (open_clip's ``HFTextEncoder`` with a mean pooler): average the transformer's token states over the
command, then project the average into the joint space. ``projected_tokens``: project every token state, then
average the projections. With a non-linear projection the two differ: in ``projected_tokens`` each word
reaches the joint space on its own (mixed with its context only by the frozen transformer), so a command in
two unfamiliar words ("the cherry spheroid") is the sum of two words the projection has to carry, rather than
one unfamiliar average it has never seen. The projection's weights are the same in both, so a checkpoint's
state dict does not change; the choice is recorded in the model config under :data:`TEXT_POOLING_KEY`, which
open_clip never sees (:func:`open_clip_cfg` removes it) and :func:`apply_text_pooling` carries out.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

TEXT_POOLING_KEY = "vla_text_pooling"
TEXT_POOLINGS = ("mean", "projected_tokens")


def text_pooling(model_cfg: dict[str, Any]) -> str:
    """The pooling a model config asks for (``mean`` when it names none); ``ValueError`` for unknown ones."""
    pooling = model_cfg.get(TEXT_POOLING_KEY, "mean")
    if pooling not in TEXT_POOLINGS:
        raise ValueError(f"{TEXT_POOLING_KEY} must be one of {TEXT_POOLINGS}, got {pooling!r}")
    if pooling != "mean" and not model_cfg.get("text_cfg", {}).get("hf_model_name"):
        raise ValueError(f"{TEXT_POOLING_KEY}={pooling!r} needs a pretrained (Hugging Face) text tower")
    return pooling


def open_clip_cfg(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """``model_cfg`` without our keys, as open_clip's ``CLIP(**cfg)`` accepts it."""
    text_pooling(model_cfg)  # validate before it is dropped
    if TEXT_POOLING_KEY not in model_cfg:
        return model_cfg
    cfg = copy.deepcopy(model_cfg)
    del cfg[TEXT_POOLING_KEY]
    return cfg


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of ``states`` (B, L, D) where ``mask`` (B, L) is non-zero."""
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def pool_projected(text: torch.nn.Module, states: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Joint-space vectors (B, E) of token states (B, L, D) under ``pooling``; ``text`` holds ``proj``."""
    if pooling == "projected_tokens":
        return masked_mean(text.proj(states), mask)
    return text.proj(masked_mean(states, mask))


def token_states(text: torch.nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of a Hugging Face text tower ``text``: (B, L) token ids -> its last hidden states (B, L, D).

    Also returns the (B, L) mask (long, 1 on real tokens) the padding was masked with; every pooling here reads both.
    """
    mask = (tokens != text.config.pad_token_id).long()
    return text.transformer(input_ids=tokens, attention_mask=mask).last_hidden_state, mask


def embed_text_and_sentence(text: torch.nn.Module, tokens: torch.Tensor,
                            pooling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of a Hugging Face text tower ``text``: (B, L) token ids -> L2-normalised float32 embeddings.

    Returns the joint-space text embedding (B, E), pooled and projected under ``pooling``, and the sentence
    embedding (B, W): the masked mean of the token states before any projection. ``ClipEncoder`` and the
    exported ONNX text graph both call this, so the two cannot drift apart.
    """
    return embed_text_sentence_and_states(text, tokens, pooling)[:2]


def embed_text_sentence_and_states(text: torch.nn.Module, tokens: torch.Tensor, pooling: str) \
        -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`embed_text_and_sentence` plus what its one pass read them from: the token states and their mask.

    A token skill reader scores those states, so a new command needs one transformer pass for all three.
    """
    states, mask = token_states(text, tokens)
    projected = pool_projected(text, states, mask, pooling)
    sentence = masked_mean(states.float(), mask)
    return F.normalize(projected.float(), dim=-1), F.normalize(sentence, dim=-1), states, mask


def _projected_tokens_forward(self, x: torch.Tensor) -> torch.Tensor:
    states, mask = token_states(self, x)
    return pool_projected(self, states, mask, "projected_tokens")


def apply_text_pooling(model: torch.nn.Module, model_cfg: dict[str, Any]) -> torch.nn.Module:
    """Make ``model.text`` pool as ``model_cfg`` says; returns ``model``.

    ``projected_tokens`` replaces the text tower's ``forward`` on this instance (``encode_text``, tracing and
    ONNX export all go through it); ``mean`` leaves open_clip's own.
    """
    pooling = text_pooling(model_cfg)
    if pooling == "mean":
        return model
    from open_clip.hf_model import HFTextEncoder, MeanPooler

    text = model.text
    if not isinstance(text, HFTextEncoder) or not isinstance(text.pooler, MeanPooler) or text.output_tokens:
        raise ValueError(f"{TEXT_POOLING_KEY}={pooling!r} needs a Hugging Face text tower with a mean pooler "
                         "that returns no tokens")
    text.forward = _projected_tokens_forward.__get__(text)
    text.pooling = pooling
    return model
