"""``vla-ros sweep``: the spec's checks, the error without Ray, and 2 seeds x the shipped recipe end to end."""

import csv
import json
import shutil
import sys

import pytest

from vla_ros.cli import main
from vla_ros.distributed.sweep import best_trial, build_spec, parse_assignments, trials
from vla_ros.paths import share_path

RECIPE = str(share_path("models", "policy", "recipe.yaml"))
# the reduced budget of tests/test_recipes.py: imitation then 64 PPO steps, one evaluation after each
REDUCED = ["num_envs=2", "vec_env=dummy", "bc_episodes=2", "dagger_rounds=1", "dagger_episodes=2", "bc_epochs=1",
           "ppo_steps=64", "n_steps=32", "batch_size=32", "n_epochs=1", "eval_every=10000", "eval_episodes=2",
           "checkpoint_every=64"]


def test_the_spec_is_recipe_then_overrides_and_one_trial_per_seed_and_combo(tmp_path):
    spec = build_spec(RECIPE, [0, 1], parse_assignments(["learning_rate=5e-5,1e-4"], many=True),
                      parse_assignments(["ppo_steps=64", "net_arch=32 32"], many=False))
    assert spec.base["fusion"] == "region_map" and spec.base["ppo_steps"] == 64 and spec.base["net_arch"] == (32, 32)
    found = trials(spec, tmp_path / "sweep")
    assert [t.settings for t in found] == [{"learning_rate": 5e-5, "seed": 0}, {"learning_rate": 5e-5, "seed": 1},
                                           {"learning_rate": 1e-4, "seed": 0}, {"learning_rate": 1e-4, "seed": 1}]
    assert len({t.train["out"] for t in found}) == 4
    assert all(t.train["out"].startswith(str((tmp_path / "sweep" / "trials").resolve())) for t in found)
    assert found[3].train["learning_rate"] == 1e-4 and found[3].train["seed"] == 1


@pytest.mark.parametrize("seeds, grid, overrides, match", [
    ([], {}, {}, "at least one seed"),
    ([0, 0], {}, {}, "seeds repeat"),
    ([0], {"learning_rat": [1e-4]}, {}, "grid: unknown field 'learning_rat'"),
    ([0], {}, {"ppo_step": 3}, "override: unknown field 'ppo_step'"),
    ([0], {"seed": [1, 2]}, {}, "set by the sweep itself"),
    ([0], {}, {"out": "x"}, "set by the sweep itself"),
    ([0], {"learning_rate": []}, {}, "at least one value"),
    ([0], {"ppo_steps": ["many"]}, {}, "ppo_steps must be int"),
])
def test_a_bad_spec_is_a_clear_error(seeds, grid, overrides, match):
    with pytest.raises(ValueError, match=match):
        build_spec(RECIPE, seeds, grid, overrides)


def test_bad_flags_exit_2_before_starting_ray(capsys):
    assert main(["sweep", "--config", RECIPE, "--grid", "learning_rat=1e-4"]) == 2
    assert "unknown field 'learning_rat'" in capsys.readouterr().err
    assert main(["sweep", "--config", RECIPE, "--set", "ppo_steps=lots"]) == 2
    assert "cannot read 'lots' as int" in capsys.readouterr().err


def test_ties_go_to_the_lower_trial_and_only_finished_trials_count():
    summaries = [{"index": 0, "status": "stopped", "validation_success": None},
                 {"index": 1, "status": "finished", "validation_success": 0.5},
                 {"index": 2, "status": "finished", "validation_success": 0.5},
                 {"index": 3, "status": "error", "validation_success": None}]
    assert best_trial(summaries)["index"] == 1
    assert best_trial(summaries[:1]) is None


def test_without_ray_the_sweep_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["sweep", "--config", RECIPE, "--out", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err
    assert "requirements/ray.txt" in err and "Traceback" not in err
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_two_seeds_of_the_shipped_recipe_sweep_end_to_end(tmp_path, capsys):
    pytest.importorskip("ray.tune")
    from vla_ros.policy.policy import Policy

    out = tmp_path / "sweep"
    argv = ["sweep", "--config", RECIPE, "--clip", str(share_path("models", "policy", "clip")), "--seeds", "0", "1",
            "--out", str(out), "--num-cpus", "2", "--json", str(tmp_path / "report.json")]
    for item in REDUCED:
        argv += ["--set", item]
    assert main(argv) == 0
    report = json.loads((out / "sweep.json").read_text())
    assert json.loads((tmp_path / "report.json").read_text())["best"] == report["best"]
    assert [t["settings"] for t in report["trials"]] == [{"seed": 0}, {"seed": 1}]
    for trial in report["trials"]:
        assert trial["status"] == "finished" and trial["evaluations"] >= 2  # after imitation and after PPO
        assert len(trial["validation_success_history"]) == trial["evaluations"]
        assert 0.0 <= trial["validation_success"] <= 1.0
        assert Policy.load(out / "trials" / trial["name"] / "final") is not None
    scores = [t["validation_success"] for t in report["trials"]]
    assert report["best"] == report["trials"][scores.index(max(scores))]["name"]  # argmax, ties to the first
    best = out / "best"
    assert Policy.load(best) is not None
    card = (best / "MODEL_CARD.md").read_text()
    assert report["best"] in card and "validation scenes" in card and "recipe.yaml" in card
    recipe = best / "recipe.yaml"
    from vla_ros.commands.dataclass_args import load_recipe
    from vla_ros.policy.train import TrainConfig

    values = load_recipe(TrainConfig, recipe, skip=("command",))
    assert values["fusion"] == "region_map" and values["ppo_steps"] == 64 and "out" not in values
    assert values["seed"] == next(t for t in report["trials"] if t["name"] == report["best"])["settings"]["seed"]
    assert report["best"] in capsys.readouterr().out

    # rerunning the sweep resumes: finished trials are replayed from their folders, not retrained (these reruns
    # share one local Ray, which the command reuses rather than starting its own)
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        _rerun_and_stop_early(argv, out, report, scores)
    finally:
        ray.shutdown()


def _rerun_and_stop_early(argv, out, report, scores):
    stamps = {t["name"]: (out / "trials" / t["name"] / "final" / "policy.safetensors").stat().st_mtime_ns
              for t in report["trials"]}
    assert main(argv) == 0
    again = json.loads((out / "sweep.json").read_text())
    assert again["best"] == report["best"] and [t["validation_success"] for t in again["trials"]] == scores
    assert stamps == {n: (out / "trials" / n / "final" / "policy.safetensors").stat().st_mtime_ns for n in stamps}

    # early stopping: trial 1, unfinished and behind trial 0 at the first rung, is stopped (one trial at a time,
    # so that trial 0 reaches the rung first), before it trains again
    first, second = (out / "trials" / t["name"] for t in report["trials"])
    _set_validation_success(first, 1.0)
    _set_validation_success(second, 0.0)
    shutil.rmtree(second / "final")
    assert main(argv + ["--max-concurrent", "1", "--grace-period", "1"]) == 0
    stopped = json.loads((out / "sweep.json").read_text())
    assert [t["status"] for t in stopped["trials"]] == ["finished", "stopped"]
    assert stopped["best"] == report["trials"][0]["name"] and not (second / "final").exists()


def _set_validation_success(run_dir, value):
    path = run_dir / "eval.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "success_train": value} for row in rows)
