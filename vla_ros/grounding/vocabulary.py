"""What the sim-domain CLIP is trained to read beyond the instruction file: named colours and more words.

``sim/tasks/clip_vocabulary.yaml`` lists extra shape nouns and phrasing frames and where colour names come
from (matplotlib's XKCD and CSS4 tables: name -> RGB). :func:`load_clip_vocabulary` keeps the clearly coloured
names, splits CSS4's run-together names into words, and drops every name or word that shares a token with a
word split of the instruction file (validation and held-out words, ``word_splits``): those words must never
reach training.

Each named colour also gets its *palette class*: the palette colour nearest in hue. A colour of class red
is never rendered on a ball, because the red ball is a held-out combination (see :meth:`NamedColour.allows`).
"""

from __future__ import annotations

import colorsys
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from vla_ros.envs.instructions import InstructionSet, load_instructions, word_tokens

# words that CSS4 runs together ("darkslateblue"), split greedily, longest first
_CSS_WORDS = ("dark", "light", "medium", "pale", "deep", "hot", "indian", "royal", "midnight", "dodger", "cornflower",
              "slate", "cadet", "sea", "sky", "spring", "steel", "powder", "rosy", "saddle", "sandy", "lawn",
              "forest", "lime", "olive", "drab", "orchid", "turquoise", "violet", "red", "green", "blue", "yellow",
              "orange", "purple", "pink", "brown", "gray", "grey", "white", "golden", "rod", "goldenrod", "papaya",
              "whip", "peach", "puff", "blanched", "almond", "navajo", "lemon", "chiffon", "misty", "rose",
              "salmon", "coral", "tomato", "crimson", "magenta", "cyan", "aqua", "marine", "aquamarine", "chartreuse",
              "fire", "brick", "firebrick", "khaki", "lavender", "blush", "maroon", "navy", "teal", "plum", "thistle",
              "wheat", "moccasin", "bisque", "linen", "tan", "sienna", "chocolate", "peru", "burly", "wood",
              "burlywood", "gold", "silver", "fuchsia", "rebecca", "yellowgreen")


@dataclass(frozen=True)
class NamedColour:
    """A colour name with its RGB (0..1) and the palette colour nearest in hue (``palette``)."""

    name: str
    rgb: tuple[float, float, float]
    palette: str

    def allows(self, shape: str, instructions: InstructionSet) -> bool:
        """Whether an object of ``shape`` may be rendered in this colour (not a held-out combo look-alike)."""
        return (self.palette, shape) not in instructions.heldout_combos

    def is_typical(self, instructions: InstructionSet, margin_degrees: float = 20.0) -> bool:
        """Whether this colour's hue is nearer its palette colour than any other by ``margin_degrees``.

        Such a name can stand for its palette colour in an absent-object caption without being confused with
        a neighbouring hue that is on the table.
        """
        hue = hue_degrees(self.rgb)
        distances = sorted(hue_distance(hue, hue_degrees(rgb)) for rgb in instructions.colours.values())
        return len(distances) < 2 or distances[1] - distances[0] >= margin_degrees


@dataclass(frozen=True)
class ClipVocabulary:
    """Extra training words: shape nouns per shape, phrasing frames, named colours."""

    shape_words: dict[str, tuple[str, ...]]
    frames: tuple[str, ...]
    named_colours: tuple[NamedColour, ...]

    def tokens(self) -> set[str]:
        """Lowercase tokens of every word and colour name here."""
        phrases = [*(w for ws in self.shape_words.values() for w in ws), *self.frames,
                   *(c.name for c in self.named_colours)]
        return set().union(*(word_tokens(p) for p in phrases)) if phrases else set()


def hue_degrees(rgb) -> float:
    """HSV hue of an RGB colour in 0..1, degrees."""
    return colorsys.rgb_to_hsv(*rgb[:3])[0] * 360.0


def hue_distance(a: float, b: float) -> float:
    """Angular distance of two hues, degrees (0..180)."""
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def nearest_palette_colour(rgb, instructions: InstructionSet) -> str:
    """The palette colour whose hue is nearest to ``rgb``'s."""
    hue = hue_degrees(rgb)
    return min(instructions.colours, key=lambda name: hue_distance(hue, hue_degrees(instructions.colours[name])))


def split_css_name(name: str) -> str | None:
    """"darkslateblue" -> "dark slate blue"; None when the name is not made of known words."""
    words, rest = [], name
    while rest:
        match = next((w for w in sorted(_CSS_WORDS, key=len, reverse=True) if rest.startswith(w)), None)
        if match is None:
            return None
        words.append(match)
        rest = rest[len(match):]
    return " ".join(words)


def colour_table(sources) -> dict[str, tuple[float, float, float]]:
    """Colour name -> RGB (0..1) from matplotlib's tables, XKCD names first; CSS4 names split into words."""
    from matplotlib import colors

    table: dict[str, tuple[float, float, float]] = {}
    for source in sources:
        if source == "xkcd":
            for key, value in colors.XKCD_COLORS.items():
                table.setdefault(key.removeprefix("xkcd:"), colors.to_rgb(value))
        elif source == "css4":
            for key, value in colors.CSS4_COLORS.items():
                name = split_css_name(key)
                if name is not None:
                    table.setdefault(name, colors.to_rgb(value))
        else:
            raise ValueError(f"unknown colour-name source {source!r}; expected xkcd or css4")
    return table


def _forbidden_tokens(instructions: InstructionSet) -> set[str]:
    """Tokens of every word-split word (validation and held-out): never part of training."""
    return set().union(*(words.vocabulary() for words in instructions.word_splits.values())) \
        if instructions.word_splits else set()


def load_clip_vocabulary(path: str | Path | None = None,
                         instructions: InstructionSet | None = None) -> ClipVocabulary:
    """Read ``sim/tasks/clip_vocabulary.yaml``: extra words and the named colours, word-split words removed.

    Raises ``ValueError`` for a shape word or frame that contains a word-split word (a file error: the split
    would no longer be held out), and drops colour names that do.
    """
    if path is None:
        from vla_ros.paths import share_path

        path = share_path("sim", "tasks", "clip_vocabulary.yaml")
    path = Path(path)
    instructions = instructions or load_instructions()
    data = yaml.safe_load(path.read_text()) or {}
    forbidden = _forbidden_tokens(instructions)
    shapes = data.get("shapes") or {}
    unknown = set(shapes) - set(instructions.shapes)
    if unknown:
        raise ValueError(f"{path}: shapes {sorted(unknown)} are not shapes of {instructions.path}")
    shape_words = {shape: tuple(shapes.get(shape) or ()) for shape in instructions.shapes}
    frames = tuple(data.get("frames") or ())
    for phrase in [*(w for ws in shape_words.values() for w in ws), *frames]:
        leaked = word_tokens(phrase) & forbidden
        if leaked:
            raise ValueError(f"{path}: {phrase!r} contains word-split words {sorted(leaked)}; they must stay "
                             "out of training")
    for frame in frames:
        if set(re.findall(r"\{(\w+)\}", frame)) != {"colour", "shape"}:
            raise ValueError(f"{path}: frame {frame!r} must use exactly the placeholders {{colour}} and {{shape}}")

    spec = data.get("named_colours") or {}
    min_saturation = float(spec.get("min_saturation", 0.35))
    min_value = float(spec.get("min_value", 0.3))
    excluded = {w.lower() for w in spec.get("exclude_words") or ()}
    # a colour name must not be a shape noun (e.g. "brick red" when "brick" means a cube) nor a palette name
    shape_tokens = set().union(*(word_tokens(w) for ws in instructions.shape_words.values() for w in ws),
                               *(word_tokens(w) for ws in shape_words.values() for w in ws))
    named = []
    for name, rgb in colour_table(spec.get("sources") or ("xkcd", "css4")).items():
        _, saturation, value = colorsys.rgb_to_hsv(*rgb)
        tokens = word_tokens(name)
        if (saturation < min_saturation or value < min_value or name in instructions.colours
                or tokens & (forbidden | excluded | shape_tokens) or not re.fullmatch(r"[a-z]+( [a-z]+)*", name)):
            continue
        named.append(NamedColour(name, tuple(float(v) for v in rgb), nearest_palette_colour(rgb, instructions)))
    return ClipVocabulary(shape_words, frames, tuple(sorted(named, key=lambda c: c.name)))


# negatives of the presence term: things a command may name that are never on the table, and made-up words
_EVERYDAY_NOUNS = ("mug", "laptop", "dog", "window", "shoe", "spoon", "book", "bottle",
                   "phone", "chair", "door", "lamp", "pencil", "plate", "towel", "keys", "umbrella", "clock",
                   "sandwich", "hammer", "wallet", "plant", "fork", "pillow", "camera", "newspaper", "bicycle")
MADE_UP_SYLLABLES = ("ba", "zo", "ke", "lu", "mi", "tra", "vo", "quo", "ny", "fle", "dro", "sk", "ip", "ul", "gre",
              "po", "xa", "wi", "rth", "ond", "ez", "ka", "mu", "ste", "shi", "ga", "blo", "rf", "ix", "an")
_NONSENSE_FRAMES = ("{verb} the {noun}", "{noun}", "the {noun} please", "{verb} {noun} {noun2}", "{noun} {noun2}")
_NONSENSE_VERBS = ("reach", "touch", "go to", "grab", "find", "push")


def pseudo_word(rng, syllables: tuple[str, ...] = MADE_UP_SYLLABLES) -> str:
    """One made-up word of 1-3 of ``syllables``."""
    return "".join(syllables[i] for i in rng.integers(len(syllables), size=int(rng.integers(1, 4))))


def nonsense_phrase(rng) -> str:
    """A command that names nothing on any table: an everyday object or made-up words, in a short frame.

    Its words are none of the palette, shape, named-colour or word-split words (a test checks), so it is a
    negative for every scene.
    """
    def noun() -> str:
        return _EVERYDAY_NOUNS[rng.integers(len(_EVERYDAY_NOUNS))] if rng.random() < 0.5 else pseudo_word(rng)

    frame = _NONSENSE_FRAMES[rng.integers(len(_NONSENSE_FRAMES))]
    return frame.format(verb=_NONSENSE_VERBS[rng.integers(len(_NONSENSE_VERBS))], noun=noun(), noun2=noun())
