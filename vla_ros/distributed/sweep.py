"""Ray Tune sweeps over a training recipe: seeds x a grid of chosen hyperparameters, early stopping, best export.

A sweep is a base recipe (a ``vla-ros train --config`` YAML file), fixed overrides (e.g. a reduced budget), a
list of seeds and a grid (field -> values; every name a :class:`~vla_ros.policy.train.TrainConfig` field).
Every combination of grid values and seed is one trial, and every trial is a normal resumable run folder,
``OUT/trials/<trial>`` (with the ``recipe.yaml`` that resumes it alone through ``vla-ros train``): rerunning
the sweep resumes unfinished trials and replays, without retraining, the ones that finished.

Each trial reports every evaluation of its run to Tune: ``validation_success`` is the success rate on
*training* colour-shape combos on *validation* scenes (``success_train`` of ``eval.csv``). Early stopping
(ASHA) and the choice of the best trial read only that, never evaluation scenes and never held-out combos,
which are what ``vla-ros eval`` measures afterwards. The best trial's exported checkpoint is copied to
``OUT/best`` with its recipe and model card.

Where things go: trials' run folders (checkpoints, ``eval.csv``, TensorBoard logs) in ``OUT/trials``; Ray
Tune's own per-trial results and logs (``result.json``, ``progress.csv``, ``params.json``, the trainable's
errors) in ``OUT/tune/<timestamp>/<trial>``, one timestamped folder per invocation; the summary in
``OUT/sweep.json``.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
import shutil
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# fields a sweep sets itself: the seed comes from the seed list, the run folder from the trial's name
RESERVED = ("seed", "out", "command")
SELECTION_RULE = ("highest validation success on training combos, validation scenes (the success of the "
                  "exported iterate); ties go to the lower trial index; evaluation scenes are never read")


@dataclass
class SweepSpec:
    """What to sweep: base settings (recipe + overrides), seeds and a grid of chosen hyperparameters."""

    base: dict[str, Any]
    """TrainConfig field values shared by every trial (the recipe, then the overrides on top)"""
    seeds: list[int]
    """one trial per seed and grid combination"""
    grid: dict[str, list[Any]] = field(default_factory=dict)
    """field -> the values to try (product over fields)"""
    recipe: str = ""
    """the base recipe file, for the record"""


@dataclass
class Trial:
    """One run of the sweep: its settings and its run folder."""

    index: int
    name: str
    settings: dict[str, Any]
    """the swept values: the grid's and the seed"""
    train: dict[str, Any]
    """every TrainConfig field (tuples as lists), ``out`` the absolute run folder"""


def _fields() -> dict[str, Any]:
    from vla_ros.policy.train import TrainConfig

    return typing.get_type_hints(TrainConfig)


def parse_value(name: str, text: str) -> Any:
    """A command-line value of TrainConfig field ``name`` (a tuple field: numbers separated by spaces)."""
    from vla_ros.commands.dataclass_args import _plain_type

    hints = _fields()
    if name not in hints:
        raise ValueError(f"unknown field {name!r}; known: {', '.join(sorted(hints))}")
    hint = _plain_type(hints[name])
    text = text.strip()
    try:
        if hint is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if typing.get_origin(hint) is tuple:
            item = typing.get_args(hint)[0]
            return tuple(item(v) for v in text.split())
        return hint(text) if hint in (int, float) else text
    except ValueError:
        raise ValueError(f"{name}: cannot read {text!r} as {getattr(hint, '__name__', hint)}") from None


def parse_assignments(items: list[str], many: bool) -> dict[str, Any]:
    """``name=value`` (``many``: ``name=v1,v2,...``) strings as a mapping; names may use dashes."""
    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise ValueError(f"expected NAME={'V1,V2' if many else 'VALUE'}, got {item!r}")
        if name in out:
            raise ValueError(f"{name} given twice")
        out[name] = [parse_value(name, v) for v in text.split(",")] if many else parse_value(name, text)
    return out


def build_spec(recipe: str | Path | None, seeds: list[int], grid: dict[str, list[Any]] | None = None,
               overrides: dict[str, Any] | None = None) -> SweepSpec:
    """A checked sweep spec; a clear ``ValueError`` for an unknown or reserved field, no seeds or empty values."""
    from vla_ros.commands.dataclass_args import _check_value, load_recipe
    from vla_ros.policy.train import TrainConfig

    hints = _fields()
    seeds = [int(s) for s in seeds or []]
    if not seeds:
        raise ValueError("a sweep needs at least one seed (--seeds 0 1 ...)")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat: {seeds}")
    base = dict(load_recipe(TrainConfig, recipe, skip=("command",))) if recipe else {}
    base.pop("out", None)  # every trial runs in its own folder
    for what, values in (("override", overrides or {}), ("grid", grid or {})):
        for name in values:
            if name not in hints:
                raise ValueError(f"{what}: unknown field {name!r} (not a `vla-ros train` setting); "
                                 f"known: {', '.join(sorted(hints))}")
            if name in RESERVED:
                raise ValueError(f"{what}: {name!r} is set by the sweep itself"
                                 + (" (use --seeds)" if name == "seed" else ""))
    for name, value in (overrides or {}).items():
        base[name] = _check_value(TrainConfig, name, value, hints[name], f"override {name}")
    checked = {}
    for name, values in (grid or {}).items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"grid: {name} needs at least one value")
        checked[name] = [_check_value(TrainConfig, name, v, hints[name], f"grid {name}") for v in values]
        if len({json.dumps(v) for v in checked[name]}) != len(values):
            raise ValueError(f"grid: {name} repeats a value: {values}")
    return SweepSpec(base=base, seeds=seeds, grid=checked, recipe=str(recipe or ""))


def _slug(value: Any) -> str:
    text = "x".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]", "_", text)


def trials(spec: SweepSpec, out: str | Path) -> list[Trial]:
    """Every trial of ``spec`` (grid combinations, seeds innermost), run folders under ``out/trials``.

    Paths are made absolute (Ray workers need not run in this directory): the run folder and a relative CLIP.
    """
    from vla_ros.commands.dataclass_args import recipe_of
    from vla_ros.policy.train import TrainConfig

    root = Path(out).resolve() / "trials"
    names = list(spec.grid)
    found = []
    for combo in itertools.product(*(spec.grid[n] for n in names)):
        for seed in spec.seeds:
            index = len(found)
            settings = {**dict(zip(names, combo)), "seed": seed}
            name = f"trial_{index:03d}_" + "_".join(f"{k}-{_slug(v)}" for k, v in settings.items())
            values = {**spec.base, **settings, "out": str(root / name)}
            if values.get("clip"):
                values["clip"] = str(Path(values["clip"]).resolve())
            cfg = TrainConfig(**values)
            found.append(Trial(index, name, {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
                               recipe_of(cfg)))
    return found


def train_config(train: dict[str, Any]):
    """The TrainConfig of a trial's ``train`` mapping (lists back to tuples)."""
    from vla_ros.policy.train import TrainConfig

    hints = _fields()
    return TrainConfig(**{k: tuple(v) if typing.get_origin(hints[k]) is tuple else v for k, v in train.items()})


def read_evaluations(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's evaluation rows (``eval.csv``) as numbers."""
    path = Path(run_dir) / "eval.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: v if k == "phase" else float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _metrics(row: dict[str, Any]) -> dict[str, Any]:
    """What a trial reports to Tune for one evaluation row: validation scenes only."""
    return {"validation_success": float(row["success_train"]), "env_steps": int(float(row["env_steps"])),
            "ppo_steps": int(float(row["ppo_steps"])), "phase": row["phase"]}


def run_finished(train: dict[str, Any]) -> bool:
    """Whether a trial's run folder holds its exported checkpoint for the whole PPO budget."""
    out = Path(train["out"])
    if not (out / "final" / "config.json").is_file() or not (out / "state.json").is_file():
        return False
    state = json.loads((out / "state.json").read_text())
    return int(train["ppo_steps"]) <= 0 or int(state.get("ppo_steps", 0)) >= int(train["ppo_steps"])


def run_trial(config: dict[str, Any], runs: dict[str, dict[str, Any]]) -> None:
    """Tune's trainable: one trial's ``TrainingRun``, each evaluation reported as ``validation_success``.

    ``config["trial"]`` names the trial and its swept settings (what Tune shows); ``runs`` maps each trial's
    name to its full ``TrainConfig`` values.

    A resumed trial first replays the evaluations its folder already holds (so early stopping sees its whole
    history); a finished one only replays them.
    """
    import torch
    from ray import tune

    torch.set_num_threads(1)
    train = runs[config["trial"]["name"]]
    for row in read_evaluations(train["out"]):
        tune.report(_metrics(row))
    if run_finished(train):
        return
    from vla_ros.policy.train import TrainingRun

    run = TrainingRun(train_config(train))
    run.on_evaluation = lambda row: tune.report(_metrics(row))
    run.run()


def expected_evaluations(train: dict[str, Any]) -> int:
    """Evaluations a run makes: one after imitation, one per ``eval_every`` PPO steps and one at its end."""
    ppo = int(train["ppo_steps"])
    return 1 + (ppo // max(1, int(train["eval_every"])) + 1 if ppo > 0 else 0)


def selected_success(run_dir: str | Path) -> float | None:
    """Validation success of the iterate a finished run exported (its best PPO evaluation, else its last)."""
    path = Path(run_dir) / "final" / "config.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text()).get("metrics", {})
    if metrics.get("selected_validation_success_train") is not None:
        return float(metrics["selected_validation_success_train"])
    rows = read_evaluations(run_dir)
    return float(rows[-1]["success_train"]) if rows else None


def best_trial(summaries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The finished trial with the highest validation success (ties: the lower index); None if none finished."""
    done = [s for s in summaries if s["status"] == "finished" and s["validation_success"] is not None]
    return max(done, key=lambda s: (s["validation_success"], -s["index"])) if done else None


def run_sweep(spec: SweepSpec, out: str | Path, cpus_per_trial: float = 1.0, max_concurrent: int | None = None,
              early_stopping: bool = True, grace_period: int = 2, max_failures: int = 0, command: str = "",
              verbose: int = 1) -> dict[str, Any]:
    """Run every trial of ``spec`` on the connected Ray (see :func:`ray_session`); export the best; the report.

    ``grace_period``: evaluations a trial makes before ASHA may stop it (halving at 2x, 4x, ... that many).
    Early-stopped trials keep their run folder but export nothing; the best is chosen among finished trials.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    all_trials = trials(spec, out)
    for trial in all_trials:
        trial.train["command"] = f"{command}  # sweep trial {trial.name}".strip()
        _write_recipe(Path(trial.train["out"]) / "recipe.yaml", trial.train, keep_out=True)
    if early_stopping:
        # max_t only bounds the rungs: a trial reporting max_t times is stopped, so leave room for replays
        max_t = max(grace_period, 4 * max(expected_evaluations(t.train) for t in all_trials) + 8)
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=grace_period,
                                  reduction_factor=2)
    else:
        scheduler = FIFOScheduler()
    by_name = {t.name: t for t in all_trials}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, runs={t.name: t.train for t in all_trials}),
                            {"cpu": cpus_per_trial}),
        param_space={"trial": tune.grid_search([{"name": t.name, **t.settings} for t in all_trials])},
        tune_config=tune.TuneConfig(
            metric="validation_success", mode="max", scheduler=scheduler, max_concurrent_trials=max_concurrent,
            trial_name_creator=lambda t: t.config["trial"]["name"],
            trial_dirname_creator=lambda t: t.config["trial"]["name"]),
        run_config=tune.RunConfig(storage_path=str(out / "tune"), name=time.strftime("%Y%m%d-%H%M%S"),
                                  failure_config=tune.FailureConfig(max_failures=max_failures), verbose=verbose),
    )
    results = tuner.fit()
    errors = {}
    for result in results:
        name = (result.config or {}).get("trial", {}).get("name")
        if name in by_name and result.error is not None:
            errors[name] = str(result.error).strip().splitlines()[-1][:300] if str(result.error).strip() else "error"
    summaries = [_summary(t, errors.get(t.name)) for t in all_trials]
    best = best_trial(summaries)
    report = {"recipe": spec.recipe, "base": _plain(spec.base), "seeds": spec.seeds, "grid": _plain(spec.grid),
              "early_stopping": {"scheduler": "asha", "metric": "validation_success", "mode": "max",
                                 "time_attr": "evaluations", "grace_period": grace_period, "reduction_factor": 2}
              if early_stopping else None,
              "selection": SELECTION_RULE, "trials": summaries, "best": best["name"] if best else None,
              "best_checkpoint": None, "tune_results": str(Path(results.experiment_path))}
    if best:
        report["best_checkpoint"] = str(export_best(by_name[best["name"]], summaries, out / "best", report,
                                                    command))
    (out / "sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _plain(value):
    return json.loads(json.dumps(value))


def _summary(trial: Trial, error: str | None) -> dict[str, Any]:
    rows = read_evaluations(trial.train["out"])
    finished = run_finished(trial.train)
    status = "finished" if finished else "error" if error else "stopped"
    return {"index": trial.index, "name": trial.name, "settings": trial.settings, "run": trial.train["out"],
            "status": status, "error": error if not finished else None, "evaluations": len(rows),
            "validation_success_history": [float(r["success_train"]) for r in rows],
            "env_steps_history": [int(r["env_steps"]) for r in rows],
            "validation_success": selected_success(trial.train["out"]) if finished else None}


def _write_recipe(path: Path, train: dict[str, Any], keep_out: bool) -> None:
    """``train`` as a ``vla-ros train --config`` recipe (without ``out`` unless ``keep_out``)."""
    import yaml

    values = {k: v for k, v in train.items() if k != "command" and (keep_out or k != "out")}
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# `vla-ros train --config {path}` resumes this trial's run folder\n" if keep_out else
              f"# `vla-ros train --config {path} --out runs/policy` rebuilds this checkpoint\n")
    path.write_text(header + yaml.safe_dump(values, sort_keys=False))


def export_best(trial: Trial, summaries: list[dict[str, Any]], dest: Path, report: dict[str, Any],
                command: str) -> Path:
    """Copy the trial's checkpoint to ``dest`` (CLIP path re-pointed) with its recipe, curve and model card."""
    from vla_ros.policy import model_card
    from vla_ros.policy.checkpoint import copy_checkpoint, read_config, resolve_clip_path

    run = Path(trial.train["out"])
    final = run / "final"
    if dest.exists():
        shutil.rmtree(dest)
    copy_checkpoint(final, dest, resolve_clip_path(final, read_config(final)))
    for extra in ("learning_curve.png", "eval.csv"):
        if (run / extra).is_file():
            shutil.copy2(run / extra, dest / extra)
    _write_recipe(dest / "recipe.yaml", trial.train, keep_out=False)
    (dest / "MODEL_CARD.md").write_text(model_card.render(dest, None, _card_notes(trial, summaries, report,
                                                                                   command)))
    return dest


def _card_notes(trial: Trial, summaries: list[dict[str, Any]], report: dict[str, Any], command: str) -> str:
    names = list(report["grid"]) + ["seed"]
    rows = ["| trial | " + " | ".join(names) + " | evaluations | validation success | status |",
            "|---|" + "---|" * len(names) + "---|---|---|"]
    for s in summaries:
        success = "-" if s["validation_success"] is None else f"{s['validation_success']:.3f}"
        rows.append(f"| {s['name']} | " + " | ".join(str(s["settings"].get(n)) for n in names)
                    + f" | {s['evaluations']} | {success} | {s['status']} |")
    stopping = report["early_stopping"]
    return "\n".join([
        f"Best of {len(summaries)} trials of `vla-ros sweep` (`{command or 'vla-ros sweep'}`): trial `{trial.name}`, "
        f"run folder `{trial.train['out']}`.",
        "",
        f"- base recipe: `{report['recipe'] or '(none: TrainConfig defaults)'}`; seeds {report['seeds']}; grid "
        f"{json.dumps(report['grid'])}",
        f"- selection: {SELECTION_RULE}",
        "- early stopping: " + (f"ASHA on validation success, grace period {stopping['grace_period']} evaluations, "
                                f"reduction factor {stopping['reduction_factor']}" if stopping else "none"),
        "- `recipe.yaml` beside this card holds the best trial's settings: `vla-ros train --config recipe.yaml "
        "--out runs/policy` rebuilds it",
        "- not yet evaluated on evaluation scenes: run `vla-ros eval` on this folder, then "
        "`python -m vla_ros.policy.model_card <this folder> --eval <report>` to add the evaluation",
        "",
        *rows,
    ])
