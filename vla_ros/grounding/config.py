"""The tiny CLIP architectures (``vla-tiny-clip``, ``vla-tiny-clip-128``) and their registration with open_clip.

Sizes are chosen for simulator renders and CPU inference: 64x64 RGB frames cut into 8x8-pixel
patches (an 8x8 grid = 64 patch tokens), a 4-layer ViT and a 3-layer text transformer of width 128,
and a 128-d joint embedding. The text tower keeps open_clip's bundled BPE vocabulary (49408 tokens,
shipped inside open_clip, so no download) with a 32-token context: commands are short.

``vla-tiny-clip-128`` reads 128x128 frames in 16x16-pixel patches: the same 8x8 grid of tokens, so
the transformer costs the same, but each token sees four times the pixels. An object on the table
covers about 7 pixels across at 64 px, where a ball and a cylinder differ by a few shaded pixels.
"""

from __future__ import annotations

import copy
from typing import Any

TINY_CLIP_NAME = "vla-tiny-clip"
TINY_CLIP_128_NAME = "vla-tiny-clip-128"

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


TINY_CLIP_128_CONFIG: dict[str, Any] = {
    **TINY_CLIP_CONFIG,
    "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "image_size": 128, "patch_size": 16},
}

BUILTIN_CONFIGS: dict[str, dict[str, Any]] = {
    TINY_CLIP_NAME: TINY_CLIP_CONFIG,
    TINY_CLIP_128_NAME: TINY_CLIP_128_CONFIG,
}


def tiny_clip_config(name: str = TINY_CLIP_NAME) -> dict[str, Any]:
    """Return a fresh copy of a built-in model config (open_clip ``model_cfg`` format)."""
    if name not in BUILTIN_CONFIGS:
        raise ValueError(f"no built-in config called {name!r}; known: {', '.join(BUILTIN_CONFIGS)}")
    return copy.deepcopy(BUILTIN_CONFIGS[name])


def register_model_config(name: str = TINY_CLIP_NAME, config: dict[str, Any] | None = None) -> str:
    """Make ``name`` a model name open_clip knows (``create_model(name)``); return the name.

    open_clip keeps its architecture registry in ``open_clip.factory._MODEL_CONFIGS`` (filled from
    JSON files); inserting the dict directly avoids shipping a data file next to the code.
    """
    from open_clip import factory

    if config is None:
        if name not in BUILTIN_CONFIGS:
            raise ValueError(f"no built-in config called {name!r}; pass config=")
        config = tiny_clip_config(name)
    if not all(k in config for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ValueError("a model config needs 'embed_dim', 'vision_cfg' and 'text_cfg'")
    factory._MODEL_CONFIGS[name] = copy.deepcopy(config)
    return name
