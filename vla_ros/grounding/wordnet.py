"""A reader of WordNet 3.0's noun database (Debian ``wordnet-base``): senses, glosses, hypernyms; and its verbs.

Only ``index.noun`` and ``data.noun`` are read for senses (format: ``wndb(5WN)``), and ``index.verb`` for the
list of verb lemmas (:func:`verb_lemmas`). The files are checked by sha256 against
the WordNet 3.0 release that Debian and Ubuntu ship, so a lexicon built on them behaves the same on every machine;
other files are refused with a clear error. Nothing here imports torch or rclpy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vla_ros.hashing import sha256_file

DEFAULT_DIR = Path("/usr/share/wordnet")
ENV_DIR = "VLA_ROS_WORDNET_DIR"
# sha256 of WordNet 3.0's noun files as Debian 12 packages them (wordnet-base 1:3.0-37)
FILE_SHA256 = {
    "index.noun": "a490d99d93d017bf4822fe2f0ffa51fd73911ce271dc7535fade21f8814b5a04",
    "data.noun": "fea17d2f9656611334eac790e5d69e47645fa180c4aa481fb4cd9b3520754ca2",
}
VERB_INDEX_SHA256 = "e2ac24816c3a8289dcb72aaa9cf8db81fdf25ec34d792bfc96ac5b7a20c8b4ae"  # index.verb, the same release
HYPERNYM_POINTERS = ("@", "@i")  # hypernym, instance hypernym
CACHE_SIZE = 50_000  # lemmas and synsets kept in memory (WordNet has 117,798 noun lemmas)


class WordNetError(RuntimeError):
    """WordNet is missing or is not the pinned release."""


@dataclass(frozen=True)
class Synset:
    """One noun sense: its lemmas (lowercase, spaces for underscores), gloss and hypernym offsets."""

    offset: int
    lemmas: tuple[str, ...]
    gloss: str
    hypernyms: tuple[int, ...]


def wordnet_dir() -> Path:
    """Where WordNet's database lives: ``$VLA_ROS_WORDNET_DIR`` or Debian's ``/usr/share/wordnet``."""
    return Path(os.environ.get(ENV_DIR) or DEFAULT_DIR)


def _verified(directory: Path, name: str, expected: str, verify: bool) -> Path:
    """``directory / name``, refused with a clear error if missing or (``verify``) not the pinned release's file."""
    path = directory / name
    if not path.is_file():
        raise WordNetError(f"WordNet 3.0 not found: {path} is missing (install the Debian package "
                           f"wordnet-base, or point {ENV_DIR} at a WordNet 3.0 dict folder)")
    if verify and sha256_file(path) != expected:
        raise WordNetError(f"{path} is not WordNet 3.0's {name} (sha256 differs from {expected[:12]}...)")
    return path


def verb_lemmas(directory: str | Path | None = None, verify: bool = True) -> list[str]:
    """WordNet 3.0's single-word verb lemmas (``index.verb``'s first column without ``_`` compounds), sorted.

    8,429 words from "aah" to "zoom": a vocabulary of what a command's verb could be that no one chose
    by looking at this project's commands.
    """
    directory = Path(directory) if directory is not None else wordnet_dir()
    path = _verified(directory, "index.verb", VERB_INDEX_SHA256, verify)
    lemmas = set()
    with open(path, encoding="latin-1") as index:
        for line in index:
            if line.startswith(" "):  # the licence lines at the top
                continue
            lemma = line.split(" ", 1)[0]
            if lemma.isalpha():
                lemmas.add(lemma.lower())
    return sorted(lemmas)


class WordNet:
    """Noun senses of WordNet 3.0, read lazily from ``data.noun`` (byte offsets are synset ids)."""

    def __init__(self, directory: str | Path | None = None, verify: bool = True):
        self.directory = Path(directory) if directory is not None else wordnet_dir()
        for name, expected in FILE_SHA256.items():
            _verified(self.directory, name, expected, verify)
        # index.noun is sorted by lemma: looked up by binary search, not parsed (parsing its 117,798 lines in
        # Python stalls other threads, a node's e-stop service among them, for tens of milliseconds)
        self._index = open(self.directory / "index.noun", "rb")  # noqa: SIM115 - read for the object's life
        self._index_size = self._index.seek(0, 2)
        self._offsets: dict[str, tuple[int, ...]] = {}
        self._data = open(self.directory / "data.noun", "rb")  # noqa: SIM115 - read for the object's life
        self._synsets: dict[int, Synset] = {}

    def close(self) -> None:
        """Close the database files."""
        self._index.close()
        self._data.close()

    def senses(self, word: str) -> list[Synset]:
        """Noun senses of ``word`` (spaces or underscores), most frequent first; [] for an unknown word."""
        key = word.strip().lower().replace(" ", "_")
        if key not in self._offsets:
            if len(self._offsets) >= CACHE_SIZE:  # bounded: made-up words must not grow memory
                self._offsets.clear()
            self._offsets[key] = self._lookup(key)
        return [self.synset(o) for o in self._offsets[key]]

    def _lookup(self, key: str) -> tuple[int, ...]:
        """Synset offsets of ``key`` in ``index.noun``, by binary search over its sorted lines.

        The licence lines at the top start with a space, so they sort first.
        """
        target = key.encode("latin-1", errors="replace")
        low, high = 0, self._index_size
        while low < high:  # the smallest position whose first whole line has a lemma >= target
            middle = (low + high) // 2
            line = self._line_at(middle)
            if not line or line.split(b" ", 1)[0] >= target:
                high = middle
            else:
                low = middle + 1
        fields = self._line_at(low).decode("latin-1").split()
        if not fields or fields[0] != key:
            return ()
        pointer_count = int(fields[3])
        return tuple(int(o) for o in fields[6 + pointer_count:])

    def _line_at(self, position: int) -> bytes:
        """The first whole line of ``index.noun`` starting at or after byte ``position`` (b"" past the end)."""
        self._index.seek(max(0, position - 1))
        if position:
            self._index.readline()  # to the start of the next line (a line starting at `position` is kept)
        return self._index.readline()

    def synset(self, offset: int) -> Synset:
        """The synset at byte ``offset`` of ``data.noun``."""
        found = self._synsets.get(offset)
        if found is not None:
            return found
        self._data.seek(offset)
        head, _, gloss = self._data.readline().decode("latin-1").partition(" | ")
        fields = head.split()
        count = int(fields[3], 16)
        lemmas = tuple(fields[4 + 2 * i].lower().replace("_", " ") for i in range(count))
        at = 4 + 2 * count
        pointers = [fields[at + 1 + 4 * i: at + 5 + 4 * i] for i in range(int(fields[at]))]
        hypernyms = tuple(int(p[1]) for p in pointers if p[0] in HYPERNYM_POINTERS and p[2] == "n")
        found = Synset(offset, lemmas, gloss.strip(), hypernyms)
        if len(self._synsets) >= CACHE_SIZE:
            self._synsets.clear()
        self._synsets[offset] = found
        return found

    def ancestors(self, synset: Synset) -> list[tuple[Synset, int]]:
        """Every hypernym of ``synset`` with its distance (1 = direct), breadth first."""
        out, seen, frontier, depth = [], {synset.offset}, [synset], 0
        while frontier:
            depth += 1
            parents = []
            for node in frontier:
                for offset in node.hypernyms:
                    if offset not in seen:
                        seen.add(offset)
                        parents.append(self.synset(offset))
            out.extend((p, depth) for p in parents)
            frontier = parents
        return out
