"""PPO that keeps what imitation taught: each update is followed by steps of regression on expert demonstrations.

Plain PPO fine-tuning of the mixed reach + push policy raised reach and lowered push (docs/EXPERIMENT_LOG.md,
2026-12-06, ninth session): the reward alone does not hold the push behaviour imitation put there. Here, after
each rollout's clipped-surrogate update, ``batches`` minibatches of the run's own aggregated demonstrations (the
expert-labelled states of behaviour cloning and DAgger, ``OUT/demos_*.npz``) each take one step of ``weight``
times the imitation loss (action and grounding regression, :func:`vla_ros.policy.imitation.batch_losses`) with
an Adam of their own at PPO's learning rate. It is an alternating form of DAPG's demonstration-augmented policy
gradient (Rajeswaran et al., 2018): near the expert on the states the demonstrations cover, free to improve on the
reward elsewhere.
"""

from __future__ import annotations

import numpy as np
import torch
from stable_baselines3 import PPO

from vla_ros.policy.imitation import Demonstrations, batch_losses


class ImitationRegularisedPPO(PPO):
    """SB3 PPO whose ``train()`` is followed by imitation steps (:meth:`attach_demonstrations`; none: plain PPO)."""

    demonstrations: Demonstrations | None = None
    imitation_weight: float = 0.0
    imitation_batches: int = 0
    imitation_batch_size: int = 256

    def attach_demonstrations(self, data: Demonstrations, weight: float, batches: int, batch_size: int,
                              seed: int, lr: float | None = None) -> None:
        """Regress on ``data`` after every update: ``batches`` minibatches of ``batch_size``, loss times ``weight``.

        The steps have their own Adam (``lr``, default PPO's learning rate), so PPO's moments do not carry into
        them nor theirs into PPO's. Not saved with the model (the demonstrations stay in the run folder): attach
        again after ``load``.
        """
        if not len(data):
            raise ValueError("no demonstrations to regularise PPO with")
        if weight <= 0 or batches < 1 or batch_size < 1:
            raise ValueError(f"imitation weight, batches and batch size must be positive, got {weight}, {batches}, "
                             f"{batch_size}")
        self.demonstrations, self.imitation_weight = data, float(weight)
        self.imitation_batches, self.imitation_batch_size = int(batches), int(batch_size)
        self._imitation_rng = np.random.default_rng(seed)
        lr = float(self.lr_schedule(1.0)) if lr is None else float(lr)
        self._imitation_params = [p for name, p in self.policy.named_parameters() if name != "log_std"]
        self._imitation_optimizer = torch.optim.Adam(self._imitation_params, lr=lr)

    def _excluded_save_params(self) -> list[str]:
        """Keep the demonstrations (often gigabytes, already in the run folder) and their optimiser out of the zip."""
        return [*super()._excluded_save_params(), "demonstrations", "_imitation_rng", "_imitation_params",
                "_imitation_optimizer"]

    def train(self) -> None:
        """PPO's update, then the imitation steps; logs ``train/imitation_action_mse``."""
        super().train()
        if self.demonstrations is not None:
            self.logger.record("train/imitation_action_mse", self._imitation_steps())

    def _imitation_steps(self) -> float:
        """``imitation_batches`` optimiser steps on the imitation loss of random demonstration minibatches.

        Returns their mean action MSE (before each step).
        """
        self.policy.set_training_mode(True)
        losses = []
        for _ in range(self.imitation_batches):
            idx = self._imitation_rng.integers(0, len(self.demonstrations), size=self.imitation_batch_size)
            action_loss, _, grounding_loss = batch_losses(self.policy, self.demonstrations, idx)
            self._imitation_optimizer.zero_grad()
            (self.imitation_weight * (action_loss + grounding_loss)).backward()
            torch.nn.utils.clip_grad_norm_(self._imitation_params, self.max_grad_norm)
            self._imitation_optimizer.step()
            losses.append(float(action_loss.detach()))
        self.policy.set_training_mode(False)
        return float(np.mean(losses))
