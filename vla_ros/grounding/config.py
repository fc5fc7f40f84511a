"""The tiny CLIP architecture (``vla-tiny-clip``) and its registration with open_clip.

Sizes are chosen for simulator renders and CPU inference: 64x64 RGB frames cut into 8x8-pixel
patches (an 8x8 grid = 64 patch tokens), a 4-layer ViT and a 3-layer text transformer of width 128,
and a 128-d joint embedding. The text tower keeps open_clip's bundled BPE vocabulary (49408 tokens,
shipped inside open_clip, so no download) with a 32-token context: commands are short.
"""

from __future__ import annotations

import copy
from typing import Any

TINY_CLIP_NAME = "vla-tiny-clip"

TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {
        "image_size": 64,
        "patch_size": 8,
        "width": 128,
        "layers": 4,
        "head_width": 32,  # 128 / 32 = 4 heads
        "mlp_ratio": 4.0,
    },
    "text_cfg": {
        "context_length": 32,
        "vocab_size": 49408,
        "width": 128,
        "heads": 4,
        "layers": 3,
    },
}


def tiny_clip_config() -> dict[str, Any]:
    """Return a fresh copy of the ``vla-tiny-clip`` model config (open_clip ``model_cfg`` format)."""
    return copy.deepcopy(TINY_CLIP_CONFIG)


def register_model_config(name: str = TINY_CLIP_NAME, config: dict[str, Any] | None = None) -> str:
    """Make ``name`` a model name open_clip knows (``create_model(name)``); return the name.

    open_clip keeps its architecture registry in ``open_clip.factory._MODEL_CONFIGS`` (filled from
    JSON files); inserting the dict directly avoids shipping a data file next to the code.
    """
    from open_clip import factory

    if config is None:
        if name != TINY_CLIP_NAME:
            raise ValueError(f"no built-in config called {name!r}; pass config=")
        config = tiny_clip_config()
    if not all(k in config for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ValueError("a model config needs 'embed_dim', 'vision_cfg' and 'text_cfg'")
    factory._MODEL_CONFIGS[name] = copy.deepcopy(config)
    return name
