"""Fresh fits of one run's saved demonstrations, to tell whether a recipe's push spread is in data or in fits.

Usage: ``python -m research.fit_seed_probe RUN_DIR --fit-seeds 0 1 [--epochs 20] [--out DIR] [--json FILE]``

Three seeds of one recipe (``research/recipes/skills_locator_refit.yaml``) push 49-80% (docs/EXPERIMENT_LOG.md,
2026-12-07). A run differs from another in two draws: the demonstrations its rounds collected (the DAgger rounds
follow the learner of that run) and the stochastic fits on them. This probe takes a finished imitation run's saved
demonstrations (``RUN_DIR/demos_<k>.npz`` of every fitted round, aggregated, as the run's last fit saw them) and
fits the policy on them anew, from fresh initial weights, once per ``--fit-seed``. What the run froze is kept:
the skill reader and the object locator of ``RUN_DIR/final`` (the locator the last round refitted on the same
data), and every buffer.
Each fit is written as a checkpoint folder ``OUT/fit_seed<N>`` that ``vla-ros eval`` reads.

Evaluate those on validation scenes (``vla-ros eval --seed 10000 --splits train``: training combinations, scenes
no evaluation draws), never on an evaluation split: if fits of one run's data spread as widely as the runs
themselves, the spread is the fit's, and a choice among fits on validation is as good as a choice among runs at a
fraction of the cost; if they stay close to the run's own figure, the data decide.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from vla_ros.policy import imitation
from vla_ros.policy.imitation import LR_SCHEDULES


def fresh_network_keeping_frozen(trained, config: dict, fit_seed: int):
    """A network of ``config`` with fresh weights drawn from ``fit_seed``, and the ``trained`` run's frozen parts.

    The trained network's frozen parameters (the object locator), its buffers (the skill reader) and its log_std
    are copied in; the names of what was kept are returned beside the network.
    """
    from vla_ros.policy.checkpoint import build_network

    torch.manual_seed(fit_seed)
    network = build_network(config)
    # parameters and buffers by module (named_* list a module shared by actor and critic once; its state_dict
    # aliases would load a fresh copy over the kept one)
    trained_params, kept = dict(trained.named_parameters()), []
    with torch.no_grad():
        for name, p in network.named_parameters():
            if not trained_params[name].requires_grad or name == "log_std":
                p.copy_(trained_params[name])
                kept.append(name)
        trained_buffers = dict(trained.named_buffers())
        for name, b in network.named_buffers():
            b.copy_(trained_buffers[name])
            kept.append(name)
    return network, sorted(kept)


def main(argv: list[str] | None = None) -> int:
    """Fit the run's demonstrations once per fit seed and write each fit as a checkpoint folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished imitation run folder (demos_*.npz, final/)")
    parser.add_argument("--fit-seeds", type=int, nargs="+", default=[0, 1], help="one fresh fit per seed")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per fit (default: the run's bc_epochs)")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                        help="the fit's learning rate: constant (the recipes') or cosine-annealed to 0")
    parser.add_argument("--out", type=Path, default=None, help="folder of the fits (default: RUN_DIR/fit_seeds)")
    parser.add_argument("--json", type=Path, default=None, help="write the fits' losses and paths here")
    args = parser.parse_args(argv)

    from vla_ros.policy.checkpoint import load_network, resolve_clip_path, save_checkpoint
    from vla_ros.policy.train import run_demonstrations

    run_dir = args.run_dir
    final_dir = run_dir / "final"
    state = json.loads((run_dir / "state.json").read_text())
    cfg = state["config"]
    epochs = args.epochs or int(cfg["bc_epochs"])
    out = args.out or run_dir / "fit_seeds"
    rounds = int(state.get("imitation_rounds_done", 0))
    data = run_demonstrations(run_dir, rounds, "research.fit_seed_probe")
    trained, run_config = load_network(final_dir)
    clip_dir = resolve_clip_path(final_dir, run_config)
    print(f"{run_dir}: {rounds} rounds, {len(data)} samples; {epochs} epochs per fit")
    report = {"run": str(run_dir), "rounds": rounds, "samples": len(data), "epochs": epochs,
              "lr_schedule": args.lr_schedule, "fits": []}
    for fit_seed in args.fit_seeds:
        started = time.time()
        network, kept = fresh_network_keeping_frozen(trained, run_config, fit_seed)
        losses = imitation.fit(network, data, epochs, int(cfg["bc_batch_size"]), float(cfg["bc_lr"]), fit_seed,
                               value_weight=float(cfg["bc_value_weight"]),
                               value_detached=bool(cfg.get("bc_value_detached", False)),
                               clip_apart=bool(cfg.get("bc_clip_apart", False)), lr_schedule=args.lr_schedule)
        folder = out / f"fit_seed{fit_seed}"
        config = dict(run_config, clip=dict(run_config["clip"], path=os.path.relpath(clip_dir, folder.resolve())))
        config["metrics"] = dict(run_config.get("metrics", {}), refitted_by="research.fit_seed_probe",
                                 fit_seed=fit_seed, fit_epochs=epochs, fit_losses=losses,
                                 fit_lr_schedule=args.lr_schedule)
        folder.mkdir(parents=True, exist_ok=True)
        save_checkpoint(folder, network.cpu(), config)
        seconds = time.time() - started
        print(f"fit seed {fit_seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
              + f" ({seconds:.0f} s) -> {folder}")
        report["fits"].append({"fit_seed": fit_seed, "losses": losses, "checkpoint": str(folder),
                               "seconds": round(seconds, 1), "kept_from_run": len(kept)})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
