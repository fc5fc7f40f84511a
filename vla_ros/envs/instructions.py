"""Instruction sets: colours, shapes, phrasing templates and splits, loaded from a YAML file.

The default file is ``sim/tasks/instructions.yaml``; its comments describe the format. Everything
a command can say lives there, so new phrasings, synonyms or colours need no code change.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

GEOMETRIES = ("cube", "ball", "cylinder")
TASKS = ("reach", "push")
DIRECTIONS = ("left", "right", "forward", "back")
SPLITS = ("train", "heldout_combos", "heldout_phrasings")
_PLACEHOLDERS = {"reach": {"colour", "shape"}, "push": {"colour", "shape", "direction"}}


@dataclass(frozen=True)
class InstructionSet:
    """A validated instruction file (see ``sim/tasks/instructions.yaml``)."""

    path: Path
    colours: dict[str, tuple[float, float, float, float]]  # name -> rgba
    shapes: dict[str, str]  # name -> geometry (one of GEOMETRIES)
    shape_words: dict[str, tuple[str, ...]]  # name -> words used in commands (first = the name)
    direction_words: dict[str, tuple[str, ...]]
    templates: dict[str, dict[str, tuple[str, ...]]]  # task -> {"train": ..., "heldout": ...}
    heldout_combos: frozenset[tuple[str, str]]

    @property
    def all_combos(self) -> list[tuple[str, str]]:
        """Every (colour, shape) pair, in file order."""
        return [(c, s) for c in self.colours for s in self.shapes]

    @property
    def train_combos(self) -> list[tuple[str, str]]:
        """The (colour, shape) pairs allowed in training scenes."""
        return [combo for combo in self.all_combos if combo not in self.heldout_combos]

    def format(self, template: str, colour: str, shape: str, direction: str | None,
               rng: np.random.Generator) -> str:
        """Fill a template, drawing a synonym for the shape and the direction from ``rng``."""
        words = self.shape_words[shape]
        values = {"colour": colour, "shape": words[rng.integers(len(words))]}
        if direction is not None:
            phrases = self.direction_words[direction]
            values["direction"] = phrases[rng.integers(len(phrases))]
        return template.format(**values)

    def parse(self, command: str) -> tuple[str | None, str | None, str | None]:
        """Find the (colour, shape, direction) a command names; ``None`` for each part not found.

        Used when a command is given from outside (the ROS bridge) to decide which object it means.
        Longer phrases win ("to the left" before "left"); matching is on whole words.
        """
        text = " " + re.sub(r"[^a-z]+", " ", command.lower()) + " "

        def find(options: dict[str, tuple[str, ...]]) -> str | None:
            hits = [(len(word), name) for name, words in options.items() for word in words
                    if f" {word} " in text]
            return max(hits)[1] if hits else None

        colour = find({name: (name,) for name in self.colours})
        return colour, find(self.shape_words), find(self.direction_words)


def _fail(path: Path, message: str) -> None:
    raise ValueError(f"{path}: {message}")


def _check_templates(path: Path, task: str, split: str, templates) -> tuple[str, ...]:
    if not isinstance(templates, list) or not templates:
        _fail(path, f"tasks.{task}.{split} must be a non-empty list of template strings")
    for template in templates:
        if not isinstance(template, str):
            _fail(path, f"tasks.{task}.{split}: template {template!r} is not a string")
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        if fields != _PLACEHOLDERS[task]:
            _fail(path, f"tasks.{task}.{split}: template {template!r} must use exactly the placeholders "
                        f"{sorted(_PLACEHOLDERS[task])}, it uses {sorted(fields)}")
    return tuple(templates)


def load_instructions(path: str | Path | None = None) -> InstructionSet:
    """Load and validate an instruction YAML file (default ``sim/tasks/instructions.yaml``).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the bad entry otherwise.
    """
    if path is None:
        from vla_ros.paths import share_path

        path = share_path("sim", "tasks", "instructions.yaml")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"instruction file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        _fail(path, "top level must be a mapping")
    for key in ("colours", "shapes", "directions", "tasks"):
        if not isinstance(data.get(key), dict) or not data[key]:
            _fail(path, f"missing or empty mapping {key!r}")

    colours = {}
    for name, rgba in data["colours"].items():
        if (not isinstance(rgba, list) or len(rgba) != 4
                or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in rgba)):
            _fail(path, f"colour {name!r} must be [r, g, b, a] with values in 0..1, got {rgba!r}")
        colours[str(name)] = tuple(float(v) for v in rgba)

    shapes, shape_words = {}, {}
    for name, spec in data["shapes"].items():
        if not isinstance(spec, dict) or spec.get("geometry") not in GEOMETRIES:
            _fail(path, f"shape {name!r} needs 'geometry' in {GEOMETRIES}")
        words = spec.get("words") or [name]
        if not all(isinstance(w, str) and w for w in words):
            _fail(path, f"shape {name!r}: 'words' must be a list of non-empty strings")
        shapes[str(name)] = spec["geometry"]
        shape_words[str(name)] = tuple(words)

    direction_words = {}
    for name in DIRECTIONS:
        words = data["directions"].get(name)
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            _fail(path, f"directions.{name} must be a non-empty list of phrases")
        direction_words[name] = tuple(words)

    templates = {}
    for task in TASKS:
        spec = data["tasks"].get(task)
        if not isinstance(spec, dict):
            _fail(path, f"tasks.{task} must be a mapping with 'train' and 'heldout' template lists")
        templates[task] = {split: _check_templates(path, task, split, spec.get(split))
                           for split in ("train", "heldout")}

    heldout = set()
    for combo in data.get("heldout_combos") or []:
        if (not isinstance(combo, list) or len(combo) != 2 or combo[0] not in colours
                or combo[1] not in shapes):
            _fail(path, f"heldout_combos entry {combo!r} must be [colour, shape] of known names")
        heldout.add((combo[0], combo[1]))
    if len(heldout) >= len(colours) * len(shapes):
        _fail(path, "heldout_combos leaves no training combos")
    return InstructionSet(path=path.resolve(), colours=colours, shapes=shapes, shape_words=shape_words,
                          direction_words=direction_words, templates=templates,
                          heldout_combos=frozenset(heldout))
