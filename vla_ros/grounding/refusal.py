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

The shipped statistic (``familiar_contrast_else_presence``) judges a command in one of two ways. A command close
to a caption of the CLIP's own words (its *familiarity*, the closest cosine to the "the <colour> <shape>"
reference captions, at least ``familiarity_boundary``) means that caption; at its best-matching region it must
beat every *other* reference caption by ``threshold`` (its *contrast*): "the purple cube" whose best region is a
purple ball loses there to "the purple ball". Any other command (new words) must reach presence
``unfamiliar_threshold``: the CLIP scores real objects named in new words lower everywhere, so only a low bar
keeps them. Before either, an optional :class:`vla_ros.grounding.text_gate.TextGate` refuses commands that do
not read as words naming an object (made-up words), which no presence bar can tell from new words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from vla_ros.grounding.regions import patch_centres, region_embeddings
from vla_ros.grounding.text_gate import TextGate

PRESENCE_STATISTIC = "max_dense_region_similarity"
FAMILIARITY_SLOPE_STATISTIC = "max_dense_region_similarity_minus_familiarity"
TWO_BAR_STATISTIC = "familiar_contrast_else_presence"
STATISTICS = (PRESENCE_STATISTIC, FAMILIARITY_SLOPE_STATISTIC, TWO_BAR_STATISTIC)


@dataclass(frozen=True)
class Refusal:
    """Why a command is not acted on: ``kind`` is ``unreadable``, ``not_an_object`` or ``not_in_view``.

    ``score`` and ``threshold`` are the presence score and the bar it missed (the gate's for ``not_an_object``).
    """

    command: str
    kind: str
    reason: str
    score: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class RefusalRule:
    """Refuse a command whose presence score is below its bar (see :meth:`bars`).

    ``sigma_patches`` is the region pooling radius in patches of the CLIP's own grid (a shift-and-stitch
    encoder's denser grid scales it); ``calibration`` records the scenes, words and quantile that chose the
    threshold. ``text_gate`` (optional) refuses commands that do not read as naming an object first.
    """

    threshold: float
    sigma_patches: float = 0.75
    statistic: str = PRESENCE_STATISTIC
    calibration: dict[str, Any] = field(default_factory=dict)
    familiarity_slope: float = 0.0
    reference_captions: tuple[str, ...] = ()
    unfamiliar_threshold: float | None = None
    familiarity_boundary: float | None = None
    text_gate: TextGate | None = None

    def __post_init__(self):
        if not np.isfinite(self.threshold) or not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"refusal threshold must be a cosine similarity in [-1, 1], got {self.threshold}")
        if not np.isfinite(self.sigma_patches) or self.sigma_patches <= 0:
            raise ValueError(f"refusal sigma_patches must be > 0, got {self.sigma_patches}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"unknown refusal statistic {self.statistic!r}; expected one of {STATISTICS}")
        if not np.isfinite(self.familiarity_slope) or not 0.0 <= self.familiarity_slope <= 10.0:
            raise ValueError(f"refusal familiarity_slope must be in [0, 10], got {self.familiarity_slope}")
        uses_familiarity = self.statistic != PRESENCE_STATISTIC
        if uses_familiarity != bool(self.reference_captions):
            raise ValueError(f"refusal statistic {self.statistic!r} goes with reference captions exactly when it "
                             "uses familiarity")
        if self.familiarity_slope and self.statistic != FAMILIARITY_SLOPE_STATISTIC:
            raise ValueError(f"a familiarity slope goes only with the statistic {FAMILIARITY_SLOPE_STATISTIC!r}")
        two_bars = (self.unfamiliar_threshold, self.familiarity_boundary)
        if (self.statistic == TWO_BAR_STATISTIC) != all(v is not None for v in two_bars) or \
                (self.statistic != TWO_BAR_STATISTIC and any(v is not None for v in two_bars)):
            raise ValueError(f"unfamiliar_threshold and familiarity_boundary go exactly with {TWO_BAR_STATISTIC!r}")
        for value in (v for v in two_bars if v is not None):
            if not isinstance(value, (int, float)) or not np.isfinite(value) or not -1.0 <= value <= 1.0:
                raise ValueError(f"refusal bars and familiarity boundary must be cosines in [-1, 1], got {value!r}")
        if self.text_gate is not None and not isinstance(self.text_gate, TextGate):
            raise ValueError("refusal text_gate must be a TextGate")
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
            optional = {k: float(data[k]) for k in ("unfamiliar_threshold", "familiarity_boundary")
                        if data.get(k) is not None}
            gate = TextGate.from_dict(data["text_gate"]) if data.get("text_gate") is not None else None
            return cls(threshold=float(data["threshold"]), sigma_patches=float(data.get("sigma_patches", 0.75)),
                       statistic=str(data.get("statistic", PRESENCE_STATISTIC)),
                       calibration=dict(data.get("calibration") or {}),
                       familiarity_slope=float(data.get("familiarity_slope", 0.0)),
                       reference_captions=tuple(data.get("reference_captions") or ()), text_gate=gate, **optional)
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed refusal rule {data!r}: {error}") from error

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``config.json``'s ``refusal``)."""
        data = {k: v for k, v in asdict(self).items() if k != "text_gate"}
        data["reference_captions"] = list(self.reference_captions)
        for key in ("unfamiliar_threshold", "familiarity_boundary"):
            if data[key] is None:
                del data[key]
        if self.text_gate is not None:
            data["text_gate"] = self.text_gate.to_dict()
        return data

    def judged(self, encoder, patches: torch.Tensor, texts: torch.Tensor) -> dict[str, np.ndarray]:
        """What the rule compares, per command (N,): ``score`` against ``bar``.

        Also ``presence``, ``familiarity`` (NaN without references), ``contrast`` (NaN unless judged by it)
        and ``rival`` (the reference caption that came closest at the command's best region; "" when not
        judged by contrast).
        """
        texts = torch.as_tensor(texts)
        presence, at_best = best_regions(patches, texts, encoder.grid_size, encoder.image_size,
                                         encoder_sigma(encoder, self.sigma_patches))
        presence = presence.numpy()
        n = len(presence)
        out = {"presence": presence, "score": presence, "bar": np.full(n, self.threshold),
               "familiarity": np.full(n, np.nan), "contrast": np.full(n, np.nan), "rival": np.full(n, "", object)}
        if self.statistic == PRESENCE_STATISTIC:
            return out
        references = _reference_embeddings(encoder, self.reference_captions)
        cosines = (torch.nn.functional.normalize(texts.float(), dim=-1) @ references.T).numpy()
        familiar = cosines.max(1)
        out["familiarity"] = familiar
        if self.statistic == FAMILIARITY_SLOPE_STATISTIC:
            out["bar"] = self.threshold + self.familiarity_slope * familiar
            return out
        contrast, rival = contrast_scores(presence, at_best.float() @ references.T, cosines.argmax(1))
        judged_by_contrast = familiar >= self.familiarity_boundary
        out["contrast"] = np.where(judged_by_contrast, contrast, np.nan)
        out["rival"] = np.where(judged_by_contrast, np.asarray(self.reference_captions, object)[rival], "")
        out["score"] = np.where(judged_by_contrast, contrast, presence)
        out["bar"] = np.where(judged_by_contrast, self.threshold, self.unfamiliar_threshold)
        return out

    def refusals(self, encoder, patches: torch.Tensor, texts: torch.Tensor, commands) -> list[Refusal | None]:
        """For each readable command (N,) with its frame's patches and its CLIP embedding, a Refusal or None."""
        gate = None
        if self.text_gate is not None:
            gate = self.text_gate.scores(encoder.encode_sentences(list(commands)))
        judged = self.judged(encoder, patches, texts)
        out: list[Refusal | None] = []
        for i, command in enumerate(commands):
            if gate is not None and gate[i] < self.text_gate.threshold:
                out.append(Refusal(command, "not_an_object", f"{command!r} does not read as words naming an object "
                                   f"(text gate {gate[i]:.2f} < {self.text_gate.threshold:.2f})",
                                   float(gate[i]), float(self.text_gate.threshold)))
            elif judged["rival"][i] and judged["score"][i] < judged["bar"][i]:
                out.append(Refusal(command, "not_in_view", f"nothing in view matches {command!r}: where it matches "
                                   f"best, {judged['rival'][i]!r} matches better (contrast {judged['score'][i]:.3f} "
                                   f"< {judged['bar'][i]:.3f})", float(judged["score"][i]), float(judged["bar"][i])))
            else:
                out.append(self.judge(command, float(judged["score"][i]), float(judged["bar"][i])))
        return out

    def judge(self, command: str, score: float, bar: float | None = None) -> Refusal | None:
        """A :class:`Refusal` when ``score`` (presence) is under ``bar`` (default: ``threshold``), else None."""
        bar = self.threshold if bar is None else bar
        if score >= bar:
            return None
        return Refusal(command, "not_in_view",
                       f"nothing in view matches {command!r} (presence {score:.3f} < {bar:.3f})", float(score), bar)


def contrast_scores(presence: np.ndarray, reference_at_best: torch.Tensor, meant: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Each command's contrast (N,) and its rival (N,).

    Contrast: presence minus the best *other* reference caption's similarity at the command's best region; the
    rival is that caption's index. ``reference_at_best`` (N, R) are the references' similarities there and
    ``meant`` (N,) the reference each command is closest to (its own caption, left out).
    """
    others = torch.as_tensor(reference_at_best, dtype=torch.float32).clone()
    others[torch.arange(len(others)), torch.as_tensor(meant)] = -torch.inf
    rival_score, rival = others.max(1)
    return presence - rival_score.numpy(), rival.numpy()


def _reference_embeddings(encoder, reference_captions) -> torch.Tensor:
    return torch.nn.functional.normalize(encoder.encode_text(list(reference_captions)).float(), dim=-1)


def unreadable(encoder, command: Any) -> Refusal | None:
    """A :class:`Refusal` for a command the text encoder cannot read (not a str, empty, over its context)."""
    try:
        encoder.check_text(command)
    except (TypeError, ValueError) as error:
        shown = command if isinstance(command, str) else repr(command)[:80]
        return Refusal(shown, "unreadable", f"cannot read the command: {error}")
    return None


def best_regions(patches: torch.Tensor, texts: torch.Tensor, grid_size: tuple[int, int], image_size: int,
                 sigma_patches: float = 0.75) -> tuple[torch.Tensor, torch.Tensor]:
    """Best region-text cosine similarity per frame (B,) and that region's embedding (B, D).

    Regions pool the patches around every patch centre (radius ``sigma_patches`` patches of ``grid_size``);
    patches (B, P, D), texts (B, D).
    """
    centres = patch_centres(grid_size, image_size, device=patches.device)
    regions = region_embeddings(patches, centres.expand(len(patches), -1, -1), grid_size, image_size,
                                sigma_patches)
    texts = torch.nn.functional.normalize(torch.as_tensor(texts).to(regions.dtype), dim=-1)
    similarity = (regions @ texts.unsqueeze(-1)).squeeze(-1)
    best, where = similarity.max(dim=1)
    return best, regions[torch.arange(len(regions)), where]


def presence_scores(patches: torch.Tensor, texts: torch.Tensor, grid_size: tuple[int, int], image_size: int,
                    sigma_patches: float = 0.75) -> torch.Tensor:
    """Best region-text cosine similarity per frame, (B,), for patches (B, P, D) and texts (B, D)."""
    return best_regions(patches, texts, grid_size, image_size, sigma_patches)[0]


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
def command_statistics(encoder, frames: np.ndarray, commands: list[str], sigma_patches: float = 0.75,
                       references=(), batch_size: int = 128) -> dict[str, np.ndarray]:
    """Per command on its frame (N,): ``presence``, and with ``references`` its ``familiarity`` and ``contrast``.

    Contrast is presence minus the best other reference caption at the command's best region; without
    references, familiarity is zeros and contrast NaN.
    """
    rule = RefusalRule(threshold=0.0, sigma_patches=sigma_patches, statistic=TWO_BAR_STATISTIC,
                       reference_captions=tuple(references), unfamiliar_threshold=0.0,
                       familiarity_boundary=-1.0) if references else RefusalRule(0.0, sigma_patches)
    parts: dict[str, list] = {"presence": [], "familiarity": [], "contrast": []}
    for start in range(0, len(frames), batch_size):
        stop = min(start + batch_size, len(frames))
        judged = rule.judged(encoder, encoder.encode_images(frames[start:stop]).patches,
                             encoder.encode_text(list(commands[start:stop])))
        for key in parts:
            parts[key].append(judged[key])
    if not parts["presence"]:
        return {key: np.zeros(0) for key in parts}
    out = {key: np.concatenate(values).astype(np.float64) for key, values in parts.items()}
    if not references:
        out["familiarity"] = np.zeros(len(out["presence"]))
    return out


def score_frames(encoder, frames: np.ndarray, commands: list[str], sigma_patches: float = 0.75,
                 batch_size: int = 128) -> np.ndarray:
    """Presence scores (N,) of ``commands[i]`` on ``frames[i]`` with a :class:`ClipEncoder`."""
    return command_statistics(encoder, frames, commands, sigma_patches, batch_size=batch_size)["presence"]


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
