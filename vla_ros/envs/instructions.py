"""Instruction sets: colours, shapes, phrasing templates and splits, loaded from a YAML file.

The default file is ``sim/tasks/instructions.yaml``; its comments describe the format. Everything
a command can say lives there, so new phrasings, synonyms or colours need no code change.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

GEOMETRIES = ("cube", "ball", "cylinder")
TASKS = ("reach", "push")
DIRECTIONS = ("left", "right", "forward", "back")
WORD_SPLITS = ("validation_words", "heldout_words")
SPLITS = ("train", "heldout_combos", "heldout_phrasings", *WORD_SPLITS)
WORD_KINDS = ("colour", "shape", "both")  # which words of a word split a command uses
_PLACEHOLDERS = {"reach": {"colour", "shape"}, "push": {"colour", "shape", "direction"}}


def word_tokens(text: str) -> set[str]:
    """Lowercase words of a phrase ("navy blue" -> {"navy", "blue"}), placeholders removed."""
    return set(re.findall(r"[a-z]+", re.sub(r"\{[a-z]+\}", " ", text.lower())))


@dataclass(frozen=True)
class WordSet:
    """The words of one word split: colour and shape words that no training caption contains, and frames.

    ``colour_words`` / ``shape_words`` map palette colour and shape names to words of this split only;
    ``templates`` map each task to phrasing frames of this split only.
    """

    colour_words: dict[str, tuple[str, ...]]
    shape_words: dict[str, tuple[str, ...]]
    templates: dict[str, tuple[str, ...]]

    def vocabulary(self) -> set[str]:
        """Every colour and shape word of the split, as lowercase tokens."""
        words = [w for ws in (*self.colour_words.values(), *self.shape_words.values()) for w in ws]
        return set().union(*(word_tokens(w) for w in words)) if words else set()


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
    word_splits: dict[str, WordSet] = field(default_factory=dict)  # split name -> its words

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

    def training_vocabulary(self) -> set[str]:
        """Lowercase tokens of every word a training command can contain (colours, shapes, directions, frames)."""
        phrases = [*self.colours, *(w for ws in self.shape_words.values() for w in ws),
                   *(w for ws in self.direction_words.values() for w in ws),
                   *(t for task in self.templates.values() for t in task["train"])]
        return set().union(*(word_tokens(p) for p in phrases))

    def heldout_vocabulary(self) -> set[str]:
        """Lowercase tokens that only commands of a held-out phrasing or a word split contain, never a training one."""
        frames = [t for task in self.templates.values() for t in task["heldout"]]
        for words in self.word_splits.values():
            frames += [t for ts in words.templates.values() for t in ts]
        tokens = set().union(*(word_tokens(t) for t in frames), *(w.vocabulary() for w in self.word_splits.values()))
        return tokens - self.training_vocabulary()

    def word_split_command(self, split: str, task: str, colour: str, shape: str, direction: str | None,
                           rng: np.random.Generator) -> tuple[str, str]:
        """A command naming (colour, shape) with the words of word split ``split``; returns (command, kind).

        ``kind`` (one of :data:`WORD_KINDS`, drawn uniformly) says which of colour and shape take the split's
        words; the other keeps a training word. Half the commands use the split's own frames, half training
        frames.
        """
        words = self.word_splits[split]
        # a colour or shape the split gives no word for keeps its training word
        kinds = [k for k in WORD_KINDS if (k == "shape" or colour in words.colour_words)
                 and (k == "colour" or shape in words.shape_words)]
        if not kinds:
            raise ValueError(f"word split {split!r} has no word for {colour!r} nor for {shape!r}")
        kind = kinds[rng.integers(len(kinds))]
        colour_options = words.colour_words[colour] if kind in ("colour", "both") else (colour,)
        shape_options = words.shape_words[shape] if kind in ("shape", "both") else self.shape_words[shape]
        frames = words.templates[task] if rng.random() < 0.5 else self.templates[task]["train"]
        values = {"colour": colour_options[rng.integers(len(colour_options))],
                  "shape": shape_options[rng.integers(len(shape_options))]}
        if direction is not None:
            phrases = self.direction_words[direction]
            values["direction"] = phrases[rng.integers(len(phrases))]
        return frames[rng.integers(len(frames))].format(**values), kind

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

        colour_words = {name: (name,) for name in self.colours}
        shape_words = dict(self.shape_words)
        for words in self.word_splits.values():  # a user may well say "crimson" or "box"
            for name, extra in words.colour_words.items():
                colour_words[name] += extra
            for name, extra in words.shape_words.items():
                shape_words[name] += extra
        return find(colour_words), find(shape_words), find(self.direction_words)


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
    instructions = InstructionSet(path=path.resolve(), colours=colours, shapes=shapes, shape_words=shape_words,
                                  direction_words=direction_words, templates=templates,
                                  heldout_combos=frozenset(heldout))
    word_splits = _load_word_splits(path, data.get("word_splits") or {}, instructions)
    return InstructionSet(**{**instructions.__dict__, "word_splits": word_splits})


def _load_word_splits(path: Path, spec, instructions: InstructionSet) -> dict[str, WordSet]:
    """Validate ``word_splits``: known names, full coverage, no word shared with training or another split."""
    if not isinstance(spec, dict):
        _fail(path, "word_splits must be a mapping of split name -> words")
    unknown = set(spec) - set(WORD_SPLITS)
    if unknown:
        _fail(path, f"word_splits: unknown split(s) {sorted(unknown)}; expected {WORD_SPLITS}")
    training = instructions.training_vocabulary()
    splits: dict[str, WordSet] = {}
    for name, words in spec.items():
        where = f"word_splits.{name}"
        if not isinstance(words, dict):
            _fail(path, f"{where} must be a mapping with 'colours', 'shapes' and 'tasks'")
        tables = {}
        for key, names in (("colours", instructions.colours), ("shapes", instructions.shapes)):
            table = words.get(key)
            if not isinstance(table, dict) or not table or not set(table) <= set(names):
                _fail(path, f"{where}.{key} must give words for some of {sorted(names)} and nothing else")
            for entry, options in table.items():
                if not isinstance(options, list) or not options or not all(isinstance(w, str) and w for w in options):
                    _fail(path, f"{where}.{key}.{entry} must be a non-empty list of words")
            tables[key] = {entry: tuple(table[entry]) for entry in names if entry in table}
        tasks = words.get("tasks")
        if not isinstance(tasks, dict) or set(tasks) != set(TASKS):
            _fail(path, f"{where}.tasks must give frames for exactly {list(TASKS)}")
        templates = {task: _check_templates(path, task, name, tasks[task]) for task in TASKS}
        word_set = WordSet(tables["colours"], tables["shapes"], templates)
        shared = word_set.vocabulary() & training
        if shared:
            _fail(path, f"{where}: {sorted(shared)} also occur in training words; a word split's words must be new")
        for other, other_set in splits.items():
            both = word_set.vocabulary() & other_set.vocabulary()
            if both:
                _fail(path, f"{where}: {sorted(both)} also occur in word_splits.{other}")
        trained_frames = {t for task in instructions.templates.values() for t in (*task["train"], *task["heldout"])}
        reused = [t for frames in templates.values() for t in frames if t in trained_frames]
        if reused:
            _fail(path, f"{where}: frames {reused} are already training or held-out phrasings")
        splits[name] = word_set
    return splits
