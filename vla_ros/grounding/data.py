"""Sim-domain CLIP data: rendered tabletop scenes plus the captions that describe them.

Scenes come from the simulator (``vla_ros/Reach-v0``) through its documented interface: the frame,
and per object its colour, shape, world position and pixel ``(u, v)``. Captions are drawn fresh each
time a scene is used (so one render serves many phrasings):

* scene captions for the global embedding: object lists and spatial relations from the objects'
  positions ("a red cube left of a blue ball", "a purple can, a green ball and an orange block");
* object captions for region embeddings: colour + shape ("the red cube"), the simulator's training
  command phrasings ("touch the red cube"), and attribute-only captions ("the red object", "a ball")
  whose positives are every object with that attribute; these make colour and shape separate
  directions in the embedding, which is what lets held-out colour-shape pairs be recognised.

A dataset only ever contains the env's ``split`` combos; ``train`` never shows a held-out combo.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import open_clip  # noqa: F401  (see below)
from tqdm import tqdm

# open_clip pulls in torchvision -> torch._dynamo -> triton. Loading triton's C extension after MuJoCo
# has created its EGL context segfaults (seen with MUJOCO_GL=egl, torch 2.14), so load it first.

REACH_ENV_ID = "vla_ros/Reach-v0"
PUSH_ENV_ID = "vla_ros/Push-v0"
NO_ATTRIBUTE = -1
CONTACT_STEPS = (10, 45)
"""the scripted push expert runs this many steps (inclusive range) before a contact scene's frame is taken: from
the descent behind the object through first contact (about step 20) to a finished push (about step 24) and on"""
CONTACT_NOISE = 0.3
"""std of the Gaussian noise on the expert's actions in contact scenes (the expert still pushes 100% with it,
``research/push_expert_phases.py``): the fingertip ends beside, on and behind objects as a learner's does"""


def article(word: str) -> str:
    """"a" or "an" for the word that follows."""
    return "an" if word[:1].lower() in "aeiou" else "a"

OBJECT_TEMPLATES = ("{colour} {shape}", "{a} {colour} {shape}", "the {colour} {shape}",
                    "{a} {colour} {shape} on the table")
COLOUR_TEMPLATES = ("the {colour} object", "something {colour}", "{a} {colour} thing")
SHAPE_TEMPLATES = ("a {shape}", "the {shape}", "a {shape} on the table")
# relation in the image / robot frame: left of the image = robot's left; top of the image = forward
RELATIONS_LEFT_RIGHT = ("left of", "right of")
RELATIONS_FRONT_BACK = ("behind", "in front of")


@dataclass
class SceneDataset:
    """Rendered scenes: K object slots per scene (``valid`` marks the filled ones).

    images (N, S, S, 3) uint8 RGB; pixels (N, K, 2) float32 (u, v); positions (N, K, 3) float32 world
    xyz (x forward, y left); colours / shapes (N, K) int indices into ``colour_names`` / ``shape_names``
    (-1 for empty slots); target (N,) index of the commanded object; commands (N,) the env's commands.
    """

    images: np.ndarray
    pixels: np.ndarray
    positions: np.ndarray
    colours: np.ndarray
    shapes: np.ndarray
    target: np.ndarray
    commands: np.ndarray
    colour_names: tuple[str, ...]
    shape_names: tuple[str, ...]
    split: str
    kinds: np.ndarray | None = None
    """(N,) what the command is beyond its split: ``info["corruption"]`` (absent_object, random_string) or
    ``info["word_kind"]`` (colour, shape, both), "" otherwise"""

    def __post_init__(self):
        if self.kinds is None:
            self.kinds = np.full(len(self.images), "", dtype=object).astype(str)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def valid(self) -> np.ndarray:
        """(N, K) bool: slot holds an object."""
        return self.colours >= 0

    def save(self, path: str | Path) -> None:
        """Write the dataset to one ``.npz`` file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, images=self.images, pixels=self.pixels, positions=self.positions, colours=self.colours,
                 shapes=self.shapes, target=self.target, commands=self.commands,
                 colour_names=np.array(self.colour_names), shape_names=np.array(self.shape_names),
                 split=np.array(self.split), kinds=np.asarray(self.kinds, dtype=str))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "SceneDataset":
        """Read a dataset written by :meth:`save`."""
        with np.load(path) as data:
            return cls(images=data["images"], pixels=data["pixels"], positions=data["positions"],
                       colours=data["colours"], shapes=data["shapes"], target=data["target"],
                       commands=data["commands"], colour_names=tuple(data["colour_names"].tolist()),
                       shape_names=tuple(data["shape_names"].tolist()), split=str(data["split"]),
                       kinds=data["kinds"] if "kinds" in data.files else None)

    @classmethod
    def concatenate(cls, first: "SceneDataset", second: "SceneDataset") -> "SceneDataset":
        """Scenes of both (same slots); colour indices refer to the longer colour list, which extends the other."""
        long, short = sorted((first.colour_names, second.colour_names), key=len, reverse=True)
        if long[: len(short)] != short or first.shape_names != second.shape_names:
            raise ValueError("datasets to concatenate must share shapes, and one colour list must extend the other")
        if first.pixels.shape[1] != second.pixels.shape[1]:
            raise ValueError(f"object slots differ: {first.pixels.shape[1]} vs {second.pixels.shape[1]}")
        join = {name: np.concatenate([getattr(first, name), getattr(second, name)])
                for name in ("images", "pixels", "positions", "colours", "shapes", "target", "commands", "kinds")}
        return cls(**join, colour_names=long, shape_names=first.shape_names, split=first.split)


def _paint_named_colours(env, info: dict, named_colours, rng: np.random.Generator) -> tuple[dict, list[int]]:
    """Repaint each object in a named colour its shape allows, no two of one palette class; (obs, colour ids).

    Colour ids index ``named_colours``. Distinct palette classes keep a scene's objects tellable apart; where
    the shapes leave no class unused (five balls, say) a class repeats, never a colour.
    """
    instructions = env.unwrapped.instructions
    used: set[str] = set()
    chosen = []
    for obj in info["objects"]:
        options = [i for i, c in enumerate(named_colours)
                   if c.allows(obj["shape"], instructions) and c.palette not in used]
        if not options:
            options = [i for i, c in enumerate(named_colours) if c.allows(obj["shape"], instructions)
                       and i not in chosen]
        pick = options[rng.integers(len(options))]
        used.add(named_colours[pick].palette)
        chosen.append(pick)
    rgba = [(*named_colours[i].rgb, 1.0) for i in chosen]
    return env.unwrapped.paint_objects(rgba), chosen


def _make_env(split: str, num_objects: int, perturbation: str | None, image_size: int, robot: str | None = None,
              env_id: str = REACH_ENV_ID):
    import gymnasium as gym

    import vla_ros.envs  # noqa: F401  (registers the env ids)

    return gym.make(env_id, num_objects=num_objects, image_size=image_size, split=split,
                    perturbation=perturbation, robot=robot)


def _expert_contact(env, obs, info, rng: np.random.Generator):
    """Run the scripted push expert with noisy actions for a drawn number of steps; the last obs and info.

    The episode ends early only if the env ends it (a finished push runs on: the expert keeps pushing).
    """
    from vla_ros.envs.expert import ScriptedExpert

    expert = ScriptedExpert(env)
    for _ in range(int(rng.integers(CONTACT_STEPS[0], CONTACT_STEPS[1] + 1))):
        action = np.clip(expert.act(info) + rng.normal(0.0, CONTACT_NOISE, env.action_space.shape), -1.0, 1.0)
        obs, _, terminated, truncated, info = env.step(action.astype(np.float32))
        if terminated or truncated:
            break
    return obs, info


def generate_scenes(num_scenes: int, seed: int = 0, split: str = "train", image_size: int = 64,
                    num_objects: int = 3, distractor_fraction: float = 0.0, jitter_fraction: float = 0.0,
                    moved_arm_fraction: float = 0.0, max_random_steps: int = 30,
                    progress: bool = False, named_colours: Sequence = (), corrupted: bool = False,
                    robot: str | None = None, contact: bool = False) -> SceneDataset:
    """Render ``num_scenes`` scenes of the env's ``split``, seeds ``seed, seed + 1, ...``.

    ``robot``: the robot file of the scene (default: vla_arm); a policy's refusal rule is calibrated on its own
    robot's scenes.

    ``distractor_fraction`` of scenes hold 2 extra objects, ``jitter_fraction`` have camera/light
    jitter, and in ``moved_arm_fraction`` the arm first makes 1..``max_random_steps`` random moves (it
    may then occlude objects: the encoder should cope). The others are reset frames.

    ``named_colours`` (:class:`vla_ros.grounding.vocabulary.NamedColour`): every object is repainted in one of
    them (see :func:`_paint_named_colours`); colour indices then count the palette first, these after it.
    ``corrupted``: the commands name nothing on the table (the env's ``corrupted`` perturbation; ``kinds``
    says how), for measuring refusal.

    ``contact``: push scenes (``vla_ros/Push-v0``, the same split's combos) in which the scripted push expert,
    its actions noisy, first runs :data:`CONTACT_STEPS` steps: the fingertip beside, on or behind the commanded
    object and the object pushed off its start, the frames a pushing policy's map has to read (random arm moves,
    ``moved_arm_fraction``, rarely bring the fingertip next to an object). It replaces ``moved_arm_fraction``.
    """
    if num_scenes < 1:
        raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
    if corrupted and (distractor_fraction > 0 or jitter_fraction > 0):
        raise ValueError("corrupted scenes are plain scenes: the env takes one perturbation at a time")
    if contact and corrupted:
        raise ValueError("contact scenes run the push expert, which needs a command naming an object on the table")
    rng = np.random.default_rng(seed)
    plain = "corrupted" if corrupted else None
    kinds = [("plain", plain, num_objects), ("distractors", "distractors", num_objects),
             ("jitter", "jitter", num_objects)]
    envs = {}
    slots = num_objects + (2 if distractor_fraction > 0 else 0)
    images = np.zeros((num_scenes, image_size, image_size, 3), np.uint8)
    pixels = np.zeros((num_scenes, slots, 2), np.float32)
    positions = np.zeros((num_scenes, slots, 3), np.float32)
    colours = np.full((num_scenes, slots), NO_ATTRIBUTE, np.int64)
    shapes = np.full((num_scenes, slots), NO_ATTRIBUTE, np.int64)
    target = np.zeros(num_scenes, np.int64)
    commands, command_kinds = [], []
    colour_names = shape_names = None
    try:
        for i in tqdm(range(num_scenes), desc=f"render {split}", disable=not progress, unit="scene"):
            draw = rng.random()
            kind = kinds[1] if draw < distractor_fraction else (
                kinds[2] if draw < distractor_fraction + jitter_fraction else kinds[0])
            if kind[0] not in envs:
                envs[kind[0]] = _make_env(split, kind[2], kind[1], image_size, robot,
                                          PUSH_ENV_ID if contact else REACH_ENV_ID)
            env = envs[kind[0]]
            if colour_names is None:
                instructions = env.unwrapped.instructions
                colour_names = tuple(instructions.colours) + tuple(c.name for c in named_colours)
                shape_names = tuple(instructions.shapes)
            obs, info = env.reset(seed=seed + i)
            if contact:
                obs, info = _expert_contact(env, obs, info, rng)
            elif rng.random() < moved_arm_fraction:
                steps = int(rng.integers(1, max_random_steps + 1))
                action = rng.uniform(-1, 1, env.action_space.shape)
                for step in range(steps):
                    if step % 5 == 0:  # hold a direction for a few steps: the arm travels, not just jitters
                        action = rng.uniform(-1, 1, env.action_space.shape)
                    obs, _, terminated, truncated, info = env.step(action.astype(np.float32))
                    if terminated or truncated:
                        break
            painted = None
            if named_colours:
                obs, painted = _paint_named_colours(env, info, named_colours, rng)
            images[i] = obs["image"]
            for k, obj in enumerate(info["objects"]):
                pixels[i, k] = obj["pixel"]
                positions[i, k] = obj["position"]
                colours[i, k] = (len(instructions.colours) + painted[k] if painted is not None
                                 else colour_names.index(obj["colour"]))
                shapes[i, k] = shape_names.index(obj["shape"])
            target[i] = info["target"]["index"]
            commands.append(info["command"])
            command_kinds.append(info.get("corruption") or info.get("word_kind") or "")
    finally:
        for env in envs.values():
            env.close()
    return SceneDataset(images, pixels, positions, colours, shapes, target, np.array(commands),
                        colour_names, shape_names, split, np.array(command_kinds, dtype=str))


def load_or_generate(path: str | Path, **kwargs) -> SceneDataset:
    """Load a cached dataset from ``path`` or render it (``generate_scenes(**kwargs)``) and cache it."""
    path = Path(path)
    if path.is_file():
        return SceneDataset.load(path)
    dataset = generate_scenes(**kwargs)
    dataset.save(path)
    return dataset


class CaptionSampler:
    """Draws scene and object captions for a :class:`SceneDataset` (fresh wording every call)."""

    def __init__(self, colour_names: Sequence[str], shape_names: Sequence[str],
                 shape_words: dict[str, Sequence[str]] | None = None,
                 command_templates: Sequence[str] = (), attribute_fraction: float = 0.25,
                 command_fraction: float = 0.4,
                 directions: Sequence[str] = ("left", "right", "forward", "back"),
                 colour_classes: Sequence[int] | None = None,
                 heldout_combos: frozenset[tuple[int, int]] = frozenset(), palette_size: int | None = None,
                 typical_names: dict[int, Sequence[int]] | None = None, named_absent_fraction: float = 0.0):
        self.colour_names = tuple(colour_names)
        self.shape_names = tuple(shape_names)
        self.shape_words = {s: tuple((shape_words or {}).get(s, (s,))) for s in self.shape_names}
        self.command_templates = tuple(command_templates)
        self.attribute_fraction = attribute_fraction
        self.command_fraction = command_fraction if command_templates else 0.0
        self.directions = tuple(directions)
        # palette colour (index) each colour looks like: itself for the palette, the nearest hue for named ones
        self.colour_classes = np.asarray(colour_classes if colour_classes is not None else range(len(colour_names)))
        self.heldout_combos = heldout_combos  # (palette colour index, shape index) pairs never named
        self.palette_size = palette_size if palette_size is not None else len(self.colour_names)
        # palette colour index -> indices of named colours that clearly look like it (absent captions may use them)
        self.typical_names = {int(c): tuple(names) for c, names in (typical_names or {}).items() if names}
        self.named_absent_fraction = float(named_absent_fraction)

    @classmethod
    def from_instructions(cls, instructions, extra_colours: Sequence[str] = (), vocabulary=None,
                          **kwargs) -> "CaptionSampler":
        """Use the simulator's instruction set: synonyms and the *training* command phrasings only.

        ``extra_colours`` are named after the palette's colours (indices from ``len(colours)`` on).
        ``vocabulary`` (:class:`vla_ros.grounding.vocabulary.ClipVocabulary`) adds its shape nouns and frames
        and, after the palette and ``extra_colours``, its named colours.
        """
        templates = [t for task in instructions.templates.values() for t in task["train"]]
        directions = [w for words in instructions.direction_words.values() for w in words]
        palette = tuple(instructions.colours)
        colours = palette + tuple(extra_colours)
        shape_words = dict(instructions.shape_words)
        classes = list(range(len(colours)))
        if vocabulary is not None:
            templates += list(vocabulary.frames)
            shape_words = {s: tuple(words) + tuple(vocabulary.shape_words.get(s, ()))
                           for s, words in shape_words.items()}
            colours += tuple(c.name for c in vocabulary.named_colours)
            classes += [palette.index(c.palette) for c in vocabulary.named_colours]
            typical: dict[int, list[int]] = {}
            for k, named in enumerate(vocabulary.named_colours):
                if named.is_typical(instructions):
                    typical.setdefault(palette.index(named.palette), []).append(len(palette) + len(extra_colours) + k)
            kwargs.setdefault("typical_names", typical)
        shapes = tuple(instructions.shapes)
        heldout = frozenset((palette.index(c), shapes.index(s)) for c, s in instructions.heldout_combos)
        return cls(colours, shapes, shape_words, templates, directions=directions, colour_classes=classes,
                   heldout_combos=heldout, palette_size=len(palette), **kwargs)

    def _shape_word(self, shape: int, rng: np.random.Generator) -> str:
        words = self.shape_words[self.shape_names[shape]]
        return words[rng.integers(len(words))]

    @staticmethod
    def _with_article(noun: str) -> str:
        return f"{article(noun)} {noun}"

    def noun(self, colour: int, shape: int, rng: np.random.Generator) -> str:
        """"red cube" / "red block" (synonyms drawn at random); just the shape when ``colour`` < 0."""
        if colour < 0:
            return self._shape_word(shape, rng)
        return f"{self.colour_names[colour]} {self._shape_word(shape, rng)}"

    def shape_caption(self, shape: int, rng: np.random.Generator) -> tuple[str, int, int]:
        """Shape-only caption ("a ball"), as (text, -1, shape) like :meth:`object_caption`."""
        template = SHAPE_TEMPLATES[rng.integers(len(SHAPE_TEMPLATES))]
        return template.format(shape=self._shape_word(shape, rng)), NO_ATTRIBUTE, shape

    def object_caption(self, colour: int, shape: int, rng: np.random.Generator) -> tuple[str, int, int]:
        """Caption for one object and the attributes it names: (text, colour or -1, shape or -1)."""
        draw = rng.random()
        if draw < self.attribute_fraction:
            if rng.random() < 0.5:
                template = COLOUR_TEMPLATES[rng.integers(len(COLOUR_TEMPLATES))]
                name = self.colour_names[colour]
                return template.format(colour=name, a=article(name)), colour, NO_ATTRIBUTE
            template = SHAPE_TEMPLATES[rng.integers(len(SHAPE_TEMPLATES))]
            return template.format(shape=self._shape_word(shape, rng)), NO_ATTRIBUTE, shape
        if draw < self.attribute_fraction + self.command_fraction:
            template = self.command_templates[rng.integers(len(self.command_templates))]
            text = template.format(colour=self.colour_names[colour], shape=self._shape_word(shape, rng),
                                   direction=self.directions[rng.integers(len(self.directions))])
            return text, colour, shape
        template = OBJECT_TEMPLATES[rng.integers(len(OBJECT_TEMPLATES))]
        name = self.colour_names[colour]
        text = template.format(colour=name, a=article(name), shape=self._shape_word(shape, rng))
        return text, colour, shape

    def absent_caption(self, colours: np.ndarray, shapes: np.ndarray,
                       rng: np.random.Generator) -> tuple[str, int, int] | None:
        """A caption of a palette colour-shape pair that is not on the table, (text, colour, shape); None if none.

        With probability ``named_absent_fraction`` the colour is named by a named colour that clearly looks
        like it (``typical_names``) instead of the palette word; the returned colour is then that name's index.

        Not on the table means no object of that shape looks like that palette colour (a named colour counts
        as its palette class). Held-out combinations are never named. Two draws in three share the colour or
        the shape with an object on the table (the hard case: "the red ball" beside a red cube).
        """
        present = {(int(self.colour_classes[c]), int(s)) for c, s in zip(colours, shapes) if c >= 0}
        options = [(c, s) for c in range(self.palette_size) for s in range(len(self.shape_names))
                   if (c, s) not in present and (c, s) not in self.heldout_combos]
        if not options:
            return None
        near = [(c, s) for c, s in options if any(c == pc or s == ps for pc, ps in present)]
        pool = near if near and rng.random() < 2 / 3 else options
        colour, shape = pool[rng.integers(len(pool))]
        if colour in self.typical_names and rng.random() < self.named_absent_fraction:
            names = self.typical_names[colour]  # "the cerulean ball": absent in a word the CLIP learns from paint
            colour = names[rng.integers(len(names))]
        if self.command_templates and rng.random() < self.command_fraction:
            template = self.command_templates[rng.integers(len(self.command_templates))]
            text = template.format(colour=self.colour_names[colour], shape=self._shape_word(shape, rng),
                                   direction=self.directions[rng.integers(len(self.directions))])
        else:
            template = OBJECT_TEMPLATES[rng.integers(len(OBJECT_TEMPLATES))]
            name = self.colour_names[colour]
            text = template.format(colour=name, a=article(name), shape=self._shape_word(shape, rng))
        return text, colour, shape

    def relation(self, a_pos: np.ndarray, b_pos: np.ndarray, rng: np.random.Generator) -> str:
        """Spatial relation of object a to object b, from world positions (x forward, y left)."""
        dx, dy = a_pos[0] - b_pos[0], a_pos[1] - b_pos[1]
        if abs(dy) >= abs(dx) or rng.random() < 0.3 and abs(dy) > 0.03:
            return RELATIONS_LEFT_RIGHT[0] if dy > 0 else RELATIONS_LEFT_RIGHT[1]
        return RELATIONS_FRONT_BACK[0] if dx > 0 else RELATIONS_FRONT_BACK[1]

    def scene_caption(self, colours: np.ndarray, shapes: np.ndarray, positions: np.ndarray,
                      rng: np.random.Generator | None = None, with_colour: bool = True) -> str:
        """Caption of a whole scene; ``rng=None`` gives the deterministic left-to-right listing.

        ``with_colour=False`` names shapes only (for grey-scale training views).
        """
        idx = np.flatnonzero(colours >= 0)
        if not with_colour:
            colours = np.where(colours >= 0, -1, colours)
        if rng is None:
            order = idx[np.argsort(-positions[idx, 1])]  # left (+y) to right
            nouns = [self._with_article(f"{self.colour_names[colours[i]]} {self.shape_names[shapes[i]]}")
                     for i in order]
            return ", ".join(nouns[:-1]) + " and " + nouns[-1] if len(nouns) > 1 else nouns[0]
        if len(idx) >= 2 and rng.random() < 0.6:
            a, b = rng.choice(idx, size=2, replace=False)
            return (f"{self._with_article(self.noun(colours[a], shapes[a], rng))} "
                    f"{self.relation(positions[a], positions[b], rng)} "
                    f"{self._with_article(self.noun(colours[b], shapes[b], rng))}")
        order = rng.permutation(idx)
        nouns = [self._with_article(self.noun(colours[i], shapes[i], rng)) for i in order]
        return ", ".join(nouns[:-1]) + " and " + nouns[-1] if len(nouns) > 1 else nouns[0]
