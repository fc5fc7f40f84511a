"""Which PPO iterate a run keeps: the validation success rate, or a mixed run's lowest per-task success rate."""

from __future__ import annotations

import csv
import json

import pytest

from vla_ros.paths import share_path
from vla_ros.policy.evaluate import SplitResult
from vla_ros.policy.train import TrainConfig, TrainingRun, _append_row, selection_score


def test_the_lowest_task_score_cannot_be_raised_by_one_task_paying_for_another():
    traded = SplitResult(successes=15, episodes=20, mean_length=50.0, by_task={"reach": (10, 10, 0),
                                                                              "push": (5, 10, 0)})
    balanced = SplitResult(successes=14, episodes=20, mean_length=50.0, by_task={"reach": (8, 10, 0),
                                                                                "push": (6, 10, 0)})
    assert selection_score(traded, "success") > selection_score(balanced, "success")
    assert selection_score(traded, "lowest_task") == 0.5 < selection_score(balanced, "lowest_task") == 0.6
    assert traded.task_success_rate("push") == 0.5 and traded.task_success_rate("pick") is None
    single = SplitResult(successes=3, episodes=4, mean_length=50.0, by_task={"reach": (3, 4, 0)})
    assert selection_score(single, "lowest_task") == selection_score(single, "success") == 0.75


def test_a_row_with_new_columns_rewrites_the_csv_keeping_the_earlier_rows(tmp_path):
    path = tmp_path / "eval.csv"
    _append_row(path, {"phase": "imitation", "success_train": 0.5})
    _append_row(path, {"phase": "ppo", "success_train": 0.6, "success_train_push": 0.4})
    rows = list(csv.DictReader(path.open()))
    assert [r["phase"] for r in rows] == ["imitation", "ppo"]
    assert rows[0]["success_train_push"] == "" and rows[1]["success_train_push"] == "0.4"


def test_a_mixed_run_logs_each_task_and_keeps_the_iterate_of_the_best_lowest_task(tmp_path):
    """A real tiny mixed run (imitation, then PPO with two evaluations)."""
    out = tmp_path / "run"
    cfg = TrainConfig(out=str(out), task="mixed", clip=str(share_path("models", "clip")), fusion="region_map",
                      reference_frame=True, map_weights=False, skill_reader=True, num_envs=1, vec_env="dummy",
                      bc_episodes=2, dagger_rounds=0, bc_epochs=1, ppo_steps=32, n_steps=16, batch_size=16,
                      n_epochs=1, eval_every=16, eval_episodes=8, checkpoint_every=10_000, fusion_dim=32,
                      hidden_dim=32, ppo_selection="lowest_task", command="pytest")
    final = TrainingRun(cfg).run()
    rows = list(csv.DictReader((out / "eval.csv").open()))
    ppo = [r for r in rows if r["phase"] == "ppo"]
    assert len(ppo) >= 2 and {"success_train_reach", "success_train_push"} <= set(rows[0])
    lowest = [min(float(r["success_train_reach"]), float(r["success_train_push"])) for r in ppo]
    metrics = json.loads((final / "config.json").read_text())["metrics"]
    assert metrics["selected_by"] == "lowest_task" and metrics["selected_validation_success_train"] == max(lowest)
    with pytest.raises(ValueError, match="ppo_selection"):
        TrainingRun(TrainConfig(out=str(tmp_path / "other"), ppo_selection="best"))
