"""A learned map of where the commanded object is, made for frames in which the arm covers it.

The ``region_map`` fusion reads the commanded object's position from a fixed readout of the frozen CLIP's
region-text similarity. Far from the arm that is right to about 0.025 image half-widths; within 5 cm of the
fingertip the estimate jumps to the arm or to another object in one frame in four (median error 0.09), and that is
where a push happens. Learners given the object's exact position push 86-96% of scenes, the policy about 50%
(``research/push_memory_probe.py``, ``research/push_failures.py``). ``research/occlusion_locator_probe.py``
(2026-12-07, ``--no-fingertip``) measured this module on the scripted expert's push frames it had not been fitted
on: within 5 cm of the fingertip, median error 0.030 against the map's 0.091 (0.074 with the first frame's map as
a prior), jumps 4.5% against 22.8% (10.3%).

:class:`ObjectLocator` scores every patch with a small MLP that reads the patch's CLIP token, its product with the
command's embedding, the standardised similarity map of this frame and of the episode's first frame there, and
where the patch lies relative to the first frame's estimate. The scores are logits over patches, read out as the
map's are. It reads nothing of the arm's own state: a first version also read the fingertip's image position (from
the joint state) and its policy pushed 19% of scenes instead of 50%, 29% of them never touching the object, though
its estimates were the better ones on the learner's own states; an estimate that can follow the arm lets the policy
believe it is where it should be (docs/EXPERIMENT_LOG.md, 2026-12-07). It is fitted by :func:`fit_object_locator`
on imitation's demonstrations (their ``target_xy``: the simulator's projected object position, a training signal
only) by cross-entropy to a Gaussian around the true position, then frozen: at run time it sees only the camera and
the command.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TARGET_SIGMA_PATCHES = 0.5
"""radius of the Gaussian the locator's softmax is fitted to, in patches of the grid the fusion reads (stitched)"""
JUMP = 0.2
"""an estimate off by more than this many image half-widths has jumped to something else"""


class ObjectLocator(nn.Module):
    """Per-patch logits (B, P) of where the commanded object is, from the frame and the episode's first frame."""

    def __init__(self, embed_dim: int, hidden: int = 128):
        super().__init__()
        if embed_dim < 1:
            raise ValueError(f"the object locator needs a CLIP width, got {embed_dim}")
        self.norm = nn.LayerNorm(embed_dim)
        # token, token x command, this frame's and the first frame's similarity, offset from the first frame's
        # estimate (2)
        self.mlp = nn.Sequential(nn.Linear(2 * embed_dim + 4, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, patches: torch.Tensor, text: torch.Tensor, current: torch.Tensor, reference: torch.Tensor,
                coordinates: torch.Tensor) -> torch.Tensor:
        """Logits (B, P).

        ``patches`` (B, P, D) and ``text`` (B, D) CLIP embeddings; ``current`` and ``reference`` (B, P) the
        standardised region-text similarity of this frame and of the episode's first frame; ``coordinates``
        (P, 2) the patch centres in [-1, 1].
        """
        reference_xy = torch.softmax(reference, dim=-1) @ coordinates
        tokens = self.norm(patches)
        product = tokens * F.normalize(text, dim=-1)[:, None]
        inputs = torch.cat([tokens, product, current[..., None], reference[..., None],
                            coordinates[None] - reference_xy[:, None]], dim=-1)
        return self.mlp(inputs)[..., 0]


def gaussian_logits(coordinates: torch.Tensor, xy: torch.Tensor, grid_side: int,
                    sigma_patches: float = TARGET_SIGMA_PATCHES) -> torch.Tensor:
    """(B, P) logits over patches of a Gaussian of ``sigma_patches`` around each position ``xy`` (B, 2)."""
    sigma = sigma_patches * 2.0 / grid_side
    return -(coordinates[None] - xy[:, None]).square().sum(-1) / (2 * sigma * sigma)


def gaussian_targets(coordinates: torch.Tensor, xy: torch.Tensor, grid_side: int,
                     sigma_patches: float = TARGET_SIGMA_PATCHES) -> torch.Tensor:
    """(B, P) distributions over patches: a Gaussian of ``sigma_patches`` around each true position (B, 2)."""
    return torch.softmax(gaussian_logits(coordinates, xy, grid_side, sigma_patches), dim=-1)


@dataclass(frozen=True)
class LocatorFit:
    """How the fit went: its final cross-entropy, and on held-out samples the locator's and the map's errors."""

    train_cross_entropy: float
    heldout_samples: int
    median_error: float
    share_jumps: float
    map_median_error: float
    map_share_jumps: float

    def as_dict(self) -> dict:
        """The fields as a JSON-ready dict (the run's state and the checkpoint's metrics)."""
        return dict(self.__dict__)


def fit_object_locator(fusion, patches: np.ndarray, references: np.ndarray, text: np.ndarray,
                       target_xy: np.ndarray, epochs: int = 10,
                       batch_size: int = 64, lr: float = 1e-3, seed: int = 0, heldout: float = 0.1) -> LocatorFit:
    """Fit ``fusion.object_locator`` on samples (module doc), freeze it, and report held-out errors.

    ``patches`` and ``references`` (N, P, D), ``text`` (N, D), ``target_xy`` (N, 2): the commanded object's true
    image position. The last ``heldout`` share of the samples is kept out of the fit and scored.
    """
    locator: ObjectLocator = fusion.object_locator
    n = len(target_xy)
    split = max(1, int(round(n * (1.0 - heldout))))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    grid = int(round(fusion.coordinates.shape[0] ** 0.5))

    def batch(index):
        as_tensor = lambda a: torch.as_tensor(np.asarray(a[index], dtype=np.float32))  # noqa: E731
        p, r, t = as_tensor(patches), as_tensor(references), as_tensor(text)
        with torch.no_grad():
            current, reference = fusion.standardised(p, t), fusion.standardised(r, t)
        return (p, t, current, reference, fusion.coordinates), as_tensor(target_xy)

    parameters = list(locator.parameters())
    locator.requires_grad_(True)
    optimiser = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, epochs * -(-split // batch_size)))
    locator.train()
    loss_sum = 0.0
    for _ in range(epochs):
        order = rng.permutation(split)
        loss_sum = 0.0
        for start in range(0, split, batch_size):
            inputs, xy = batch(order[start:start + batch_size])
            logits = locator(*inputs)
            loss = -(gaussian_targets(fusion.coordinates, xy, grid) * torch.log_softmax(logits, -1)).sum(-1).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            loss_sum += loss.item() * len(xy)
    locator.eval()
    locator.requires_grad_(False)
    errors, map_errors = [], []
    with torch.no_grad():
        for start in range(split, n, 256):
            inputs, xy = batch(np.arange(start, min(start + 256, n)))
            errors.append((fusion.readout_estimate(locator(*inputs)) - xy).norm(dim=-1).numpy())
            map_errors.append((fusion.readout_estimate(fusion.log_temperature.exp() * inputs[2]) - xy)
                              .norm(dim=-1).numpy())
    err = np.concatenate(errors) if errors else np.full(1, np.nan)
    map_err = np.concatenate(map_errors) if map_errors else np.full(1, np.nan)
    return LocatorFit(train_cross_entropy=loss_sum / split, heldout_samples=int(n - split),
                      median_error=float(np.median(err)),
                      share_jumps=float(np.mean(err > JUMP)), map_median_error=float(np.median(map_err)),
                      map_share_jumps=float(np.mean(map_err > JUMP)))
