"""The policy network's configuration: one typed, self-validating record, stored as ``network`` in a checkpoint.

A checkpoint's ``config.json`` is read before any tensor is allocated, so every size here is bounded and every
number must be finite: a hostile or corrupt file (``net_arch [8192, 8192]``, ``peak_window NaN``) is refused
with the file and the field named, instead of building a huge network or one that yields NaN. Unknown fields
are errors (a misspelt option would otherwise be ignored silently), and options that belong to another fusion
kind are errors too. Fields that older checkpoints do not have take the value those checkpoints were trained
with (the dataclass defaults), so every checkpoint shipped before this record still loads.

| field | type | meaning |
|---|---|---|
| ``fusion`` | str | ``late``, ``cross_attention``, ``gated``, ``region`` or ``region_map`` |
| ``fusion_dim`` | int | width of the fusion module's output |
| ``hidden_dim`` | int | hidden width inside the fusion module |
| ``heads`` | int | attention heads (attention fusions; must divide the CLIP width) |
| ``grid_size`` | [int, int] | the patch grid the fusion reads (rows, columns; after shift-and-stitch) |
| ``reference_frame`` | bool | the fusion also reads the episode's first frame |
| ``peak_window`` | float | ``region_map``: mode-seeking window, CLIP patches (0 = off) |
| ``reference_prior`` | bool | ``region_map``: the reference frame's map is a prior on the current one |
| ``current_estimate`` | bool | ``region_map`` with ``reference_prior``: the MLP also reads the frame's own estimate |
| ``prior_spread`` | float | ``region_map``: the reference prior spread by a Gaussian, CLIP patches (0 = off) |
| ``patch_stitch`` | int | ``region_map``: shift-and-stitch factor of the image tower |
| ``map_weights`` | bool | ``region_map``: the MLP also reads the map itself, not only its estimates |
| ``text_features`` | int | ``region_map``: width of a projection of the command fed to the MLP (0 = none) |
| ``command_film`` | bool | ``region_map``: the command's embedding FiLM-modulates the MLP (what to do) |
| ``skill_reader_width`` | int | ``region_map``: sentence width of a frozen skill reader FiLM-ing the MLP (0 = none) |
| ``skill_reader_hard`` | bool | ``region_map`` with a skill reader: FiLM reads the skill it names, one-hot |
| ``skill_reader_tokens`` | bool | ``region_map`` with a skill reader: it reads token states, not the sentence |
| ``fusion_proprio`` | bool | ``region_map``: the joint state enters the MLP beside the map's estimates |
| ``object_locator`` | bool | ``region_map``: a learned, frozen map of the object replaces the current frame's map |
| ``action_chunk`` | int | actions the actor predicts per decision, K (1: one action, as before) |
| ``chunk_execute`` | int | of those, how many run before the next decision, E (receding horizon; 1 <= E <= K) |
| ``net_arch`` | {pi: [int], vf: [int]} | SB3 actor and critic hidden layers |
| ``activation`` | str | ``tanh`` or ``relu`` |
| ``log_std_init`` | float | initial log standard deviation of the Gaussian actor |
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from vla_ros.grounding.fusion import FUSION_KINDS, REFERENCE_FRAME_KINDS

ACTIVATIONS = ("tanh", "relu")
MAX_WIDTH = 2048
"""largest layer width accepted (the shipped networks use 256)"""
MAX_LAYERS = 8
"""most hidden layers per actor or critic"""
MAX_GRID = 64
"""largest patch grid side (ViT-B/16 at 224 px has 14)"""
MAX_PATCH_STITCH = 4
MAX_TEXT_FEATURES = 1024
MAX_ACTION_CHUNK = 32
"""most actions per chunk (Diffusion Policy predicts 16)"""


class NetworkConfigError(ValueError):
    """A network configuration field is missing, of the wrong type, out of range or contradicts another."""


def _fail(source: str, name: str, message: str) -> NetworkConfigError:
    return NetworkConfigError(f"{source}: network.{name} {message}")


def _int(value: Any, source: str, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(source, name, f"must be an integer, got {type(value).__name__} {str(value)[:40]!r}")
    if not low <= value <= high:
        raise _fail(source, name, f"must be in [{low}, {high}], got {value}")
    return value


def _float(value: Any, source: str, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(source, name, f"must be a number, got {type(value).__name__} {str(value)[:40]!r}")
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise _fail(source, name, f"must be a finite number in [{low}, {high}], got {value}")
    return value


def _bool(value: Any, source: str, name: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(source, name, f"must be true or false, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def _widths(value: Any, source: str, name: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_LAYERS:
        raise _fail(source, name, f"must be a list of at most {MAX_LAYERS} layer widths, got {str(value)[:60]!r}")
    return tuple(_int(v, source, f"{name}[{i}]", 1, MAX_WIDTH) for i, v in enumerate(value))


@dataclass(frozen=True)
class NetworkConfig:
    """The actor-critic network of a policy checkpoint (module doc: the fields); validated on construction."""

    fusion: str = "cross_attention"
    fusion_dim: int = 256
    hidden_dim: int = 256
    heads: int = 4
    grid_size: tuple[int, int] = (4, 4)
    reference_frame: bool = False
    peak_window: float = 0.0
    reference_prior: bool = False
    current_estimate: bool = False
    prior_spread: float = 0.0
    patch_stitch: int = 1
    map_weights: bool = True
    text_features: int = 0
    command_film: bool = False
    skill_reader_width: int = 0
    skill_reader_hard: bool = False
    skill_reader_tokens: bool = False
    fusion_proprio: bool = False
    object_locator: bool = False
    action_chunk: int = 1
    chunk_execute: int = 1
    net_arch_pi: tuple[int, ...] = (256, 256)
    net_arch_vf: tuple[int, ...] = (256, 256)
    activation: str = "tanh"
    log_std_init: float = 0.0
    source: str = field(default="network config", compare=False, repr=False)

    def __post_init__(self):
        src = self.source
        if self.fusion not in FUSION_KINDS:
            raise _fail(src, "fusion", f"must be one of {FUSION_KINDS}, got {str(self.fusion)[:40]!r}")
        if self.activation not in ACTIVATIONS:
            raise _fail(src, "activation", f"must be one of {ACTIVATIONS}, got {str(self.activation)[:40]!r}")
        _int(self.fusion_dim, src, "fusion_dim", 1, MAX_WIDTH)
        _int(self.hidden_dim, src, "hidden_dim", 1, MAX_WIDTH)
        _int(self.heads, src, "heads", 1, 64)
        if not isinstance(self.grid_size, tuple) or len(self.grid_size) != 2:
            raise _fail(src, "grid_size", f"must be [rows, columns], got {str(self.grid_size)[:40]!r}")
        for i, side in enumerate(self.grid_size):
            _int(side, src, f"grid_size[{i}]", 1, MAX_GRID)
        _bool(self.reference_frame, src, "reference_frame")
        _float(self.peak_window, src, "peak_window", 0.0, float(MAX_GRID))
        _bool(self.reference_prior, src, "reference_prior")
        _bool(self.current_estimate, src, "current_estimate")
        _float(self.prior_spread, src, "prior_spread", 0.0, float(MAX_GRID))
        _int(self.patch_stitch, src, "patch_stitch", 1, MAX_PATCH_STITCH)
        _bool(self.map_weights, src, "map_weights")
        _int(self.text_features, src, "text_features", 0, MAX_TEXT_FEATURES)
        _bool(self.command_film, src, "command_film")
        _int(self.skill_reader_width, src, "skill_reader_width", 0, MAX_TEXT_FEATURES)
        _bool(self.skill_reader_hard, src, "skill_reader_hard")
        if self.skill_reader_hard and not self.skill_reader_width:
            raise _fail(src, "skill_reader_hard", "needs a skill reader (skill_reader_width > 0)")
        _bool(self.skill_reader_tokens, src, "skill_reader_tokens")
        if self.skill_reader_tokens and not self.skill_reader_width:
            raise _fail(src, "skill_reader_tokens", "needs a skill reader (skill_reader_width > 0)")
        _bool(self.fusion_proprio, src, "fusion_proprio")
        _bool(self.object_locator, src, "object_locator")
        _int(self.action_chunk, src, "action_chunk", 1, MAX_ACTION_CHUNK)
        _int(self.chunk_execute, src, "chunk_execute", 1, MAX_ACTION_CHUNK)
        if self.chunk_execute > self.action_chunk:
            raise _fail(src, "chunk_execute", f"must be at most action_chunk {self.action_chunk}, "
                                              f"got {self.chunk_execute}")
        if self.command_film and self.skill_reader_width:
            raise _fail(src, "skill_reader_width", "and command_film are two sources for one FiLM: choose one")
        _widths(self.net_arch_pi, src, "net_arch.pi")
        _widths(self.net_arch_vf, src, "net_arch.vf")
        _float(self.log_std_init, src, "log_std_init", -20.0, 5.0)
        # options of one fusion kind are errors on another (they would be ignored)
        region_map_only = {"peak_window": self.peak_window != 0.0, "reference_prior": self.reference_prior,
                           "patch_stitch": self.patch_stitch != 1, "map_weights": not self.map_weights,
                           "text_features": self.text_features != 0, "command_film": self.command_film,
                           "skill_reader_width": self.skill_reader_width != 0, "fusion_proprio": self.fusion_proprio,
                           "current_estimate": self.current_estimate, "prior_spread": self.prior_spread != 0.0,
                           "object_locator": self.object_locator}
        if self.fusion != "region_map":
            for name, used in region_map_only.items():
                if used:
                    raise _fail(src, name, f"is an option of the region_map fusion, not of {self.fusion!r}")
        if self.reference_frame and self.fusion not in REFERENCE_FRAME_KINDS:
            raise _fail(src, "reference_frame", f"exists for {REFERENCE_FRAME_KINDS}, not for {self.fusion!r}")
        if self.reference_prior and not self.reference_frame:
            raise _fail(src, "reference_prior", "needs reference_frame")
        if self.current_estimate and not self.reference_prior:
            raise _fail(src, "current_estimate", "needs reference_prior (without it the estimate is the current one)")
        if self.prior_spread and not self.reference_prior:
            raise _fail(src, "prior_spread", "needs reference_prior (it spreads the prior)")
        if self.object_locator and not self.reference_frame:
            raise _fail(src, "object_locator", "needs reference_frame (it reads the first frame's map)")
        if self.object_locator and self.reference_prior:
            raise _fail(src, "object_locator", "replaces reference_prior (it reads the first frame's map itself)")

    @property
    def num_patches(self) -> int:
        """Patches the policy reads per frame (``grid_size`` is the stitched grid the fusion sees)."""
        return self.grid_size[0] * self.grid_size[1]

    def check_embed_dim(self, embed_dim: int) -> None:
        """Raise when the CLIP width ``embed_dim`` does not fit the attention heads."""
        if self.fusion in ("cross_attention", "gated", "region") and embed_dim % self.heads:
            raise _fail(self.source, "heads", f"must divide the CLIP width {embed_dim}, got {self.heads}")

    @classmethod
    def from_dict(cls, data: Any, source: str = "network config") -> "NetworkConfig":
        """Validate a checkpoint's ``network`` section; missing fields take the defaults older checkpoints had."""
        if not isinstance(data, dict):
            raise NetworkConfigError(f"{source}: network must be an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)} - {"source", "net_arch_pi", "net_arch_vf"} | {"net_arch"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise NetworkConfigError(f"{source}: unknown network field(s) {unknown[:5]}; known: {sorted(known)}")
        values = {k: v for k, v in data.items() if k != "net_arch"}
        if "grid_size" in values:
            grid = values["grid_size"]
            values["grid_size"] = tuple(grid) if isinstance(grid, (list, tuple)) else grid
        if "net_arch" in data:
            arch = data["net_arch"]
            if not isinstance(arch, dict) or set(arch) != {"pi", "vf"}:
                raise _fail(source, "net_arch", f"must be {{'pi': [...], 'vf': [...]}}, got {str(arch)[:60]!r}")
            values["net_arch_pi"] = _widths(arch["pi"], source, "net_arch.pi")
            values["net_arch_vf"] = _widths(arch["vf"], source, "net_arch.vf")
        return cls(**values, source=source)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in a checkpoint (``from_dict`` inverts it)."""
        data = asdict(self)
        del data["source"]
        data["grid_size"] = list(self.grid_size)
        data["net_arch"] = {"pi": list(data.pop("net_arch_pi")), "vf": list(data.pop("net_arch_vf"))}
        return data

    def fusion_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`vla_ros.grounding.fusion.build_fusion` (its ``kind`` excluded)."""
        return {"hidden_dim": self.hidden_dim, "heads": self.heads, "grid_size": self.grid_size,
                "reference_frame": self.reference_frame, "peak_window": self.peak_window,
                "reference_prior": self.reference_prior, "current_estimate": self.current_estimate,
                "prior_spread": self.prior_spread,
                "patch_stitch": self.patch_stitch,
                "map_weights": self.map_weights, "text_features": self.text_features,
                "command_film": self.command_film, "skill_reader_width": self.skill_reader_width,
                **({"object_locator": True} if self.object_locator else {}),
                **({"skill_reader_hard": True} if self.skill_reader_hard else {}),
                **({"skill_reader_tokens": True} if self.skill_reader_tokens else {})}
