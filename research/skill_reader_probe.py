"""Which embedding of a command names its skill: the CLIP text embedding or the text tower's sentence embedding.

Usage: ``python -m research.skill_reader_probe [CLIP_DIR] [--per-frame 2] [--filled-variants N] [--json FILE]``

Fits the skill reader (:mod:`vla_ros.policy.skill_reader`: multinomial logistic regression on training commands
only, with word-dropped variants; ``--filled-variants``: also in frames with filler verbs put in,
:func:`vla_ros.policy.skill_reader.filled_frame`, drawn from one half of the fillers) once on each of three
readings of the same commands and reports its accuracy per split: ``clip_text``, the CLIP's projected text
embedding (what the grounding map and ``command_film`` read); ``sentence``, the pretrained text tower's
mean-pooled sentence embedding before that projection (the reader of ``skill_reader``); ``tokens``, the tower's
token states, each scored by the same linear map and log-sum-exp pooled per skill (``skill_reader_tokens``).

Split commands: ``train`` (training frames and combinations, drawn with another seed than the fit),
``heldout_combos`` (training frames, held-out combinations), ``heldout_phrasings`` (held-out frames),
``validation_words`` / ``heldout_words`` (the word splits' commands), ``unseen_verbs`` (``"{verb} the {colour}
{shape}"`` with and without a direction, training combinations, verbs from the other half of
:func:`vla_ros.policy.skill_reader.filler_words`; a new verb on its own is read as a reach). Each split has every
combination of its kind with each skill (reach; push in four directions), ``per_frame`` commands per frame.
"""

from __future__ import annotations

import argparse

import numpy as np

SOURCES = ("clip_text", "sentence", "tokens")
SPLITS = ("train", "heldout_combos", "heldout_phrasings", "validation_words", "heldout_words", "unseen_verbs")


def split_fillers(instructions, seed: int) -> tuple[list[str], list[str]]:
    """Filler verbs split in two halves by a seeded shuffle: (the fit's, ``unseen_verbs``')."""
    from vla_ros.policy.skill_reader import filler_words

    fillers = filler_words(instructions)
    np.random.default_rng(seed).shuffle(fillers)
    return fillers[:len(fillers) // 2], fillers[len(fillers) // 2:]


def unseen_verb_commands(instructions, verbs, per_frame: int, rng) -> tuple[list[str], list[int]]:
    """``per_frame`` * 6 commands per training combination and skill, each with a verb drawn from ``verbs``."""
    from vla_ros.policy.skill_reader import SKILLS

    commands, labels = [], []
    for colour, shape in instructions.train_combos:
        for label, direction in enumerate((None, *SKILLS[1:])):
            frame = "{verb} the {colour} {shape}" + (" {direction}" if direction else "")
            for _ in range(per_frame * 6):
                verb = verbs[rng.integers(len(verbs))]
                commands.append(instructions.format(frame.replace("{verb}", verb), colour, shape, direction, rng))
                labels.append(label)
    return commands, labels


def split_commands(instructions, split: str, per_frame: int, seed: int,
                   fillers=()) -> tuple[list[str], list[int]]:
    """Commands of ``split`` and their :data:`vla_ros.policy.skill_reader.SKILLS` indices.

    ``fillers``: the verbs of ``unseen_verbs``.
    """
    from vla_ros.policy.skill_reader import SKILLS, skill_index

    rng = np.random.default_rng(seed)
    if split == "unseen_verbs":
        return unseen_verb_commands(instructions, fillers, per_frame, rng)
    combos = sorted(instructions.heldout_combos) if split == "heldout_combos" else instructions.train_combos
    commands, labels = [], []
    for colour, shape in combos:
        for task in ("reach", "push"):
            for direction in ((None,) if task == "reach" else SKILLS[1:]):
                if split in ("validation_words", "heldout_words"):
                    count = per_frame * len(instructions.templates[task]["train"])
                    drawn = [instructions.word_split_command(split, task, colour, shape, direction, rng)[0]
                             for _ in range(count)]
                else:
                    frames = instructions.templates[task]["heldout" if split == "heldout_phrasings" else "train"]
                    drawn = [instructions.format(frame, colour, shape, direction, rng)
                             for frame in frames for _ in range(per_frame)]
                commands += drawn
                labels += [skill_index(task, direction)] * len(drawn)
    return commands, labels


def main(argv=None) -> dict:
    """Fit and score the reader on both embeddings; print the table and return the report."""
    import torch

    from vla_ros.envs.instructions import load_instructions
    from vla_ros.grounding.encoder import ClipEncoder
    from vla_ros.paths import share_path
    from vla_ros.policy.skill_reader import (
        encode_token_batches,
        fit_skill_reader,
        fit_token_skill_reader,
        token_skill_logits,
        training_commands,
    )
    from vla_ros.reporting import format_table, write_json

    parser = argparse.ArgumentParser(prog="python -m research.skill_reader_probe", description=__doc__.splitlines()[0])
    parser.add_argument("clip", nargs="?", default=str(share_path("models", "clip")),
                        help="CLIP checkpoint folder with a pretrained text tower (default: the shipped models/clip)")
    parser.add_argument("--per-frame", type=int, default=2, help="commands per frame, combination and skill")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fit (split commands use seed + 1)")
    parser.add_argument("--filled-variants", type=int, default=0,
                        help="commands per training command in a frame with filler verbs (the reader's fit)")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    encoder = ClipEncoder.from_pretrained(args.clip)
    instructions = load_instructions()

    def embed(source: str, commands: list[str]) -> torch.Tensor:
        encode = encoder.encode_text if source == "clip_text" else encoder.encode_sentences
        return torch.cat([encode(commands[i:i + 256]).float() for i in range(0, len(commands), 256)])

    fit_fillers, unseen_verbs = split_fillers(instructions, args.seed)
    fit_commands, fit_labels = training_commands(instructions, seed=args.seed, filled_variants=args.filled_variants,
                                                 fillers=fit_fillers)
    splits = {s: split_commands(instructions, s, args.per_frame, args.seed + 1, unseen_verbs) for s in SPLITS}
    report = {"clip": args.clip, "fit_commands": len(fit_commands), "filled_variants": args.filled_variants,
              "accuracy": {}, "confusions": {}}
    def fitted_reader(source: str):
        """The reader fitted on ``source``'s reading of the fit's commands: commands -> (N, 5) logits."""
        if source == "tokens":
            fit = fit_token_skill_reader(*encode_token_batches(encoder, fit_commands), fit_labels, seed=args.seed)
            return lambda commands: token_skill_logits(*encode_token_batches(encoder, commands), fit.weight, fit.bias)
        fit = fit_skill_reader(embed(source, fit_commands), fit_labels, seed=args.seed)
        return lambda commands: torch.nn.functional.normalize(embed(source, commands), dim=-1) @ fit.weight.T + fit.bias

    for source in SOURCES:
        read = fitted_reader(source)
        report["accuracy"][source] = {}
        report["confusions"][source] = {}
        for split, (commands, labels) in splits.items():
            with torch.no_grad():
                predicted = read(commands).argmax(-1).numpy()
            wrong = predicted != np.asarray(labels)
            truth = np.asarray(labels)
            push = truth > 0  # a push read as a push in another direction: the policy would push the wrong way
            wrong_way = float((push & (predicted > 0) & wrong).sum() / max(push.sum(), 1))
            report["accuracy"][source][split] = {"accuracy": float(1 - wrong.mean()), "commands": len(labels),
                                                 "push_wrong_direction": wrong_way}
            if source != "clip_text":
                report["confusions"][source][split] = [commands[i] for i in np.flatnonzero(wrong)[:5]]
    wrong_way = [f"{source}, push wrong way" for source in SOURCES[1:]]
    rows = [{"split": split, "commands": report["accuracy"]["clip_text"][split]["commands"],
             **{source: f"{100 * report['accuracy'][source][split]['accuracy']:.1f}%" for source in SOURCES},
             **{f"{source}, push wrong way":
                f"{100 * report['accuracy'][source][split]['push_wrong_direction']:.1f}%" for source in SOURCES[1:]}}
            for split in SPLITS]
    print(format_table(rows, ["split", "commands", *SOURCES, *wrong_way]))
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
