"""Reading words the CLIP never saw through WordNet: "the crimson orb" reads as "the red ball".

The CLIP's text tower (MiniLM) knows colour words only weakly by hue, and its projection was trained on a fixed
vocabulary (palette colours, named colours, shape nouns). A :class:`Lexicon` maps a command word outside that
vocabulary onto a word inside it, by WordNet's hypernym graph (:mod:`vla_ros.grounding.wordnet`), before the
command is encoded:

- a **colour** reading: the word's first noun sense that is a colour (a hyponym of WordNet's *color*) is
  followed up to ``max_depth`` hypernyms to the nearest colour the CLIP knows ("crimson" is a *red*);
- otherwise a **shape** reading: the first sense reaching, within ``max_depth`` hypernyms, a shape word the CLIP
  knows in a geometric sense: a sense under WordNet's *shape*, or one whose gloss names a known shape ("a block
  in the shape of a cube"). "Die" reads as *cube*; "head" (a ship's toilet, a *can*) and the dance "ball" do not
  count;
- otherwise the word is kept, and the CLIP reads it as before.

Known words are never changed, so training commands (which hold only known words) read exactly as before: the
lexicon is a no-op on everything the CLIP and the policy were trained on, and no held-out word reaches training
through it. WordNet is a general English lexicon (82,115 noun synsets); nothing here lists the evaluation words.
The known vocabulary is stored with the checkpoint (:meth:`Lexicon.to_dict`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from vla_ros.grounding.wordnet import Synset, WordNet

SOURCE = "wordnet-3.0"
CACHE_SIZE = 20_000  # words whose reading is remembered
_WORD = re.compile(r"[A-Za-z]+")
_COLOUR_ROOT = ("color", "a visual attribute of things")  # WordNet's color.n.01: lemma, gloss prefix
_SHAPE_ROOT = ("shape", "the spatial arrangement of something")  # WordNet's shape.n.02
_SHAPE_ADJECTIVES = ("cubic", "spherical", "cylindrical", "rectangular", "round")


@dataclass(frozen=True)
class Reading:
    """One word read as a known one: ``word`` -> ``known`` (``kind`` colour or shape) at ``depth`` hypernyms."""

    word: str
    known: str
    kind: str
    depth: int

    def __str__(self) -> str:
        return f"{self.word}->{self.known}"


@dataclass
class Lexicon:
    """Known colour and shape words of a CLIP, and the other known tokens that are left alone.

    ``colours`` / ``shapes``: the words a reading may end on (a colour may be several words, "forest green");
    ``known_tokens``: every token of the CLIP's training text (never read as anything else).
    """

    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    known_tokens: frozenset[str]
    max_depth: int = 3
    wordnet: WordNet | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if not self.colours or not self.shapes:
            raise ValueError("a lexicon needs known colours and shapes")
        if not isinstance(self.max_depth, int) or not 0 <= self.max_depth <= 8:
            raise ValueError(f"lexicon max_depth must be an integer in 0..8, got {self.max_depth!r}")
        self.colours = tuple(c.lower() for c in self.colours)
        self.shapes = tuple(s.lower() for s in self.shapes)
        self.known_tokens = frozenset(t.lower() for t in self.known_tokens) | {
            t for phrase in (*self.colours, *self.shapes) for t in phrase.split()}
        self._colour_set, self._shape_set = set(self.colours), set(self.shapes)
        self._cache: dict[str, Reading | None] = {}
        self._roots: tuple[int, int] | None = None
        self._shape_gloss_words = self._shape_set | set(_SHAPE_ADJECTIVES)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_vocabulary(cls, instructions=None, vocabulary=None, max_depth: int = 3) -> "Lexicon":
        """The lexicon of a CLIP trained on ``instructions``' training words and ``vocabulary``'s extra words."""
        from vla_ros.envs.instructions import load_instructions, word_tokens
        from vla_ros.grounding.vocabulary import load_clip_vocabulary

        instructions = instructions or load_instructions()
        vocabulary = vocabulary or load_clip_vocabulary(instructions=instructions)
        colours = [*instructions.colours, *(c.name for c in vocabulary.named_colours)]
        shapes = [w for ws in (*instructions.shape_words.values(), *vocabulary.shape_words.values()) for w in ws]
        texts = [*vocabulary.frames, *(t for task in instructions.templates.values() for t in task["train"]),
                 *(w for ws in instructions.direction_words.values() for w in ws)]
        tokens = set().union(*(word_tokens(re.sub(r"\{\w+\}", " ", t)) for t in texts)) if texts else set()
        return cls(tuple(dict.fromkeys(colours)), tuple(dict.fromkeys(shapes)), frozenset(tokens), max_depth)

    def to_dict(self) -> dict[str, Any]:
        """What a checkpoint records (``config.json``'s ``lexicon``); :meth:`from_dict` reads it back."""
        return {"source": SOURCE, "max_depth": self.max_depth, "colours": list(self.colours),
                "shapes": list(self.shapes), "known_tokens": sorted(self.known_tokens)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Lexicon":
        """The lexicon a checkpoint recorded; ``ValueError`` for another source or malformed fields."""
        if not isinstance(data, dict) or data.get("source") != SOURCE:
            raise ValueError(f"lexicon must be a mapping with source {SOURCE!r}, got {str(data)[:80]!r}")
        lists = {}
        for key in ("colours", "shapes", "known_tokens"):
            value = data.get(key)
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"lexicon field {key!r} must be a list of words")
            lists[key] = value
        return cls(tuple(lists["colours"]), tuple(lists["shapes"]), frozenset(lists["known_tokens"]),
                   data.get("max_depth", 3))

    # ---------------------------------------------------------------- reading
    def open(self) -> "Lexicon":
        """Open WordNet now (hash check, about 20 ms) instead of at the first command; returns self.

        Raises :class:`vla_ros.grounding.wordnet.WordNetError` when WordNet is missing or not the pinned release.
        """
        self._root_offsets()
        return self

    def _wordnet(self) -> WordNet:
        if self.wordnet is None:
            self.wordnet = WordNet()
        return self.wordnet

    def _root_offsets(self) -> tuple[int, int]:
        if self._roots is None:
            wordnet = self._wordnet()

            def find(lemma: str, gloss: str) -> int:
                for synset in wordnet.senses(lemma):
                    if synset.gloss.startswith(gloss):
                        return synset.offset
                raise ValueError(f"WordNet has no sense of {lemma!r} glossed {gloss!r}...")

            self._roots = (find(*_COLOUR_ROOT), find(*_SHAPE_ROOT))
        return self._roots

    def _ending(self, synset: Synset, targets: set[str]) -> tuple[str, int, Synset] | None:
        """The nearest known word among ``synset``'s lemmas and its hypernyms' (within ``max_depth``).

        Returns (the word, its depth, the synset it is a lemma of), or None.
        """
        for node, depth in [(synset, 0), *self._wordnet().ancestors(synset)]:
            if depth > self.max_depth:
                return None
            for lemma in node.lemmas:
                if lemma in targets:
                    return lemma, depth, node
        return None

    def read(self, word: str) -> Reading | None:
        """How the CLIP should read ``word``; None when it is known or WordNet gives no reading."""
        key = word.lower()
        if key in self.known_tokens:
            return None
        if key in self._cache:
            return self._cache[key]
        colour_root, shape_root = self._root_offsets()
        wordnet = self._wordnet()
        found = None
        senses = wordnet.senses(key)
        for synset in senses:
            if any(a.offset == colour_root for a, _ in wordnet.ancestors(synset)):
                ending = self._ending(synset, self._colour_set)
                if ending is not None:
                    found = Reading(key, ending[0], "colour", ending[1])
                    break
        if found is None:
            for synset in senses:
                ending = self._ending(synset, self._shape_set)
                if ending is None:
                    continue
                target = ending[2]
                geometric = any(a.offset == shape_root for a, _ in wordnet.ancestors(target))
                if geometric or set(_WORD.findall(target.gloss.lower())) & self._shape_gloss_words:
                    found = Reading(key, ending[0], "shape", ending[1])
                    break
        if len(self._cache) >= CACHE_SIZE:  # bounded: a stream of made-up words must not grow memory
            self._cache.clear()
        self._cache[key] = found
        return found

    def normalise(self, command: str) -> tuple[str, list[Reading]]:
        """``command`` with every word the lexicon reads replaced by its known word, and those readings."""
        readings: list[Reading] = []

        def replace(match: re.Match) -> str:
            reading = self.read(match.group(0))
            if reading is None:
                return match.group(0)
            readings.append(reading)
            return reading.known

        return _WORD.sub(replace, command), readings
