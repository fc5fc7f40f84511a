"""Writes ``MODEL_CARD.md`` for a policy checkpoint from its ``config.json`` and an evaluation report.

``python -m vla_ros.policy.model_card CHECKPOINT --eval eval.json [--bench bench.json] [--notes TEXT]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vla_ros.policy.checkpoint import read_config


def _split_rows(results: dict) -> list[str]:
    rows = []
    for name, r in results.items():
        lo, hi = r["ci95"]
        refused = f"{r['refusal_rate']:.3f}" if "refusal_rate" in r else "-"
        rows.append(f"| {name} | {r['success_rate']:.3f} | [{lo:.3f}, {hi:.3f}] | {refused} | {r['episodes']} |")
        for key in ("by_corruption", "by_word_kind"):
            for kind, k in r.get(key, {}).items():
                klo, khi = k["ci95"]
                krefused = f"{k['refusal_rate']:.3f}" if "refusal_rate" in k else "-"
                rows.append(f"| {name}: {kind.replace('_', ' ')} | {k['success_rate']:.3f} | [{klo:.3f}, {khi:.3f}] "
                            f"| {krefused} | {k['episodes']} |")
    return rows


def _language_lines(config: dict, clip_metadata: dict) -> list[str]:
    tower = clip_metadata.get("text_tower")
    lines = ["## Language", ""]
    if tower:
        unlocked = tower.get("unlocked_layers", 0)
        trained = f"its last {unlocked} layer(s) fine-tuned" if unlocked else "frozen"
        lines.append(f"- text tower: pretrained `{tower['name']}` (sha256 `{tower['sha256'][:12]}...`, from its "
                     f"pinned wheel, checked at load), {trained}; the CLIP's text projection trained on simulator "
                     "captions")
    else:
        lines.append("- text tower: trained from scratch on the simulator's captions (it knows only their words)")
    lexicon = config.get("lexicon")
    if lexicon:
        lines.append(f"- lexicon: a word outside the CLIP's vocabulary ({len(lexicon['colours'])} colours, "
                     f"{len(lexicon['shapes'])} shape words) is read as the nearest known colour or shape within "
                     f"{lexicon['max_depth']} hypernyms of its WordNet 3.0 senses (Debian `wordnet-base`, "
                     "hash-checked); known words are never changed")
    rule = config.get("refusal")
    if rule:
        calibration = rule.get("calibration", {})
        captions = f"{len(rule.get('reference_captions', []))} colour-shape captions"
        if rule.get("familiarity_boundary") is not None:
            condition = (f"on the episode's first frame, with a familiarity (closest cosine to {captions}) of at "
                         f"least {rule['familiarity_boundary']:.2f}, its contrast (its best region's similarity minus "
                         f"the best other caption's there) is under {rule['threshold']:.4f}, or, less familiar, its "
                         f"best region similarity is under {rule['unfamiliar_threshold']:.4f}")
        elif rule.get("familiarity_slope"):
            condition = (f"its best region similarity minus {rule['familiarity_slope']:.2f} x its familiarity "
                         f"(closest cosine to {captions}) on the episode's first frame is under "
                         f"{rule['threshold']:.4f}")
        else:
            condition = f"its best region similarity on the episode's first frame is under {rule['threshold']:.4f}"
        if rule.get("text_gate"):
            condition = ("it does not read as words naming an object (a linear text gate on the text tower's "
                         f"sentence embedding, under {rule['text_gate']['threshold']:.3f}), or when " + condition)
        lines.append(f"- refusal: a command is refused (the arm holds still) when {condition}; chosen by "
                     f"`vla-ros calibrate-refusal` to refuse "
                     f"{100 * calibration.get('false_refusal_target', float('nan')):.1f}% of valid commands "
                     f"on validation scenes ({calibration.get('scenes_per_split', '?')} per split of "
                     f"{', '.join(calibration.get('valid_splits', []))}); unreadable commands are always refused")
    else:
        lines.append("- refusal: none calibrated (every readable command is acted on)")
    return lines + [""]


def _clip_metadata(checkpoint: Path, config: dict) -> dict:
    path = checkpoint / config["clip"]["path"] / "open_clip_config.json"
    try:
        return json.loads(path.read_text()).get("vla_ros", {})
    except (OSError, ValueError):
        return {}


def render(checkpoint: Path, evaluation: dict | None, notes: str = "") -> str:
    """The model card text."""
    config = read_config(checkpoint)
    net, clip, action = config["network"], config["clip"], config["action"]
    training = config["training"]
    metrics = config.get("metrics", {})
    lines = [
        f"# Policy checkpoint: {config.get('task', '?')} ({net['fusion']} fusion)",
        "",
        "PPO policy (stable-baselines3) acting on frozen CLIP features of the camera frame and the command plus",
        "proprioception, warm-started by behaviour cloning + DAgger from the scripted expert. At run time it sees",
        "only the camera frame, the command text and the joint state.",
        "",
        "## Interface",
        f"- joints (order): {', '.join(config['joint_names'])}",
        f"- action: {action['rule']}; units {action['units']}; control period {action['control_dt']} s;",
        f"  max_delta per step (rad): {', '.join(f'{x:.3f}' for x in action['max_delta'])}",
        f"- camera: {config.get('env', {}).get('image_size', clip['image_size'])} px RGB, any size accepted "
        "(resized to the CLIP input)",
        f"- CLIP: `{clip['path']}` (sha256 `{clip.get('sha256')}`), {clip['embed_dim']}-d, {clip['num_patches']} "
        "patches"
        + (f" (shift-and-stitch x{net['patch_stitch']}: a grid {net['patch_stitch']} times as dense each way, "
           f"{net['patch_stitch'] ** 2} image-tower passes per frame)" if net.get("patch_stitch", 1) > 1 else "")
        + ("; it reads value, saturation and hue, converted from the RGB frame"
           if clip.get("colour_space") == "vsh" else ""),
        f"- network: fusion `{net['fusion']}` ({net['fusion_dim']}-d)"
        + (", with a reference frame (also attends over the episode's first frame)" if net.get("reference_frame")
           else "")
        + (f", peak position estimate (window {net['peak_window']} patches)" if net.get("peak_window") else "")
        + (", the reference frame's map as a prior on the current one" if net.get("reference_prior") else "")
        + (f" (spread by a Gaussian of {net['prior_spread']} patches)" if net.get("prior_spread") else "")
        + (" (the MLP also reads the current frame's own estimate)" if net.get("current_estimate") else "")
        + (", the MLP reads only the map's position estimates" if net.get("map_weights") is False else "")
        + (f", and a learned {net['text_features']}-d projection of the command embedding"
           if net.get("text_features") else "")
        + (", the command FiLM-modulating the MLP (what to do as well as where)" if net.get("command_film") else "")
        + (", a frozen skill reader (reach, push left / right / forward / back, read from the text tower's "
           + ("token states, each skill log-sum-exp pooled over the command" if net.get("skill_reader_tokens")
              else "sentence embedding") + ") FiLM-modulating the MLP" if net.get("skill_reader_width") else "")
        + (", the joint state entering the MLP beside the estimates" if net.get("fusion_proprio") else "")
        + f", actor/critic MLPs {net['net_arch']['pi']}, {net['activation']}"
        + (f"; the actor predicts the next {net['action_chunk']} actions and runs "
           f"{net.get('chunk_execute', 1)} of them before deciding again" if net.get("action_chunk", 1) > 1 else ""),
        "",
        "## Training",
        f"- command: `{training.get('command') or '(not recorded)'}`"
        + ("; recipe: `recipe.yaml` beside this card (`vla-ros train --config recipe.yaml` rebuilds it)"
           if (checkpoint / "recipe.yaml").is_file() else ""),
        f"- environment steps: imitation {metrics.get('env_steps_imitation', '?')}, "
        f"PPO {metrics.get('env_steps_ppo', '?')}",
        "- learning curve: `learning_curve.png` in the run folder; held-out evaluations during training in `eval.csv`",
        "",
        *_language_lines(config, _clip_metadata(checkpoint, config)),
    ]
    if evaluation:
        header = ["| split | success rate | 95% CI | refused | episodes |", "|---|---|---|---|---|"]
        lines += [f"## Evaluation (`vla-ros eval`, {evaluation['episodes_per_split']} episodes per split)", "",
                  *header, *_split_rows(evaluation["splits"])]
        for name, results in evaluation.get("ablations", {}).items():
            lines += ["", f"Ablation `{name}`:", "", *header, *_split_rows(results)]
        lines.append("")
    if notes:
        lines += ["## Notes", "", notes, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Write ``<checkpoint>/MODEL_CARD.md``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--eval", help="JSON report of `vla-ros eval --json`")
    parser.add_argument("--notes", default="", help="free text appended to the card")
    args = parser.parse_args(argv)
    evaluation = json.loads(Path(args.eval).read_text()) if args.eval else None
    path = Path(args.checkpoint) / "MODEL_CARD.md"
    path.write_text(render(Path(args.checkpoint), evaluation, args.notes))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
