"""Refusing commands that name nothing in view (no rclpy; the policy, evaluation and node use it).

A command is *grounded* when some region of the frame matches it: its **presence score** is the highest
cosine similarity between the command's CLIP embedding and the region embeddings at every patch centre
(the Gaussian pooling the sim-domain CLIP was trained with, :mod:`vla_ros.grounding.regions`; its presence
term trains exactly this statistic to separate objects on the table from absent ones and nonsense). A
command scoring under the calibrated threshold is refused: the arm holds still and the reason is reported.

Commands the text encoder cannot read (not text, empty, longer than its context) are refused before any
score is computed. :class:`RefusalRule` holds the threshold and how it was calibrated
(``vla-ros calibrate-refusal``: a quantile of the scores of valid commands on validation scenes), stored in
the policy's ``config.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from vla_ros.grounding.regions import patch_centres, region_embeddings

PRESENCE_STATISTIC = "max_dense_region_similarity"
STATISTICS = (PRESENCE_STATISTIC, "max_dense_region_similarity_minus_familiarity")


@dataclass(frozen=True)
class Refusal:
    """Why a command is not acted on: ``kind`` is ``unreadable`` or ``not_in_view``."""

    command: str
    kind: str
    reason: str
    score: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class RefusalRule:
    """Refuse a command whose presence score is below ``threshold``.

    ``sigma_patches`` is the region pooling radius in patches of the CLIP's own grid (a shift-and-stitch
    encoder's denser grid scales it); ``calibration`` records the scenes, words and quantile that chose the
    threshold.
    """

    threshold: float
    sigma_patches: float = 0.75
    statistic: str = PRESENCE_STATISTIC
    calibration: dict[str, Any] = field(default_factory=dict)
    familiarity_slope: float = 0.0
    reference_captions: tuple[str, ...] = ()

    def __post_init__(self):
        if not np.isfinite(self.threshold) or not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"refusal threshold must be a cosine similarity in [-1, 1], got {self.threshold}")
        if not np.isfinite(self.sigma_patches) or self.sigma_patches <= 0:
            raise ValueError(f"refusal sigma_patches must be > 0, got {self.sigma_patches}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"unknown refusal statistic {self.statistic!r}; expected one of {STATISTICS}")
        if not np.isfinite(self.familiarity_slope) or not 0.0 <= self.familiarity_slope <= 10.0:
            raise ValueError(f"refusal familiarity_slope must be in [0, 10], got {self.familiarity_slope}")
        uses_familiarity = self.statistic == STATISTICS[1]
        if uses_familiarity != bool(self.reference_captions) or (not uses_familiarity and self.familiarity_slope):
            raise ValueError(f"refusal statistic {self.statistic!r} goes with reference captions and a slope "
                             "exactly when it is the familiarity one")
        if not all(isinstance(c, str) and c.strip() for c in self.reference_captions):
            raise ValueError("refusal reference_captions must be non-empty strings")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "RefusalRule | None":
        """The rule stored in a policy config (``None`` when the policy has none)."""
        if not data:
            return None
        if not isinstance(data, dict):
            raise ValueError(f"refusal must be a mapping, got {type(data).__name__}")
        try:
            return cls(threshold=float(data["threshold"]), sigma_patches=float(data.get("sigma_patches", 0.75)),
                       statistic=str(data.get("statistic", PRESENCE_STATISTIC)),
                       calibration=dict(data.get("calibration") or {}),
                       familiarity_slope=float(data.get("familiarity_slope", 0.0)),
                       reference_captions=tuple(data.get("reference_captions") or ()))
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed refusal rule {data!r}: {error}") from error

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``config.json``'s ``refusal``)."""
        data = asdict(self)
        data["reference_captions"] = list(self.reference_captions)
        return data

    def scores(self, encoder, patches: torch.Tensor, texts: torch.Tensor) -> np.ndarray:
        """The rule's statistic (N,) for patches (N, P, D) and command embeddings (N, D) from ``encoder``."""
        presence = presence_scores(patches, texts, encoder.grid_size, encoder.image_size,
                                   encoder_sigma(encoder, self.sigma_patches)).numpy()
        if self.statistic == PRESENCE_STATISTIC:
            return presence
        return presence - self.familiarity_slope * familiarity(encoder, texts, self.reference_captions)

    def judge(self, command: str, score: float) -> Refusal | None:
        """A :class:`Refusal` when ``score`` (presence) is under the threshold, else None."""
        if score >= self.threshold:
            return None
        return Refusal(command, "not_in_view",
                       f"nothing in view matches {command!r} (presence {score:.3f} < {self.threshold:.3f})",
                       float(score), self.threshold)


def unreadable(encoder, command: Any) -> Refusal | None:
    """A :class:`Refusal` for a command the text encoder cannot read (not a str, empty, over its context)."""
    try:
        encoder.check_text(command)
    except (TypeError, ValueError) as error:
        shown = command if isinstance(command, str) else repr(command)[:80]
        return Refusal(shown, "unreadable", f"cannot read the command: {error}")
    return None


def presence_scores(patches: torch.Tensor, texts: torch.Tensor, grid_size: tuple[int, int], image_size: int,
                    sigma_patches: float = 0.75) -> torch.Tensor:
    """Best region-text cosine similarity per frame, (B,), for patches (B, P, D) and texts (B, D).

    Regions pool the patches around every patch centre (radius ``sigma_patches`` patches of ``grid_size``).
    """
    centres = patch_centres(grid_size, image_size, device=patches.device)
    regions = region_embeddings(patches, centres.expand(len(patches), -1, -1), grid_size, image_size,
                                sigma_patches)
    texts = torch.nn.functional.normalize(texts.to(regions.dtype), dim=-1)
    return (regions @ texts.unsqueeze(-1)).squeeze(-1).amax(dim=1)


def familiarity(encoder, texts: torch.Tensor, reference_captions) -> np.ndarray:
    """Each command's highest cosine similarity (N,) to the reference captions (embedded by ``encoder``)."""
    references = encoder.encode_text(list(reference_captions))  # cached by the encoder after the first call
    texts = torch.nn.functional.normalize(torch.as_tensor(texts, dtype=references.dtype), dim=-1)
    return (texts @ references.T).amax(dim=1).numpy()


def reference_captions(instructions=None) -> tuple[str, ...]:
    """"the <colour> <shape>" for every colour-shape pair of the instruction set (the familiarity references)."""
    if instructions is None:
        from vla_ros.envs.instructions import load_instructions

        instructions = load_instructions()
    return tuple(f"the {colour} {shape}" for colour, shape in instructions.all_combos)


def encoder_sigma(encoder, sigma_patches: float) -> float:
    """``sigma_patches`` of the CLIP's own grid on the encoder's (shift-and-stitch makes it denser)."""
    return float(sigma_patches) * int(getattr(encoder, "patch_stitch", 1))


@torch.no_grad()
def frame_features(encoder, frames: np.ndarray, commands: list[str], sigma_patches: float = 0.75,
                   references=(), batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Presence (N,) and familiarity to ``references`` (N,; zeros without references) of commands on frames."""
    presence, familiar = [], []
    sigma = encoder_sigma(encoder, sigma_patches)
    for start in range(0, len(frames), batch_size):
        stop = min(start + batch_size, len(frames))
        patches = encoder.encode_images(frames[start:stop]).patches
        texts = encoder.encode_text(list(commands[start:stop]))
        presence.append(presence_scores(patches, texts, encoder.grid_size, encoder.image_size, sigma).numpy())
        familiar.append(familiarity(encoder, texts, references) if references else np.zeros(stop - start))
    if not presence:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(presence), np.concatenate(familiar)


def score_frames(encoder, frames: np.ndarray, commands: list[str], sigma_patches: float = 0.75,
                 batch_size: int = 128) -> np.ndarray:
    """Presence scores (N,) of ``commands[i]`` on ``frames[i]`` with a :class:`ClipEncoder`."""
    return frame_features(encoder, frames, commands, sigma_patches, batch_size=batch_size)[0]


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive scores above a random negative (ties half)."""
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    order = np.concatenate([positive, negative]).argsort(kind="mergesort")
    ranks = np.empty(len(order), float)
    ranks[order] = np.arange(1, len(order) + 1)
    values = np.concatenate([positive, negative])
    for value in np.unique(values):  # average ranks over ties
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return float((ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2)
                 / (len(positive) * len(negative)))


def threshold_at_false_refusal(valid_scores: np.ndarray, false_refusal: float) -> float:
    """The threshold refusing at most ``false_refusal`` of the valid commands' scores (a lower quantile)."""
    valid_scores = np.sort(np.asarray(valid_scores, float))
    if len(valid_scores) == 0:
        raise ValueError("no valid scores to calibrate on")
    if not 0.0 <= false_refusal < 1.0:
        raise ValueError(f"false_refusal must be in [0, 1), got {false_refusal}")
    allowed = int(np.floor(false_refusal * len(valid_scores)))  # scores strictly under the threshold
    return float(valid_scores[allowed])


def separation_report(valid_scores: np.ndarray, invalid_scores: np.ndarray,
                      false_refusal: float = 0.01) -> dict[str, float]:
    """AUROC and the share of invalid commands refused at the threshold refusing ``false_refusal`` of valid."""
    threshold = threshold_at_false_refusal(valid_scores, false_refusal)
    return {"auroc": auroc(valid_scores, invalid_scores), "threshold": threshold,
            "false_refusal": float((np.asarray(valid_scores) < threshold).mean()),
            "refused_invalid": float((np.asarray(invalid_scores) < threshold).mean())
            if len(invalid_scores) else float("nan")}
