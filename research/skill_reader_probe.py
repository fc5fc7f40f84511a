"""Which embedding of a command names its skill: the CLIP text embedding or the text tower's sentence embedding.

Usage: ``python -m research.skill_reader_probe [CLIP_DIR] [--per-frame 2] [--json FILE]``

Fits the skill reader (:mod:`vla_ros.policy.skill_reader`: multinomial logistic regression on training commands
only, with word-dropped variants) once on each of two embeddings of the same commands and reports its accuracy
per split: ``clip_text``, the CLIP's projected text embedding (what the grounding map and ``command_film`` read),
and ``sentence``, the pretrained text tower's mean-pooled sentence embedding before that projection (what the
reader reads in the product). Split commands: ``train`` (training frames and combinations, drawn with another
seed than the fit), ``heldout_combos`` (training frames, held-out combinations), ``heldout_phrasings``
(held-out frames), ``validation_words`` / ``heldout_words`` (the word splits' commands). Each split has every
combination of its kind with each skill (reach; push in four directions), ``per_frame`` commands per frame.
"""

from __future__ import annotations

import argparse

import numpy as np

SOURCES = ("clip_text", "sentence")
SPLITS = ("train", "heldout_combos", "heldout_phrasings", "validation_words", "heldout_words")


def split_commands(instructions, split: str, per_frame: int, seed: int) -> tuple[list[str], list[int]]:
    """Commands of ``split`` and their :data:`vla_ros.policy.skill_reader.SKILLS` indices."""
    from vla_ros.policy.skill_reader import SKILLS, skill_index

    rng = np.random.default_rng(seed)
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
    from vla_ros.policy.skill_reader import fit_skill_reader, training_commands
    from vla_ros.reporting import format_table, write_json

    parser = argparse.ArgumentParser(prog="python -m research.skill_reader_probe", description=__doc__.splitlines()[0])
    parser.add_argument("clip", nargs="?", default=str(share_path("models", "clip")),
                        help="CLIP checkpoint folder with a pretrained text tower (default: the shipped models/clip)")
    parser.add_argument("--per-frame", type=int, default=2, help="commands per frame, combination and skill")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fit (split commands use seed + 1)")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    encoder = ClipEncoder.from_pretrained(args.clip)
    instructions = load_instructions()

    def embed(source: str, commands: list[str]) -> torch.Tensor:
        encode = encoder.encode_text if source == "clip_text" else encoder.encode_sentences
        return torch.cat([encode(commands[i:i + 256]).float() for i in range(0, len(commands), 256)])

    fit_commands, fit_labels = training_commands(instructions, seed=args.seed)
    splits = {s: split_commands(instructions, s, args.per_frame, args.seed + 1) for s in SPLITS}
    report = {"clip": args.clip, "fit_commands": len(fit_commands), "accuracy": {}, "confusions": {}}
    for source in SOURCES:
        fit = fit_skill_reader(embed(source, fit_commands), fit_labels, seed=args.seed)
        report["accuracy"][source] = {}
        for split, (commands, labels) in splits.items():
            x = torch.nn.functional.normalize(embed(source, commands), dim=-1)
            predicted = (x @ fit.weight.T + fit.bias).argmax(-1).numpy()
            wrong = predicted != np.asarray(labels)
            report["accuracy"][source][split] = {"accuracy": float(1 - wrong.mean()), "commands": len(labels)}
            if source == "sentence":
                report["confusions"][split] = [commands[i] for i in np.flatnonzero(wrong)[:5]]
    rows = [{"split": split, "commands": report["accuracy"]["clip_text"][split]["commands"],
             **{source: f"{100 * report['accuracy'][source][split]['accuracy']:.1f}%" for source in SOURCES}}
            for split in SPLITS]
    print(format_table(rows, ["split", "commands", *SOURCES]))
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
