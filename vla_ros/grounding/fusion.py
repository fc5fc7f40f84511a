"""Fusion of CLIP image and text embeddings into the vector the policy acts on.

Every module has the same interface::

    forward(image_global (B, D), image_patches (B, P, D), text (B, D),
            reference_patches (B, P, D) | None = None) -> (B, out_dim)

with ``D`` the CLIP embedding size, ``P`` the number of patch tokens (grid_h * grid_w, row-major)
and ``out_dim`` an attribute. They are chosen by name with :func:`build_fusion`:

* ``late``: concatenation ``[global, text]`` (2D) -> MLP -> out_dim. Cheap; sees no patch, so it
  only knows *what* is in the image, not *where*.
* ``cross_attention``: the text embedding queries the patch tokens (Q = text, K, V = patches + 2-D
  positional encoding) so the attended vector carries the location of the commanded object; the
  attention-weighted mean patch position (x, y in [-1, 1]) is appended explicitly.
  ``[attended (D), text (D), global (D), xy (2)]`` -> MLP -> out_dim.
* ``gated``: Flamingo-style tanh gate. ``h = W_img global + tanh(alpha) * xattn(text, patches)``,
  ``alpha`` starts at 0, so at initialisation the output is exactly the image-only path
  (:meth:`GatedFusion.image_only`) and the text-conditioned injection opens as training needs it.
  ``h`` (hidden) -> MLP -> out_dim.
* ``region``: ``cross_attention`` whose attention logits get CLIP's own region similarity as a
  prior: region embeddings at every patch centre (Gaussian pooling of the patch tokens, the pooling
  the sim-domain CLIP was trained with, :mod:`vla_ros.grounding.regions`) scored against the
  command, times a learned per-head scale, are added to each head's logits. The learned attention
  fits the training scenes; the prior carries CLIP's grounding of colour-shape combinations the
  policy never saw (what ``vla-ros eval-clip`` measures as its dense region pick).

* ``region_map``: no learned text-to-patch attention at all. The policy reads only *where* the frozen
  CLIP puts the command: the region-text similarity at every patch centre (as in ``region``),
  standardised per frame and turned into attention weights by one learned temperature, plus their
  weighted mean position. ``[weights (P), xy (2)]`` -> MLP -> out_dim. Neither the text nor the image
  embedding reaches the MLP, so a colour-shape combination the policy never saw looks to it like any
  other commanded object; it generalises exactly as far as CLIP's dense grounding does, with no learned
  text query (as ``cross_attention`` has) that is fitted on the training combinations only.
  ``peak_window=sigma`` (patches) adds a mode-seeking position: the same softmax re-weighted by a
  Gaussian around the map's maximum. Where CLIP half-matches a second object (an unseen "red ball"
  against a seen red cube) the weighted mean lands between the two; the peak estimate stays on the
  stronger one. ``[weights, xy, xy_peak]`` then go to the MLP, and ``xy_peak`` is the position estimate.
  ``reference_prior=True`` (with a reference frame) adds the first frame's logits, times a learned
  weight, to the current frame's: once the arm covers the target, the current map alone jumps to the
  next best match. The prior also holds the estimate near where the object started once the arm moves it
  (a push): ``current_estimate=True`` gives the MLP the current frame's own estimates as well, so it can weigh
  the one that stays on a covered object against the one that follows a moved one. ``prior_spread=s`` instead
  spreads the prior: each patch's prior is the soft maximum of the first frame's logits within a Gaussian of s
  patches, so an object pushed by a patch or two stays inside it while farther jumps are still barred.
  ``map_weights=False`` keeps the weights themselves from the MLP: it then gets only
  the position estimates, two numbers each, whose distribution is the same for any commanded object,
  while the map's shape (one sharp peak for a seen combination, a second bump on a same-coloured object
  for an unseen one) is not.
  ``text_features=k`` adds a learned k-d projection of the command's text embedding to the MLP input:
  the map says where the object is, not what to do with it, and a push needs the commanded direction.

``reference_frame=True`` (``cross_attention``, ``region`` and ``region_map``) adds a memory of where the commanded
object was: the same text-queried attention also runs over the patches of the episode's first frame
(the frame the command arrived with), and ``[attended_ref (D), xy_ref (2)]`` join the MLP input. The
camera looks down past the arm, so an approaching arm hides its target; the current frame alone
then leaves a memoryless policy guessing where the target was.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vla_ros.grounding.object_locator import ObjectLocator

NUM_SKILLS = 5  # the skill reader's classes: reach, push left / right / forward / back (vla_ros.policy.skill_reader)


class FusionOutput(NamedTuple):
    """What a fusion module computes: its features and, where it has them, where it grounds the command.

    ``attention`` (B, P): its map over patches (debug heatmaps); ``xy`` (B, 2): its position estimate in
    [-1, 1] (the imitation's grounding loss); ``reference_xy``: the same on the episode's first frame.
    """

    features: torch.Tensor
    attention: torch.Tensor | None = None
    xy: torch.Tensor | None = None
    reference_xy: torch.Tensor | None = None
    current_xy: torch.Tensor | None = None
    """with a reference prior and ``current_estimate``: the current frame's estimate without the prior"""
    frame_xy: torch.Tensor | None = None
    """with a reference prior: the current frame's estimate without the prior, whether or not the MLP reads it
    (a pushed object's displacement, which the prior hides, for heads fitted after the policy such as done); with
    an object locator: its estimate"""


class RegionMaps(NamedTuple):
    """What :class:`RegionMapFusion` computes from the CLIP embeddings alone (:meth:`RegionMapFusion.maps`).

    ``current`` and ``reference`` (B, P): the command's standardised region-text similarity in this frame and in
    the episode's first (None without a reference frame); ``located`` (B, P): the object locator's logits (None
    without one).
    """

    current: torch.Tensor
    reference: torch.Tensor | None = None
    located: torch.Tensor | None = None

    def select(self, index) -> "RegionMaps":
        """The maps of the samples ``index`` (rows of each map)."""
        return RegionMaps(*(None if m is None else m[index] for m in self))


FUSION_KINDS = ("late", "cross_attention", "gated", "region", "region_map")


def sincos_2d(grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine positional encoding, (grid_h * grid_w, dim), row-major."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos encoding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    freqs = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(torch.arange(grid_h, dtype=torch.float32),
                            torch.arange(grid_w, dtype=torch.float32), indexing="ij")
    ys, xs = ys.reshape(-1, 1) * freqs, xs.reshape(-1, 1) * freqs
    return torch.cat([xs.sin(), xs.cos(), ys.sin(), ys.cos()], dim=1)


def patch_coordinates(grid_h: int, grid_w: int) -> torch.Tensor:
    """Centre of each patch in normalised image coordinates, (P, 2) as (x, y) in [-1, 1]."""
    ys, xs = torch.meshgrid((torch.arange(grid_h) + 0.5) / grid_h * 2 - 1,
                            (torch.arange(grid_w) + 0.5) / grid_w * 2 - 1, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).float()


def _grid(num_patches: int, grid_size: tuple[int, int] | None) -> tuple[int, int]:
    if grid_size is not None:
        if grid_size[0] * grid_size[1] != num_patches:
            raise ValueError(f"grid_size {grid_size} does not hold {num_patches} patches")
        return int(grid_size[0]), int(grid_size[1])
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"num_patches={num_patches} is not square; pass grid_size=(rows, cols)")
    return side, side


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim), nn.GELU())


def _check_inputs(module: nn.Module, image_global, image_patches, text) -> None:
    d, p = module.embed_dim, module.num_patches
    b = image_global.shape[0]
    if image_global.shape != (b, d):
        raise ValueError(f"image_global must be (B, {d}), got {tuple(image_global.shape)}")
    if image_patches.shape != (b, p, d):
        raise ValueError(f"image_patches must be ({b}, {p}, {d}), got {tuple(image_patches.shape)}")
    if text.shape != (b, d):
        raise ValueError(f"text must be ({b}, {d}), got {tuple(text.shape)}")


def gaussian_pooling(grid_h: int, grid_w: int, sigma_patches: float) -> torch.Tensor:
    """(P, P) row-stochastic weights pooling the patches around each patch centre (sigma in patches)."""
    ys, xs = torch.meshgrid(torch.arange(grid_h, dtype=torch.float32), torch.arange(grid_w, dtype=torch.float32),
                            indexing="ij")
    centres = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)
    dist2 = ((centres[:, None] - centres[None]) ** 2).sum(-1)
    return torch.softmax(-dist2 / (2 * sigma_patches ** 2), dim=-1)


def log_gaussian_window(grid_h: int, grid_w: int, sigma_patches: float) -> torch.Tensor:
    """(P, P) log of a Gaussian of ``sigma_patches`` around each patch, 0 at its centre."""
    window = gaussian_pooling(grid_h, grid_w, sigma_patches).log()
    return window - window.amax(-1, keepdim=True)


def spread_logits(logits: torch.Tensor, log_window: torch.Tensor) -> torch.Tensor:
    """(B, P) soft maximum of ``logits`` over a window around each patch: ``logsumexp_j(logits_j + log_window_ij)``."""
    return torch.logsumexp(logits.unsqueeze(1) + log_window, dim=-1)


def region_similarity(pooling: torch.Tensor, patches: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (B, P) of text (B, D) with the region embeddings ``pooling`` (P, P) makes of patches.

    With :func:`gaussian_pooling` these are :func:`vla_ros.grounding.regions.region_embeddings` at every
    patch centre: the regions ``vla-ros eval-clip``'s dense pick scores.
    """
    regions = F.normalize(pooling @ F.normalize(patches, dim=-1), dim=-1)
    return (regions @ F.normalize(text, dim=-1).unsqueeze(-1)).squeeze(-1)


class PatchAttention(nn.Module):
    """Text-queried attention over positionally encoded patches: (B, D), (B, P, D) -> (B, D), (B, P)."""

    def __init__(self, embed_dim: int, num_patches: int, grid_size: tuple[int, int] | None, heads: int,
                 region_prior: bool = False, sigma_patches: float = 0.75, prior_scale: float = 10.0):
        super().__init__()
        grid_h, grid_w = _grid(num_patches, grid_size)
        self.heads, self.region_prior = heads, region_prior
        if region_prior:
            self.register_buffer("pooling", gaussian_pooling(grid_h, grid_w, sigma_patches), persistent=False)
            self.prior_log_scale = nn.Parameter(torch.full((heads,), math.log(prior_scale)))
        # fixed sin-cos gives every patch a distinct position from step 0; the learned part adapts it
        self.register_buffer("fixed_position", sincos_2d(grid_h, grid_w, embed_dim), persistent=False)
        self.learned_position = nn.Parameter(torch.zeros(num_patches, embed_dim))
        self.register_buffer("coordinates", patch_coordinates(grid_h, grid_w), persistent=False)
        self.norm_query = nn.LayerNorm(embed_dim)
        self.norm_patches = nn.LayerNorm(embed_dim)
        self.attention = nn.MultiheadAttention(embed_dim, heads, batch_first=True)

    def forward(self, text: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the attended vector (B, D) and the head-averaged attention over patches (B, P)."""
        keys = self.norm_patches(patches) + self.fixed_position + self.learned_position
        query = self.norm_query(text).unsqueeze(1)
        bias = None
        if self.region_prior:  # float attn_mask: added to the logits, (B * heads, 1, P), batch-major
            prior = self.prior_log_scale.exp()[None, :, None] * self.region_similarity(patches, text)[:, None, :]
            bias = prior.reshape(-1, 1, patches.shape[1])
        attended, weights = self.attention(query, keys, keys, attn_mask=bias, need_weights=True,
                                           average_attn_weights=True)
        return attended.squeeze(1), weights.squeeze(1)

    def region_similarity(self, patches: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (B, P) of the command with the region embedding at each patch centre."""
        return region_similarity(self.pooling, patches, text)

    def expected_xy(self, weights: torch.Tensor) -> torch.Tensor:
        """Attention-weighted mean patch centre, (B, 2) as (x, y) in [-1, 1]."""
        return weights @ self.coordinates


class LateFusion(nn.Module):
    """``[global (D), text (D)]`` -> MLP -> (B, out_dim)."""

    estimates_position = False  # whether fuse() returns a position estimate ``xy`` of the commanded object

    def __init__(self, embed_dim: int, num_patches: int, out_dim: int = 256, hidden_dim: int = 256):
        super().__init__()
        self.embed_dim, self.num_patches, self.out_dim = embed_dim, num_patches, out_dim
        self.mlp = _mlp(2 * embed_dim, hidden_dim, out_dim)

    def forward(self, image_global, image_patches, text, reference_patches=None) -> torch.Tensor:
        """The fused features (:meth:`fuse`'s ``features``): what SB3 and the ONNX graph read."""
        return self.fuse(image_global, image_patches, text, reference_patches).features

    def fuse(self, image_global, image_patches, text, reference_patches=None) -> FusionOutput:
        """Fuse (B, D), (B, P, D), (B, D) -> (B, out_dim); patches (and any reference) are ignored."""
        _check_inputs(self, image_global, image_patches, text)
        return FusionOutput(self.mlp(torch.cat([image_global, text], dim=-1)))


class CrossAttentionFusion(nn.Module):
    """Q = text, K, V = patches + 2-D position; ``[attended, text, global, xy]`` -> MLP -> out_dim.

    With ``reference_frame`` the attention also reads the episode's first frame and
    ``[attended_ref, xy_ref]`` are appended.
    """

    estimates_position = True  # whether fuse() returns a position estimate ``xy`` of the commanded object

    def __init__(self, embed_dim: int, num_patches: int, out_dim: int = 256, hidden_dim: int = 256,
                 heads: int = 4, grid_size: tuple[int, int] | None = None, region_prior: bool = False,
                 reference_frame: bool = False):
        super().__init__()
        self.embed_dim, self.num_patches, self.out_dim = embed_dim, num_patches, out_dim
        self.reference_frame = reference_frame
        self.patch_attention = PatchAttention(embed_dim, num_patches, grid_size, heads, region_prior=region_prior)
        self.mlp = _mlp(3 * embed_dim + 2 + (embed_dim + 2 if reference_frame else 0), hidden_dim, out_dim)

    def forward(self, image_global, image_patches, text, reference_patches=None) -> torch.Tensor:
        """The fused features (:meth:`fuse`'s ``features``): what SB3 and the ONNX graph read."""
        return self.fuse(image_global, image_patches, text, reference_patches).features

    def fuse(self, image_global, image_patches, text, reference_patches=None) -> FusionOutput:
        """Fuse (B, D), (B, P, D), (B, D) [, reference (B, P, D)] -> (B, out_dim), attention, xy."""
        _check_inputs(self, image_global, image_patches, text)
        attended, weights = self.patch_attention(text, image_patches)
        xy = self.patch_attention.expected_xy(weights)
        parts, reference_xy = [attended, text, image_global, xy], None
        if self.reference_frame:
            if reference_patches is None or reference_patches.shape != image_patches.shape:
                raise ValueError("this fusion reads a reference frame: pass reference_patches shaped like "
                                 f"image_patches {tuple(image_patches.shape)}")
            attended_ref, weights_ref = self.patch_attention(text, reference_patches)
            reference_xy = self.patch_attention.expected_xy(weights_ref)
            parts += [attended_ref, reference_xy]
        return FusionOutput(self.mlp(torch.cat(parts, dim=-1)), weights, xy, reference_xy)


class GatedFusion(nn.Module):
    """``h = W global + tanh(alpha) * W_x [attended, xy]``, alpha = 0 at init; MLP(h) -> out_dim."""

    estimates_position = True  # whether fuse() returns a position estimate ``xy`` of the commanded object

    def __init__(self, embed_dim: int, num_patches: int, out_dim: int = 256, hidden_dim: int = 256,
                 heads: int = 4, grid_size: tuple[int, int] | None = None):
        super().__init__()
        self.embed_dim, self.num_patches, self.out_dim = embed_dim, num_patches, out_dim
        self.image_projection = nn.Linear(embed_dim, hidden_dim)
        self.patch_attention = PatchAttention(embed_dim, num_patches, grid_size, heads)
        self.injection = nn.Linear(embed_dim + 2, hidden_dim)
        self.gate = nn.Parameter(torch.zeros(1))  # tanh(0) = 0: closed at initialisation
        self.head = _mlp(hidden_dim, hidden_dim, out_dim)

    def image_only(self, image_global: torch.Tensor) -> torch.Tensor:
        """The path without text: MLP(W global) -> (B, out_dim)."""
        return self.head(self.image_projection(image_global))

    def forward(self, image_global, image_patches, text, reference_patches=None) -> torch.Tensor:
        """The fused features (:meth:`fuse`'s ``features``): what SB3 and the ONNX graph read."""
        return self.fuse(image_global, image_patches, text, reference_patches).features

    def fuse(self, image_global, image_patches, text, reference_patches=None) -> FusionOutput:
        """Fuse (B, D), (B, P, D), (B, D) -> (B, out_dim), attention, xy (no reference frame)."""
        _check_inputs(self, image_global, image_patches, text)
        attended, weights = self.patch_attention(text, image_patches)
        xy = self.patch_attention.expected_xy(weights)
        injected = self.injection(torch.cat([attended, xy], dim=-1))
        hidden = self.image_projection(image_global) + torch.tanh(self.gate) * injected
        return FusionOutput(self.head(hidden), weights, xy)


class RegionMapFusion(nn.Module):
    """``softmax(t * standardised CLIP region-text similarity)`` over patches and its mean xy -> MLP -> out_dim.

    With ``reference_frame`` the same map of the episode's first frame is appended. The only learned
    parameters before the MLP are the temperature ``t`` and, with ``reference_prior``, the prior's weight;
    ``image_global`` is not used. With ``peak_window`` each frame also gives its mode-seeking position, with
    ``reference_prior`` the current frame's map is taken jointly with the reference frame's (module doc).
    """

    estimates_position = True  # whether fuse() returns a position estimate ``xy`` of the commanded object

    DEFAULT_SIGMA_PATCHES = 0.75  # the CLIP's region radius in training (``TrainClipConfig.region_sigma``)

    def __init__(self, embed_dim: int, num_patches: int, out_dim: int = 256, hidden_dim: int = 256,
                 grid_size: tuple[int, int] | None = None, reference_frame: bool = False,
                 sigma_patches: float = DEFAULT_SIGMA_PATCHES, temperature: float = 2.0, peak_window: float = 0.0,
                 reference_prior: bool = False, map_weights: bool = True, text_features: int = 0,
                 command_film: bool = False, skill_reader_width: int = 0, proprio_dim: int = 0,
                 current_estimate: bool = False, prior_spread: float = 0.0, object_locator: bool = False,
                 skill_reader_hard: bool = False, skill_reader_tokens: bool = False):
        super().__init__()
        if skill_reader_hard and not skill_reader_width:
            raise ValueError("skill_reader_hard needs a skill reader (skill_reader_width)")
        if skill_reader_tokens and not skill_reader_width:
            raise ValueError("skill_reader_tokens needs a skill reader (skill_reader_width)")
        if object_locator and (not reference_frame or reference_prior):
            raise ValueError("object_locator needs reference_frame=True and replaces reference_prior (it reads the "
                             "first frame's map itself)")
        if prior_spread < 0 or (prior_spread and not reference_prior):
            raise ValueError(f"prior_spread must be >= 0 and needs reference_prior=True, got {prior_spread}")
        if current_estimate and not reference_prior:
            raise ValueError("current_estimate needs reference_prior=True")
        if command_film and skill_reader_width:
            raise ValueError("command_film and skill_reader_width are two sources for one FiLM: choose one")
        if reference_prior and not reference_frame:
            raise ValueError("reference_prior needs reference_frame=True")
        grid_h, grid_w = _grid(num_patches, grid_size)
        self.embed_dim, self.num_patches, self.out_dim = embed_dim, num_patches, out_dim
        self.reference_frame, self.peak_window, self.map_weights = reference_frame, float(peak_window), map_weights
        self.register_buffer("pooling", gaussian_pooling(grid_h, grid_w, sigma_patches), persistent=False)
        self.register_buffer("coordinates", patch_coordinates(grid_h, grid_w), persistent=False)
        if self.peak_window > 0:  # log of a Gaussian window around each patch, (P, P)
            self.register_buffer("log_window", log_gaussian_window(grid_h, grid_w, self.peak_window), persistent=False)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        self.reference_prior = nn.Parameter(torch.ones(())) if reference_prior else None
        # the prior holds the estimate where the object started (it learns a weight near 2), which hides a push's
        # progress: current_estimate also gives the MLP the current frame's own estimate
        self.current_estimate = bool(current_estimate)
        # prior_spread: the prior at each patch is the largest reference-map evidence within a Gaussian window
        # around it (a soft max, log-sum-exp), so an object pushed one or two patches is still inside the prior
        # while a jump to another object or the arm further away is not (research/push_prior_estimates.py: once
        # an object moved 2 cm, the map itself as the prior held the estimate about 5 cm behind it)
        self.prior_spread = float(prior_spread)
        if self.prior_spread > 0:
            self.register_buffer("log_spread", log_gaussian_window(grid_h, grid_w, self.prior_spread),
                                 persistent=False)
        per_frame = (num_patches if map_weights else 0) + (4 if self.peak_window > 0 else 2)
        estimate_width = 4 if self.peak_window > 0 else 2
        if text_features < 0:
            raise ValueError(f"text_features must be >= 0, got {text_features}")
        self.text_projection = nn.Linear(embed_dim, text_features) if text_features else None
        # proprio_dim: the joint state enters the MLP beside the map's estimates, so the first layers can relate
        # where the arm is to where the object is (push's approach; research/push_memory_probe.py measured a
        # learner of the expert at 96.5% this way and 67.5% with the joint state joining only in the actor)
        if proprio_dim < 0:
            raise ValueError(f"proprio_dim must be >= 0, got {proprio_dim}")
        self.proprio_dim = int(proprio_dim)
        self.mlp = _mlp(per_frame * (2 if reference_frame else 1) + text_features + self.proprio_dim
                        + (estimate_width if self.current_estimate else 0), hidden_dim, out_dim)
        # FiLM (as RT-1 conditions on its sentence embedding): the command scales and shifts the MLP's hidden
        # features, so what to do (the verb, a push's direction) acts on where the map says the object is.
        # Zero-initialised: training starts from the unconditioned MLP.
        self.film = nn.Linear(embed_dim, 2 * hidden_dim) if command_film else None
        # Or the skill reader's probabilities (reach, push left / right / forward / back) FiLM it: a frozen
        # linear map of the text tower's sentence embedding (vla_ros.policy.skill_reader), fitted before
        # training and stored as buffers, so a new phrasing acts only through the skill it reads as.
        self.skill_reader_width = int(skill_reader_width)
        self.skill_reader_hard = bool(skill_reader_hard)
        # skill_reader_tokens: the same buffers score the text tower's token states before the network runs
        # (vla_ros.policy.skill_reader.CommandSkillReader); the fusion then gets the five logits, not the sentence
        self.skill_reader_tokens = bool(skill_reader_tokens)
        if self.skill_reader_width:
            self.register_buffer("skill_weight", torch.zeros(NUM_SKILLS, self.skill_reader_width))
            self.register_buffer("skill_bias", torch.zeros(NUM_SKILLS))
            self.film = nn.Linear(NUM_SKILLS, 2 * hidden_dim)
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        # object_locator: a learned map of where the commanded object is, fitted on the simulator's positions
        # before imitation and frozen (vla_ros.grounding.object_locator); it replaces the current frame's map,
        # which next to the arm jumps to the arm or another object
        self.object_locator = None
        if object_locator:
            self.object_locator = ObjectLocator(embed_dim)
            self.object_locator.requires_grad_(False)

    @property
    def skill_input_width(self) -> int:
        """Width of what :meth:`skills` reads: the sentence embedding, or a token reader's five logits."""
        return NUM_SKILLS if self.skill_reader_tokens else self.skill_reader_width

    @property
    def skill_input(self) -> str:
        """What :meth:`skills` reads, in words (for errors)."""
        return "token reader's skill logits" if self.skill_reader_tokens else "sentence embedding"

    def skills(self, sentence: torch.Tensor) -> torch.Tensor:
        """The skill reader's (B, 5) probabilities of reach, push left / right / forward / back.

        ``skill_reader_hard``: the skill it reads, one-hot, instead. The reader is less sure of a new phrasing than
        of a training one (median probability of the right skill 0.89 against 0.97 for reach), and probabilities
        the MLP never saw in training condition it worse than the skill they name (``docs/EXPERIMENT_LOG.md``,
        2026-12-07). A comparison with the maximum, not argmax, so the exported graph needs no ArgMax/OneHot.
        """
        if self.skill_reader_tokens:  # the token reader's logits, read before the network (skill_input_width)
            logits = sentence
        else:
            logits = F.normalize(sentence, dim=-1) @ self.skill_weight.T + self.skill_bias
        if self.skill_reader_hard:
            return (logits >= logits.max(dim=-1, keepdim=True).values).to(logits.dtype)
        return torch.softmax(logits, dim=-1)

    def _head(self, inputs: torch.Tensor, text: torch.Tensor, sentence: torch.Tensor | None) -> torch.Tensor:
        """The MLP over the map readouts, its hidden layer FiLM-modulated by the command when configured."""
        if self.film is None:
            return self.mlp(inputs)
        hidden = self.mlp[1](self.mlp[0](inputs))
        if self.skill_reader_width:
            if sentence is None or sentence.shape != (inputs.shape[0], self.skill_input_width):
                raise ValueError(f"this fusion reads the command's {self.skill_input}: pass sentence shaped "
                                 f"(B, {self.skill_input_width})")
            condition = self.skills(sentence)
        else:
            condition = F.normalize(text, dim=-1)
        scale, shift = self.film(condition).chunk(2, dim=-1)
        return self.mlp[3](self.mlp[2](hidden * (1 + scale) + shift))

    def standardised(self, patches: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The command's region-text similarity over patches, standardised per frame, (B, P)."""
        similarity = region_similarity(self.pooling, patches, text)
        # standardised per frame: how strongly CLIP matches differs between combinations, where it matches
        # most is what the policy needs; a blank modality (ablations) gives a flat map, not NaN
        centred = similarity - similarity.mean(dim=-1, keepdim=True)
        return centred / (centred.square().mean(dim=-1, keepdim=True).sqrt() + 1e-6)

    def logits(self, patches: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``t`` times the command's standardised region-text similarity over patches, (B, P)."""
        return self.log_temperature.exp() * self.standardised(patches, text)

    def readout_estimate(self, logits: torch.Tensor) -> torch.Tensor:
        """The position estimate (B, 2) that a map of ``logits`` (B, P) gives (:meth:`_readout`)."""
        return self._readout(logits)[2]

    def _readout(self, logits: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """MLP inputs of one frame, its weights (B, P) and its position estimate (B, 2) as (x, y) in [-1, 1].

        The estimate is the weighted mean patch centre, or with ``peak_window`` the mode-seeking position.
        """
        weights = torch.softmax(logits, dim=-1)
        xy = weights @ self.coordinates
        parts = [weights, xy] if self.map_weights else [xy]
        if self.peak_window <= 0:
            return parts, weights, xy
        estimate = torch.softmax(logits + self.log_window[logits.argmax(dim=-1)], dim=-1) @ self.coordinates
        return parts + [estimate], weights, estimate

    def forward(self, image_global, image_patches, text, reference_patches=None, sentence=None,
                proprio=None) -> torch.Tensor:
        """The fused features (:meth:`fuse`'s ``features``): what SB3 and the ONNX graph read."""
        return self.fuse(image_global, image_patches, text, reference_patches, sentence, proprio).features

    def fuse(self, image_global, image_patches, text, reference_patches=None, sentence=None,
             proprio=None) -> FusionOutput:
        """Fuse (B, D), (B, P, D), (B, D) [, reference (B, P, D)] [, sentence (B, W)] [, proprio (B, 2n)].

        Returns the features (B, out_dim), the map and the estimate. ``image_global`` is unused; ``sentence``
        (the text tower's sentence embedding) only with a skill reader; ``proprio`` (normalised joint state) only
        with ``proprio_dim``. The same as :meth:`fuse_maps` of :meth:`maps`.
        """
        _check_inputs(self, image_global, image_patches, text)
        if self.reference_frame and (reference_patches is None or reference_patches.shape != image_patches.shape):
            raise ValueError("this fusion reads a reference frame: pass reference_patches shaped like "
                             f"image_patches {tuple(image_patches.shape)}")
        return self.fuse_maps(self.maps(image_patches, text, reference_patches), text, sentence, proprio)

    def maps(self, image_patches, text, reference_patches=None) -> RegionMaps:
        """The maps :meth:`fuse` reads, computed from the CLIP embeddings before any parameter it trains.

        Fixed for fixed embeddings while the object locator is frozen (as in the policy's fits), so a fit may
        compute them once per sample instead of once per epoch (:func:`vla_ros.policy.imitation.fit`).
        """
        current = self.standardised(image_patches, text)
        reference = self.standardised(reference_patches, text) if self.reference_frame else None
        located = None
        if self.object_locator is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.object_locator_trains):
                located = self.object_locator(image_patches, text, current, reference, self.coordinates)
        return RegionMaps(current, reference, located)

    @property
    def object_locator_trains(self) -> bool:
        """Whether the object locator's parameters take gradients (it is frozen outside its own fit)."""
        return self.object_locator is not None and any(p.requires_grad for p in self.object_locator.parameters())

    def fuse_maps(self, maps: RegionMaps, text, sentence=None, proprio=None) -> FusionOutput:
        """:meth:`fuse` from its :meth:`maps`: the temperature, the readouts and the MLP (what training changes)."""
        temperature = self.log_temperature.exp()
        current = temperature * maps.current
        # the command itself, for what the map cannot say (a push's direction); unit norm as CLIP compares it
        command = [self.text_projection(F.normalize(text, dim=-1))] if self.text_projection is not None else []
        if self.proprio_dim:
            if proprio is None or proprio.shape != (maps.current.shape[0], self.proprio_dim):
                raise ValueError(f"this fusion reads the joint state: pass proprio shaped "
                                 f"(B, {self.proprio_dim})")
            command = command + [proprio]
        if not self.reference_frame:
            parts, weights, xy = self._readout(current)
            return FusionOutput(self._head(torch.cat(parts + command, dim=-1), text, sentence), weights, xy)
        reference = temperature * maps.reference
        if self.object_locator is not None:  # the locator read the temperature-free maps
            current = maps.located
        current_parts, current_xy, frame_xy = [], None, None
        if self.current_estimate or self.reference_prior is not None:
            raw = self._readout(current)
            frame_xy = raw[2]
            if self.current_estimate:
                current_parts, current_xy = (raw[0][1:] if self.map_weights else raw[0]), raw[2]  # estimates only
        if self.reference_prior is not None:
            # where the target was before the arm moved in: a covered target then does not move the
            # current estimate to whichever other object matches the command next best
            prior = reference if self.prior_spread <= 0 else spread_logits(reference, self.log_spread)
            current = current + self.reference_prior * prior
        parts, weights, xy = self._readout(current)
        if self.object_locator is not None:
            frame_xy = xy  # the locator's map follows a pushed object (no prior holds it at its start)
        reference_parts, _, reference_xy = self._readout(reference)
        return FusionOutput(self._head(torch.cat(parts + reference_parts + current_parts + command, dim=-1), text,
                                       sentence), weights, xy, reference_xy, current_xy, frame_xy)


def _region_fusion(**kwargs) -> CrossAttentionFusion:
    return CrossAttentionFusion(region_prior=True, **kwargs)


_FUSIONS = {"late": LateFusion, "cross_attention": CrossAttentionFusion, "gated": GatedFusion,
            "region": _region_fusion, "region_map": RegionMapFusion}


REFERENCE_FRAME_KINDS = ("cross_attention", "region", "region_map")


def build_fusion(kind: str, embed_dim: int, num_patches: int, out_dim: int = 256, hidden_dim: int = 256,
                 heads: int = 4, grid_size: tuple[int, int] | None = None, reference_frame: bool = False,
                 peak_window: float = 0.0, reference_prior: bool = False, patch_stitch: int = 1,
                 map_weights: bool = True, text_features: int = 0, command_film: bool = False,
                 skill_reader_width: int = 0, proprio_dim: int = 0, current_estimate: bool = False,
                 prior_spread: float = 0.0, object_locator: bool = False,
                 skill_reader_hard: bool = False, skill_reader_tokens: bool = False) -> nn.Module:
    """Build a fusion module by name (one of :data:`FUSION_KINDS`); see the module doc.

    ``patch_stitch`` s: the patches come from a grid s times as dense as the CLIP's
    (:func:`vla_ros.grounding.encoder.vision_forward`); ``region_map``'s pooling radius and ``peak_window``,
    given in CLIP patches, are scaled to it so they cover the same part of the image; so is ``prior_spread``.
    """
    if kind not in _FUSIONS:
        raise ValueError(f"unknown fusion kind {kind!r}; expected one of {FUSION_KINDS}")
    for name, value in (("peak_window", peak_window), ("reference_prior", reference_prior),
                        ("current_estimate", current_estimate), ("prior_spread", prior_spread),
                        ("object_locator", object_locator)):
        if value and kind != "region_map":
            raise ValueError(f"{name} is an option of the region_map fusion, not of {kind!r}")
    if peak_window < 0:
        raise ValueError(f"peak_window must be >= 0 patches, got {peak_window}")
    if patch_stitch != 1 and kind != "region_map":
        raise ValueError(f"patch_stitch is supported by the region_map fusion only, not by {kind!r}")
    if not map_weights and kind != "region_map":
        raise ValueError(f"map_weights is an option of the region_map fusion, not of {kind!r}")
    if text_features and kind != "region_map":
        raise ValueError(f"text_features is an option of the region_map fusion, not of {kind!r}")
    if command_film and kind != "region_map":
        raise ValueError(f"command_film is an option of the region_map fusion, not of {kind!r}")
    if skill_reader_width and kind != "region_map":
        raise ValueError(f"skill_reader_width is an option of the region_map fusion, not of {kind!r}")
    if proprio_dim and kind != "region_map":
        raise ValueError(f"proprio_dim is an option of the region_map fusion, not of {kind!r}")
    if reference_frame and kind not in REFERENCE_FRAME_KINDS:
        raise ValueError(f"fusion {kind!r} has no reference frame; it exists for {REFERENCE_FRAME_KINDS}")
    if embed_dim % heads:
        raise ValueError(f"embed_dim={embed_dim} must be divisible by heads={heads}")
    extra = {"reference_frame": True} if reference_frame else {}
    if peak_window:
        extra["peak_window"] = peak_window * patch_stitch
    if patch_stitch != 1:
        extra["sigma_patches"] = RegionMapFusion.DEFAULT_SIGMA_PATCHES * patch_stitch
    if reference_prior:
        extra["reference_prior"] = True
    if current_estimate:
        extra["current_estimate"] = True
    if prior_spread:
        extra["prior_spread"] = prior_spread * patch_stitch
    if not map_weights:
        extra["map_weights"] = False
    if text_features:
        extra["text_features"] = int(text_features)
    if command_film:
        extra["command_film"] = True
    if skill_reader_width:
        extra["skill_reader_width"] = int(skill_reader_width)
    if skill_reader_hard:
        extra["skill_reader_hard"] = True
    if skill_reader_tokens:
        extra["skill_reader_tokens"] = True
    if proprio_dim:
        extra["proprio_dim"] = int(proprio_dim)
    if object_locator:
        extra["object_locator"] = True
    if kind in ("cross_attention", "region", "gated"):
        extra.update(heads=heads, grid_size=grid_size)
    elif kind == "region_map":
        extra["grid_size"] = grid_size
    # each kind's constructor takes only its own options: an option it does not know is a TypeError
    return _FUSIONS[kind](embed_dim=embed_dim, num_patches=num_patches, out_dim=out_dim,
                          hidden_dim=hidden_dim, **extra)
