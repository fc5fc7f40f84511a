"""An imitation phase cut off between rounds resumes from its saved rounds.

A round cut off in its fit is fitted again on the demonstrations it saved, so up to that fit the resumed run is
the uninterrupted one. Rounds collected after the restart are not bit-identical to an uninterrupted run's: the
envs' scene sequence restarts with the new process (the DAgger mixing RNG is seeded per round).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vla_ros.paths import share_path
from vla_ros.policy import imitation
from vla_ros.policy.train import TrainConfig, TrainingRun


def _config(out) -> TrainConfig:
    return TrainConfig(out=str(out), task="mixed", clip=str(share_path("models", "clip")), fusion="region_map",
                       reference_frame=True, map_weights=False, peak_window=1.5, object_locator=True,
                       object_locator_refit=True, object_locator_epochs=1, action_chunk=2, chunk_execute=2,
                       bc_label_every_step=True, num_envs=1, vec_env="dummy", bc_episodes=2, dagger_rounds=2,
                       dagger_episodes=1, bc_epochs=1, ppo_steps=0, eval_episodes=1, fusion_dim=32, hidden_dim=32,
                       command="pytest")


def test_an_interrupted_imitation_resumes_from_its_saved_rounds(tmp_path, monkeypatch):
    whole = TrainingRun(_config(tmp_path / "whole"))
    whole.run()

    fit = imitation.fit
    calls = []

    def fit_then_stop(*args, **kwargs):  # the session ends during round 1's policy fit
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fit(*args, **kwargs)

    monkeypatch.setattr(imitation, "fit", fit_then_stop)
    with pytest.raises(KeyboardInterrupt):
        TrainingRun(_config(tmp_path / "cut")).run()
    state = json.loads((tmp_path / "cut" / "state.json").read_text())
    assert state["imitation_rounds_done"] == 1 and state["imitation_rounds_collected"] == 2
    assert "imitation" not in state["phases_done"]
    monkeypatch.setattr(imitation, "fit", fit)
    resumed = TrainingRun(_config(tmp_path / "cut"))
    resumed.run()

    rounds = [imitation.Demonstrations.load(tmp_path / "cut" / f"demos_{k}.npz") for k in range(3)]
    assert resumed.state["imitation_rounds_done"] == 3
    assert resumed.state["imitation_env_steps"] == sum(d.cost for d in rounds) * 2  # chunk_execute env steps
    # rounds 0 and 1 (cut off in its fit, then fitted again on its saved samples) are the uninterrupted run's
    for k in (0, 1):
        same = imitation.Demonstrations.load(tmp_path / "whole" / f"demos_{k}.npz")
        assert all(np.array_equal(same.obs[key], rounds[k].obs[key]) for key in same.obs)
    fits = resumed.state["object_locator_rounds"]
    assert all(fits[k] == whole.state["object_locator_rounds"][k] for k in ("0", "1"))
    # and each locator fit saw every round so far (its held-out tenth)
    for k in range(3):
        seen = sum(len(d) for d in rounds[:k + 1])
        assert fits[str(k)]["heldout_samples"] == seen - round(seen * 0.9)
    final = load_file(str(tmp_path / "cut" / "final" / "policy.safetensors"))
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())
