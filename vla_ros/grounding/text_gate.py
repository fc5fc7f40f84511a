"""Does a command read as words that name an object? A linear gate on the text tower's sentence embedding.

The CLIP's presence score cannot tell made-up words from new real words: both are unfamiliar to its text
projection and both match no region strongly. The pretrained text tower itself can: all-MiniLM-L6-v2's
sentence embedding (the mean of its last hidden states, before the CLIP's projection) of "the cherry dice"
lies near other English object descriptions, that of "qzkx fjwoa" does not. :class:`TextGate` is a logistic
classifier on that embedding, trained by :func:`fit_text_gate` on

- **positives**: object captions of the CLIP's training vocabulary (palette and named colours, shape nouns,
  training frames; :class:`vla_ros.grounding.data.CaptionSampler`), so no word of a word split is used;
- **negatives**: phrases of made-up words built from syllables (:func:`made_up_phrase`).

Its threshold is chosen with the presence bars by ``vla-ros calibrate-refusal`` on validation commands. No
rclpy; the weights live in the policy's ``config.json`` (``refusal.text_gate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vla_ros.grounding.vocabulary import MADE_UP_SYLLABLES, pseudo_word

# syllables of made-up words (the negatives): the presence term's, and ten more; no English stems
_SYLLABLES = MADE_UP_SYLLABLES + ("qe", "zy", "vr", "oj", "pt", "hu", "ef", "gn", "wu", "yx")


@dataclass(frozen=True)
class TextGate:
    """``weights`` . sentence embedding + ``bias`` >= ``threshold``: the command reads as naming an object."""

    weights: tuple[float, ...]
    bias: float
    threshold: float
    calibration: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        weights = np.asarray(self.weights, dtype=np.float64)
        if weights.ndim != 1 or not 8 <= len(weights) <= 4096:
            raise ValueError(f"text gate weights must be a vector of 8..4096 numbers, got shape {weights.shape}")
        if not np.all(np.isfinite(weights)) or np.abs(weights).max() > 1e4:
            raise ValueError("text gate weights must be finite and under 1e4 in magnitude")
        for name in ("bias", "threshold"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not np.isfinite(value) or abs(value) > 1e4:
                raise ValueError(f"text gate {name} must be a finite number under 1e4, got {value!r}")

    @property
    def width(self) -> int:
        """The sentence embedding's width the gate reads."""
        return len(self.weights)

    def scores(self, sentences: torch.Tensor) -> np.ndarray:
        """Gate scores (N,) of sentence embeddings (N, width)."""
        sentences = torch.as_tensor(sentences, dtype=torch.float64)
        if sentences.ndim != 2 or sentences.shape[1] != self.width:
            raise ValueError(f"sentence embeddings must be (N, {self.width}), got {tuple(sentences.shape)}")
        return (sentences @ torch.tensor(self.weights, dtype=torch.float64) + self.bias).numpy()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TextGate":
        """The gate stored in a refusal rule (``ValueError`` for a malformed one)."""
        if not isinstance(data, dict):
            raise ValueError(f"text_gate must be a mapping, got {type(data).__name__}")
        try:
            return cls(weights=tuple(float(w) for w in data["weights"]), bias=float(data["bias"]),
                       threshold=float(data["threshold"]), calibration=dict(data.get("calibration") or {}))
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed text gate: {error}") from error

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (weights rounded to 6 decimals)."""
        return {"weights": [round(float(w), 6) for w in self.weights], "bias": round(float(self.bias), 6),
                "threshold": float(self.threshold), "calibration": dict(self.calibration)}


def made_up_phrase(rng: np.random.Generator) -> str:
    """1-5 made-up words (a negative of the gate)."""
    return " ".join(pseudo_word(rng, _SYLLABLES) for _ in range(int(rng.integers(1, 6))))


def gate_training_texts(count: int, seed: int = 0, instructions=None, vocabulary=None) -> tuple[list[str], list[str]]:
    """``count`` object captions in the CLIP's training vocabulary and ``count`` made-up phrases."""
    from vla_ros.envs.instructions import load_instructions
    from vla_ros.grounding.data import CaptionSampler
    from vla_ros.grounding.vocabulary import load_clip_vocabulary

    instructions = instructions or load_instructions()
    vocabulary = vocabulary or load_clip_vocabulary(instructions=instructions)
    sampler = CaptionSampler.from_instructions(instructions, vocabulary=vocabulary, attribute_fraction=0.0,
                                               command_fraction=0.6)
    rng = np.random.default_rng(seed)
    positives = [sampler.object_caption(int(rng.integers(len(sampler.colour_names))),
                                        int(rng.integers(len(sampler.shape_names))), rng)[0] for _ in range(count)]
    negatives = [made_up_phrase(rng) for _ in range(count)]
    return positives, negatives


def fit_text_gate(encoder, count: int = 4000, seed: int = 0, steps: int = 500) -> tuple[np.ndarray, float]:
    """Logistic regression (weights, bias) on ``encoder.encode_sentences`` of :func:`gate_training_texts`."""
    positives, negatives = gate_training_texts(count, seed)
    x = torch.cat([embed_sentences(encoder, positives), embed_sentences(encoder, negatives)]).double()
    y = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))]).double()
    generator = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], 1).double()
    with torch.no_grad():
        model.weight.normal_(0.0, 0.01, generator=generator)
        model.bias.zero_()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):  # full batch: a few thousand 384-d rows
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
        loss.backward()
        optimiser.step()
    return model.weight.detach().squeeze(0).numpy(), float(model.bias.detach())


def embed_sentences(encoder, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """``encoder.encode_sentences`` of many texts, in batches (N, width)."""
    return torch.cat([encoder.encode_sentences(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
