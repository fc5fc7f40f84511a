"""Contrastive training of the sim-domain CLIP (``vla-ros train-clip``).

Objective (RegionCLIP-style, open_clip's ``ClipLoss`` at the core)::

    loss = ClipLoss(global image, scene caption)                      # symmetric InfoNCE, learned T
         + region_weight * multi-positive InfoNCE(region, object caption)
         + scene_pick_weight * CE(object caption -> the regions of its own scene)
         + dense_pick_weight * CE(object caption -> regions at every patch centre of its scene)
         + presence_weight * BCE(a * (max over patch-centre regions of similarity - b), caption names an
                                 object in the scene)                 # learned a, b; absent combos and
                                                                      # nonsense phrases are the negatives

Region embeddings pool the projected patch tokens around each object's pixel
(:mod:`vla_ros.grounding.regions`). Object captions repeat inside a batch ("the red cube" appears in
many scenes) and attribute-only captions ("a ball") match several objects, so the region term treats
every matching (region, caption) pair as a positive; with one match per row it is exactly ClipLoss.

From scratch it trains ``vla-tiny-clip``; with ``text_tower`` its text side is a pretrained sentence encoder
(:mod:`vla_ros.grounding.text_tower`) that stays frozen but for its last ``text_unlocked_layers`` layers, and
only its projection into the joint space learns (the frozen part's output is cached per caption). With
``broad_vocabulary`` captions also use :mod:`vla_ros.grounding.vocabulary`'s shape nouns and frames, and
``named_colour_scenes`` more scenes are rendered with every object painted in a named colour (XKCD / CSS4
names) and captioned with that name: which hue a colour word means is taught, never assumed. With
``contact_scenes`` more scenes show the scripted push expert mid-push (fingertip beside or on the object, the
object moved), where a pushing policy's map is read (:func:`vla_ros.grounding.data.generate_scenes`). No word of a
word split (validation or held-out words) reaches any caption. With ``init_from`` it adapts a local
pretrained open_clip model, either fully or with LoRA (``adapter="lora"``: only the low-rank adapters train, merged into
the weights at export). Checkpoints (model, optimiser, scheduler, step, RNG states) make runs
resumable; the final model is exported as an open_clip ``local-dir:`` folder.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vla_ros.grounding.checkpoint import LoadedClip, create_clip, load_clip, save_clip_checkpoint
from vla_ros.grounding.config import TINY_CLIP_NAME
from vla_ros.grounding.data import NO_ATTRIBUTE, CaptionSampler, SceneDataset, load_or_generate
from vla_ros.grounding.encoder import ClipEncoder, trim_padding, vision_forward
from vla_ros.grounding.preprocess import OPENAI_MEAN, OPENAI_STD, FramePreprocessor
from vla_ros.grounding.regions import patch_centres, region_embeddings, region_weights
from vla_ros.grounding.text_pooling import pool_projected

EVAL_SEED_OFFSET = 1_000_000  # evaluation scenes use seeds far from any training seed
NAMED_SEED_OFFSET = 500_000  # named-colour training scenes: other seeds than the palette ones
CONTACT_SEED_OFFSET = 700_000  # contact (mid-push) training scenes: other seeds again
STATE_FILE = "train_state.pt"
UNKNOWN_COLOUR = -2  # attribute value of objects in repainted (novel-colour) views
# hue bands (degrees) between the palette's hues (red 0, orange 30, yellow 53, green 126, blue 229,
# purple 282) with a margin, so a repainted object never looks like a palette colour
NOVEL_HUE_BANDS = ((70.0, 92.0), (165.0, 195.0), (305.0, 340.0))
# named novel colours (``name_novel_colours``): narrower bands, at least 20 degrees from every palette hue
# and 30 from red, so that no "pink ball" looks like the held-out red ball
NAMED_NOVEL_HUE_BANDS = ((73.0, 95.0), (165.0, 195.0), (305.0, 330.0))
NOVEL_COLOUR_NAMES = ("lime", "cyan", "pink")  # caption words of NAMED_NOVEL_HUE_BANDS, in order


def _object_mask(hsv: np.ndarray) -> np.ndarray:
    return (hsv[..., 1] > 70) & (hsv[..., 2] > 30)  # table, arm and floor are unsaturated


def repaint_objects(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Give every saturated (object) pixel of an RGB frame one random hue from :data:`NOVEL_HUE_BANDS`.

    Table, arm and floor are unsaturated and keep their look; objects keep their shading.
    """
    import cv2

    low, high = NOVEL_HUE_BANDS[rng.integers(len(NOVEL_HUE_BANDS))]
    hue = rng.uniform(low, high) / 2.0  # OpenCV hue is 0..180
    hsv = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV)
    objects = _object_mask(hsv)
    hsv[..., 0][objects] = np.uint8(round(hue))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def repaint_each_object(frame: np.ndarray, pixels: np.ndarray, bands: np.ndarray,
                        rng: np.random.Generator) -> np.ndarray:
    """Repaint each object its own hue from band ``bands[k]`` of :data:`NAMED_NOVEL_HUE_BANDS`.

    ``pixels`` (K, 2) are the objects' (u, v); a saturated pixel belongs to the nearest object.
    """
    import cv2

    hsv = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV)
    v, u = np.nonzero(_object_mask(hsv))
    if len(u) == 0 or len(pixels) == 0:
        return frame.copy()
    owner = (((u[:, None] - pixels[None, :, 0]) ** 2) + ((v[:, None] - pixels[None, :, 1]) ** 2)).argmin(axis=1)
    hues = np.array([rng.uniform(*NAMED_NOVEL_HUE_BANDS[band]) / 2.0 for band in bands])  # OpenCV hue is 0..180
    hsv[v, u, 0] = np.round(hues[owner]).astype(np.uint8)
    repainted = frame.copy()
    repainted[v, u] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[v, u]  # the rest keeps its exact pixels
    return repainted


TRAINABLE_PARTS = ("all", "text_projection")


@dataclass
class TrainClipConfig:
    """Every setting of a ``train-clip`` run (saved with checkpoints and the exported model)."""

    out: str = "runs/clip"
    """run folder: data cache, checkpoints, metrics log, exported model (``OUT/model``)"""
    steps: int = 3000
    """optimiser steps"""
    batch_size: int = 128
    """scenes per step (each gives one scene caption and one caption per object)"""
    lr: float = 1e-3
    """peak AdamW learning rate (linear warm-up, cosine decay)"""
    weight_decay: float = 0.1
    warmup_steps: int = 200
    seed: int = 0
    threads: int = 1
    """torch CPU threads; 1 on a shared 2-core machine (2 threads there oversubscribe and run slower)"""
    region_weight: float = 1.0
    """weight of the region-caption term"""
    scene_pick_weight: float = 1.0
    """weight of the in-scene term: each object caption against the regions of its own scene only
    (the zero-shot task itself; objects sharing a colour force the shape to be used)"""
    dense_pick_weight: float = 0.0
    """weight of the dense term: each object caption against the regions at every patch centre of its
    scene (what a policy, which is not given object pixels, has to search), the target being the
    Gaussian pooling weights around the objects it names; 0 leaves it out"""
    region_sigma: float = 0.75
    """Gaussian pooling radius around an object, in patches"""
    novel_colour_fraction: float = 0.3
    """share of scenes whose objects are all repainted one random colour far from every palette colour
    (cyan, lime, pink bands), captioned by shape only: teaches shape features that do not depend on
    colour, which is what held-out colour-shape combos need. No held-out combo is ever shown."""
    name_novel_colours: bool = False
    """repaint each object of a novel-colour view its own novel colour, named in its captions (lime, cyan,
    pink), instead of one unnamed colour for the whole scene with shape-only captions: every novel
    colour is then seen with every shape, so captions must bind a colour word to a shape, and two
    objects sharing a colour differ only by their shape"""
    attribute_fraction: float = 0.4
    """share of object captions naming only a colour or only a shape"""
    command_fraction: float = 0.3
    """share of object captions that are training command phrasings"""
    train_scenes: int = 30000
    """rendered training scenes (env split ``train``: held-out colour-shape combos never appear)"""
    distractor_fraction: float = 0.2
    jitter_fraction: float = 0.2
    moved_arm_fraction: float = 0.5
    image_size: int = 64
    """render size of the simulator frames"""
    colour_space: str = "rgb"
    """what the image tower reads: ``rgb``, or ``vsh`` (value, saturation, hue: a shape's shading and outline
    look the same in every colour, see :func:`vla_ros.grounding.preprocess.rgb_to_vsh`); recorded in the
    exported model, whose users convert the same way"""
    text_tower: str = "none"
    """``none``: open_clip's own text transformer, trained from scratch; or a pretrained sentence encoder
    (``all-MiniLM-L6-v2``, from its pinned wheel) whose projection trains and whose transformer stays frozen
    except its last ``text_unlocked_layers`` layers"""
    text_unlocked_layers: int = 0
    """trainable last layers of the pretrained text tower (0 = frozen; its output is then cached per caption)"""
    text_lr_scale: float = 0.1
    """learning-rate factor of the unlocked pretrained text layers"""
    text_projection: str = "mlp"
    """projection of the pretrained text tower's output into the joint space: ``mlp`` (384 -> 256 -> 128, GELU) or
    ``linear``"""
    text_pooling: str = "mean"
    """how the pretrained text tower's token states become one vector: ``mean`` (average, then project) or
    ``projected_tokens`` (project each token, then average; see :mod:`vla_ros.grounding.text_pooling`)"""
    broad_vocabulary: bool = False
    """captions also use the extra shape nouns and frames of ``sim/tasks/clip_vocabulary.yaml``"""
    named_colour_scenes: int = 0
    """extra training scenes, every object painted in a named colour and captioned with its name (needs
    ``broad_vocabulary``); a colour is never painted on a shape that would make it look like a held-out combo"""
    contact_scenes: int = 0
    """extra training scenes taken mid-push: the scripted push expert, its actions noisy, runs 10-45 steps of a
    push episode first, so the fingertip is beside, on or behind the commanded object and the object has moved
    (a pushing policy reads its map there; random arm moves rarely get that close). Palette colours, train
    combos; 0 leaves them out"""
    presence_weight: float = 0.0
    """weight of the presence term: whether the best-matching region of a scene matches a caption, for the
    scene's own object captions against absent colour-shape pairs and nonsense phrases (what refusal reads)"""
    nonsense_fraction: float = 0.25
    """share of scenes that add a nonsense phrase to the presence term's negatives"""
    named_absent_fraction: float = 0.0
    """share of the presence term's absent-object captions that name the colour with a named colour that
    clearly looks like it ("the cerulean ball") instead of the palette word (needs ``broad_vocabulary``)"""
    eval_scenes: int = 300
    """held-out-seed scenes per evaluation split during training"""
    eval_every: int = 500
    checkpoint_every: int = 500
    model: str = TINY_CLIP_NAME
    """architecture trained from scratch (ignored with ``init_from``)"""
    init_from: str | None = None
    """pretrained open_clip checkpoint folder, or a model name together with ``init_pretrained``"""
    init_pretrained: str | None = None
    """local weights file for ``init_from`` given as a model name"""
    adapter: str = "none"
    """``none`` (train all weights) or ``lora`` (only low-rank adapters; needs ``init_from``)"""
    trainable: str = "all"
    """``all``, or ``text_projection``: only the text projection, the temperature and the presence head train, on
    a CLIP continued from ``init_from`` (with its ``text_tower``). The image tower stays as it is, so the patch
    features a policy was trained on do not change"""
    vocabulary: str | None = None
    """the extra-vocabulary file of ``broad_vocabulary`` (default ``sim/tasks/clip_vocabulary.yaml``)"""
    lora_rank: int = 8
    lora_alpha: float = 16.0
    export_fp16: bool = True
    """store exported weights as fp16 (half the file; loading casts back)"""
    command: list[str] = field(default_factory=list)
    """the command line that started the run (recorded in the model card)"""


def multi_positive_clip_loss(image: torch.Tensor, text: torch.Tensor, match: torch.Tensor,
                             logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where ``match[i, j]`` marks every positive (image i, text j) pair.

    Targets are uniform over each row's positives; with ``match`` = identity this equals ClipLoss.
    """
    logits = logit_scale * image @ text.T
    match = match.float()
    image_targets = match / match.sum(dim=1, keepdim=True)
    text_targets = match.T / match.T.sum(dim=1, keepdim=True)
    image_loss = -(image_targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
    text_loss = -(text_targets * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
    return (image_loss + text_loss) / 2


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with any LoRA updates baked in, under the plain open_clip key names."""
    from torch.nn.utils import parametrize

    state = {k: v.detach().clone() for k, v in model.state_dict().items() if ".parametrizations." not in k}
    for module_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for name in module.parametrizations.keys():
                key = f"{module_name}.{name}" if module_name else name
                state[key] = getattr(module, name).detach().clone()
    return state


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)`` computed only over the batch's longest caption (training speed).

    open_clip's text transformer is causal and pools at the end-of-text token, so padding after the
    longest caption cannot change any output; cutting it makes short captions cheap. Falls back to
    ``encode_text`` for other text towers.
    """
    from open_clip.model import CLIP

    if (not isinstance(model, CLIP) or model.attn_mask is None or model.text_pool_type != "argmax"
            or model.text_projection is None or isinstance(model.text_projection, torch.nn.Linear)):
        return model.encode_text(tokens)
    length = int((tokens != 0).sum(dim=1).max())
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


def pad_states(hidden: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, D) token states and their (B, L) boolean mask from one (length, D) tensor per caption."""
    width = hidden[0].shape[-1]
    length = max(h.shape[0] for h in hidden)
    states = hidden[0].new_zeros(len(hidden), length, width)
    mask = torch.zeros(len(hidden), length, dtype=torch.bool)
    for i, h in enumerate(hidden):
        states[i, : len(h)] = h
        mask[i, : len(h)] = True
    return states, mask


def unlocked_text_forward(text: torch.nn.Module, hidden: list[torch.Tensor], layers: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states and mask after a Hugging Face text tower's last ``layers`` layers, for cached hidden states.

    ``hidden`` holds one (length, width) tensor per caption: the states entering the first of those layers.
    Pooled and projected (:func:`vla_ros.grounding.text_pooling.pool_projected`), this equals the tower's own
    forward up to float rounding.
    """
    states, mask = pad_states(hidden)
    length = states.shape[1]
    additive = torch.zeros(len(hidden), 1, 1, length, dtype=states.dtype).masked_fill(
        ~mask[:, None, None, :], torch.finfo(states.dtype).min)
    for layer in text.transformer.encoder.layer[-layers:]:
        states = layer(states, attention_mask=additive)
        states = states[0] if isinstance(states, tuple) else states
    return states, mask


def _scene_sampler(config: TrainClipConfig, vocabulary=None) -> CaptionSampler:
    from vla_ros.envs.instructions import load_instructions

    return CaptionSampler.from_instructions(load_instructions(), attribute_fraction=config.attribute_fraction,
                                            command_fraction=config.command_fraction,
                                            extra_colours=NOVEL_COLOUR_NAMES if config.name_novel_colours else (),
                                            vocabulary=vocabulary,
                                            named_absent_fraction=config.named_absent_fraction)


def check_config(config: TrainClipConfig) -> None:
    """Raise ``ValueError`` for settings that contradict each other."""
    from vla_ros.grounding.text_pooling import TEXT_POOLINGS
    from vla_ros.grounding.text_tower import TEXT_TOWERS

    if config.text_tower != "none" and config.text_tower not in TEXT_TOWERS:
        raise ValueError(f"text_tower must be 'none' or one of {sorted(TEXT_TOWERS)}, got {config.text_tower!r}")
    if config.trainable not in TRAINABLE_PARTS:
        raise ValueError(f"trainable must be one of {TRAINABLE_PARTS}, got {config.trainable!r}")
    if config.trainable != "all" and (config.adapter != "none" or config.text_tower == "none" or not config.init_from):
        raise ValueError("trainable='text_projection' continues a CLIP with a pretrained text tower: pass init_from "
                         "and its text_tower, without an adapter")
    if config.text_unlocked_layers and config.text_tower == "none":
        raise ValueError("text_unlocked_layers needs a pretrained text_tower")
    if config.text_tower != "none" and not 0 <= config.text_unlocked_layers <= TEXT_TOWERS[config.text_tower].layers:
        raise ValueError(f"text_unlocked_layers must be 0..{TEXT_TOWERS[config.text_tower].layers}")
    if config.text_projection not in ("mlp", "linear"):
        raise ValueError(f"text_projection must be 'mlp' or 'linear', got {config.text_projection!r}")
    if config.text_pooling not in TEXT_POOLINGS:
        raise ValueError(f"text_pooling must be one of {TEXT_POOLINGS}, got {config.text_pooling!r}")
    if config.text_pooling != "mean" and config.text_tower == "none":
        raise ValueError("text_pooling needs a pretrained text_tower")
    if config.named_colour_scenes and not config.broad_vocabulary:
        raise ValueError("named_colour_scenes needs broad_vocabulary (the colour names come from it)")
    if config.broad_vocabulary and config.name_novel_colours:
        raise ValueError("broad_vocabulary's named colours replace name_novel_colours (lime, cyan, pink)")
    if config.named_absent_fraction and not config.broad_vocabulary:
        raise ValueError("named_absent_fraction needs broad_vocabulary (the colour names come from it)")
    if not 0 <= config.named_absent_fraction <= 1:
        raise ValueError("named_absent_fraction must be in [0, 1]")
    if config.named_colour_scenes < 0 or config.presence_weight < 0 or config.contact_scenes < 0:
        raise ValueError("named_colour_scenes, contact_scenes and presence_weight must be >= 0")


class ClipTrainer:
    """Holds the model, data, optimiser and RNGs of one run; :meth:`train` runs it to ``config.steps``."""

    def __init__(self, config: TrainClipConfig, resume: bool = False):
        check_config(config)
        self.config = config
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.loaded = self._build_model()
        self.model = self.loaded.model.train()
        self.pretrained_text = config.text_tower != "none"
        self.text_cache: dict[str, torch.Tensor] = {}  # caption -> frozen text tower output (pooled)
        # presence logit a * (similarity - b): log a and b, trained with the CLIP
        self.presence = torch.nn.Parameter(torch.tensor([math.log(10.0), 0.3]))
        self.trainable = self._setup_trainable()
        self.loss_fn = self._clip_loss()
        visual = self.model.visual
        size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
        pre = self.loaded.preprocess_cfg
        self.preprocessor = FramePreprocessor(size, pre.get("mean", OPENAI_MEAN), pre.get("std", OPENAI_STD),
                                              pre.get("resize_mode", "shortest"), colour_space=config.colour_space)
        self.grid_size = tuple(visual.grid_size)
        self.context_length = int(self.loaded.model_cfg["text_cfg"].get("context_length") or self.model.context_length)
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.vocabulary = None
        if config.broad_vocabulary:
            from vla_ros.grounding.vocabulary import load_clip_vocabulary

            self.vocabulary = load_clip_vocabulary(config.vocabulary)
        render = dict(split="train", image_size=config.image_size, distractor_fraction=config.distractor_fraction,
                      jitter_fraction=config.jitter_fraction, moved_arm_fraction=config.moved_arm_fraction,
                      progress=True)
        self.train_data = load_or_generate(
            self.out / "data" / f"train_{config.train_scenes}_seed{config.seed}_{config.image_size}px.npz",
            num_scenes=config.train_scenes, seed=config.seed, **render)
        if config.named_colour_scenes:
            named = load_or_generate(
                self.out / "data" / f"named_{config.named_colour_scenes}_seed{config.seed}_{config.image_size}px_"
                f"{len(self.vocabulary.named_colours)}colours.npz",
                num_scenes=config.named_colour_scenes, seed=config.seed + NAMED_SEED_OFFSET,
                named_colours=self.vocabulary.named_colours, **render)
            self.train_data = SceneDataset.concatenate(self.train_data, named)
        if config.contact_scenes:
            contact = load_or_generate(
                self.out / "data" / f"contact_{config.contact_scenes}_seed{config.seed}_{config.image_size}px.npz",
                num_scenes=config.contact_scenes, seed=config.seed + CONTACT_SEED_OFFSET, contact=True, **render)
            self.train_data = SceneDataset.concatenate(self.train_data, contact)
        self.sampler = _scene_sampler(config, self.vocabulary)
        if len(self.train_data.colour_names) > len(self.sampler.colour_names) or \
                self.train_data.colour_names != self.sampler.colour_names[: len(self.train_data.colour_names)]:
            raise ValueError("the rendered scenes' colours are not the caption sampler's: delete OUT/data and rerun")
        eval_splits = ("train", "heldout_combos", "validation_words") if self.pretrained_text else \
            ("train", "heldout_combos")
        self.eval_data = {
            split: load_or_generate(
                self.out / "data" / f"eval_{split}_{config.eval_scenes}_{config.image_size}px.npz",
                num_scenes=config.eval_scenes, seed=EVAL_SEED_OFFSET, split=split,
                image_size=config.image_size)
            for split in eval_splits
        }
        if config.presence_weight > 0:
            self.eval_data["corrupted"] = load_or_generate(
                self.out / "data" / f"eval_corrupted_{config.eval_scenes}_{config.image_size}px.npz",
                num_scenes=config.eval_scenes, seed=EVAL_SEED_OFFSET, split="train", image_size=config.image_size,
                corrupted=True)
        if resume:
            self._load_state()

    # ------------------------------------------------------------------ setup
    def _build_model(self) -> LoadedClip:
        config = self.config
        if config.adapter not in ("none", "lora"):
            raise ValueError(f"adapter must be 'none' or 'lora', got {config.adapter!r}")
        if config.init_from is None:
            if config.adapter == "lora":
                raise ValueError("adapter='lora' adapts a pretrained model: pass init_from")
            if config.text_tower != "none":
                from vla_ros.grounding.config import tiny_clip_config
                from vla_ros.grounding.text_pooling import TEXT_POOLING_KEY
                from vla_ros.grounding.text_tower import text_cfg

                model_cfg = tiny_clip_config(config.model)
                model_cfg["text_cfg"] = text_cfg(config.text_tower, proj_type=config.text_projection)
                if config.text_pooling != "mean":
                    model_cfg[TEXT_POOLING_KEY] = config.text_pooling
                loaded = create_clip(model_cfg, seed=config.seed)
                # the pretrained transformer (LayerNorms too) stays as it is but for its last layers
                loaded.model.text.transformer.requires_grad_(False)
                if config.text_unlocked_layers:
                    for layer in loaded.model.text.transformer.encoder.layer[-config.text_unlocked_layers:]:
                        layer.requires_grad_(True)
                return loaded
            return create_clip(config.model, seed=config.seed)
        loaded = load_clip(config.init_from, config.init_pretrained)
        if loaded.colour_space != config.colour_space:
            raise ValueError(f"{config.init_from} reads {loaded.colour_space!r} images; colour_space="
                             f"{config.colour_space!r} would feed it another input")
        if config.text_tower != "none":  # continue a CLIP built around this pretrained tower
            tower = loaded.metadata.get("text_tower", {}).get("name")
            if tower != config.text_tower:
                raise ValueError(f"{config.init_from} has text tower {tower!r}, not text_tower={config.text_tower!r}")
            loaded.model.text.transformer.requires_grad_(False)
            if config.text_unlocked_layers:
                for layer in loaded.model.text.transformer.encoder.layer[-config.text_unlocked_layers:]:
                    layer.requires_grad_(True)
        if config.trainable == "text_projection":
            loaded.model.requires_grad_(False)
            loaded.model.text.proj.requires_grad_(True)
            loaded.model.logit_scale.requires_grad_(True)
        return loaded

    def _setup_trainable(self) -> list[torch.nn.Parameter]:
        if self.config.adapter == "lora":
            from vla_ros.grounding.lora import apply_lora

            params = apply_lora(self.model, rank=self.config.lora_rank, alpha=self.config.lora_alpha)
            # the temperature is tiny and domain-specific: adapt it too
            self.model.logit_scale.requires_grad_(True)
            return params + [self.model.logit_scale]
        return [p for p in self.model.parameters() if p.requires_grad] + [self.presence]

    @staticmethod
    def _clip_loss():
        from open_clip.loss import ClipLoss

        return ClipLoss()

    def _optimizer(self) -> torch.optim.Optimizer:
        # no weight decay on gains, biases, embeddings and the temperature (open_clip's recipe); unlocked
        # pretrained text layers learn at text_lr_scale of the rate, so the tower keeps what it knows
        pretrained = {id(p) for p in self.model.text.transformer.parameters()} if self.pretrained_text else set()
        groups = {(False, False): [], (False, True): [], (True, False): [], (True, True): []}
        for param in self.trainable:
            plain = param.ndim < 2 or param is self.model.logit_scale or param is self.presence
            groups[(id(param) in pretrained, plain)].append(param)
        lr, scale = self.config.lr, self.config.text_lr_scale
        param_groups = [{"params": params, "weight_decay": 0.0 if plain else self.config.weight_decay,
                         "lr": lr * scale if text else lr}
                        for (text, plain), params in groups.items() if params]
        return torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)

    def _lr_factor(self, step: int) -> float:
        warmup = max(1, self.config.warmup_steps)
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, self.config.steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    # ------------------------------------------------------------------ one step
    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.loaded.tokenizer(texts, context_length=self.context_length)

    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """Unnormalised joint-space embeddings of distinct captions, differentiable where the text side trains.

        A pretrained tower's frozen layers run once per caption ever seen: their output is cached (the pooled
        vector when the whole tower is frozen, else the hidden states entering the first unlocked layer), and
        only the unlocked layers and the projection run every step.
        """
        if not self.pretrained_text:
            return encode_text_trimmed(self.model, self._tokenize(texts))
        text = self.model.text
        unlocked = self.config.text_unlocked_layers
        pooling = self.config.text_pooling
        pooled_cache = not unlocked and pooling == "mean"  # else token states are cached
        missing = [i for i, t in enumerate(texts) if t not in self.text_cache]
        if missing:  # only captions not seen before are tokenised and run through the frozen layers
            ids = trim_padding(self._tokenize([texts[i] for i in missing]))
            mask = (ids != text.config.pad_token_id).long()
            with torch.no_grad():
                out = text.transformer(input_ids=ids, attention_mask=mask, output_hidden_states=bool(unlocked))
                if pooled_cache:
                    cached = text.pooler(out, mask)
                else:
                    cached = out.hidden_states[-(unlocked + 1)] if unlocked else out.last_hidden_state
            for row, i in enumerate(missing):
                length = int(mask[row].sum())
                self.text_cache[texts[i]] = cached[row] if pooled_cache else cached[row, :length].clone()
        if pooled_cache:
            return text.proj(torch.stack([self.text_cache[t] for t in texts]))
        hidden = [self.text_cache[t] for t in texts]
        states, mask = unlocked_text_forward(text, hidden, unlocked) if unlocked else pad_states(hidden)
        return pool_projected(text, states, mask, pooling)

    def batch_loss(self, indices: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch of scenes (global + region terms) and its parts for logging."""
        data, rng = self.train_data, self.rng
        frames = data.images[indices]
        grey = rng.random(len(indices)) < self.config.novel_colour_fraction  # repainted views
        valid = data.valid[indices]
        named = self.config.name_novel_colours
        batch_colours = data.colours[indices].copy()
        if grey.any():
            frames = frames.copy()
            for b in np.flatnonzero(grey):
                if named:
                    bands = rng.integers(len(NAMED_NOVEL_HUE_BANDS), size=int(valid[b].sum()))
                    frames[b] = repaint_each_object(frames[b], data.pixels[indices[b]][valid[b]], bands, rng)
                    batch_colours[b, valid[b]] = len(data.colour_names) + bands  # the sampler's extra colours
                else:
                    frames[b] = repaint_objects(frames[b], rng)
                    # the view's colour is unknown (-2): a positive only for captions that name no colour
                    batch_colours[b, valid[b]] = UNKNOWN_COLOUR
        images = self.preprocessor(frames)
        pooled, tokens = vision_forward(self.model.visual, images)
        image_global = F.normalize(pooled, dim=-1)

        shape_only = grey & (not named)
        scene_captions = [self.sampler.scene_caption(data.colours[i] if shape_only[b] else batch_colours[b],
                                                     data.shapes[i], data.positions[i], rng,
                                                     with_colour=not shape_only[b]) for b, i in enumerate(indices)]
        scene_of, slot_of = np.nonzero(valid)
        object_captions, named_colour, named_shape = [], [], []
        for b, k in zip(scene_of, slot_of):
            if shape_only[b]:
                text, colour, shape = self.sampler.shape_caption(data.shapes[indices[b], k], rng)
            else:
                text, colour, shape = self.sampler.object_caption(batch_colours[b, k],
                                                                  data.shapes[indices[b], k], rng)
            object_captions.append(text)
            named_colour.append(colour)
            named_shape.append(shape)
        absent_captions, absent_scene = self._presence_negatives(indices, batch_colours) \
            if self.config.presence_weight > 0 else ([], [])
        # captions repeat within a batch ("the red cube"): encode each distinct string once
        unique, inverse = np.unique(np.array(scene_captions + object_captions + absent_captions), return_inverse=True)
        text = self.text_embeddings(unique.tolist())
        text = F.normalize(text, dim=-1)[torch.from_numpy(inverse.reshape(-1))]
        scene_text = text[: len(indices)]
        object_text = text[len(indices): len(indices) + len(object_captions)]
        absent_text = text[len(indices) + len(object_captions):]

        scale = self.model.logit_scale.exp()
        global_loss = self.loss_fn(image_global, scene_text, scale)

        geo = self.preprocessor.geometry(data.images.shape[1], data.images.shape[2])
        pixels = torch.from_numpy(data.pixels[indices]) * torch.tensor([geo.scale_x, geo.scale_y]) \
            + torch.tensor([geo.offset_x, geo.offset_y])
        scene_regions = region_embeddings(tokens, pixels, self.grid_size, self.preprocessor.size,
                                          self.config.region_sigma)  # (B, K, D)
        regions = scene_regions[scene_of, slot_of]
        named_colour_t, named_shape_t = torch.tensor(named_colour), torch.tensor(named_shape)

        def matches(colours: torch.Tensor, shapes: torch.Tensor) -> torch.Tensor:
            # a region is a positive for a caption when it has every attribute the caption names
            return (((named_colour_t == NO_ATTRIBUTE) | (colours == named_colour_t))
                    & ((named_shape_t == NO_ATTRIBUTE) | (shapes == named_shape_t)))

        colours = torch.from_numpy(batch_colours[scene_of, slot_of])
        shapes = torch.from_numpy(data.shapes[indices][scene_of, slot_of])
        match = matches(colours[:, None], shapes[:, None])  # (regions, captions)
        region_loss = multi_positive_clip_loss(regions, object_text, match, scale)

        # in-scene picking: caption j against the K regions of its own scene
        scene_colours = torch.from_numpy(batch_colours)[scene_of]  # (captions, K)
        scene_shapes = torch.from_numpy(data.shapes[indices])[scene_of]
        in_scene = matches(scene_colours.T, scene_shapes.T).T & torch.from_numpy(valid)[scene_of]
        logits = scale * torch.einsum("mkd,md->mk", scene_regions[scene_of], object_text)
        logits = logits.masked_fill(~torch.from_numpy(valid)[scene_of], float("-inf"))
        targets = in_scene.float() / in_scene.sum(dim=1, keepdim=True)
        pick_loss = -(targets * logits.log_softmax(dim=1).clamp_min(-1e4)).sum(dim=1).mean()

        loss = global_loss + self.config.region_weight * region_loss + self.config.scene_pick_weight * pick_loss
        parts = {"global": global_loss.item(), "region": region_loss.item(), "pick": pick_loss.item()}
        if self.config.dense_pick_weight > 0 or self.config.presence_weight > 0:
            size, sigma = self.preprocessor.size, self.config.region_sigma
            centres = patch_centres(self.grid_size, size).expand(len(tokens), -1, -1)
            dense_regions = region_embeddings(tokens, centres, self.grid_size, size, sigma)  # (B, P, D)
        if self.config.dense_pick_weight > 0:
            dense_loss = self._dense_pick_loss(dense_regions, pixels, in_scene, scene_of, object_text, scale)
            loss = loss + self.config.dense_pick_weight * dense_loss
            parts["dense"] = dense_loss.item()
        if self.config.presence_weight > 0:
            presence_loss, separation = self._presence_loss(dense_regions, scene_of, object_text,
                                                            np.asarray(absent_scene), absent_text)
            loss = loss + self.config.presence_weight * presence_loss
            parts["presence"] = presence_loss.item()
            parts["separation"] = separation
        parts = {"loss": loss.item(), **parts}
        parts["scale"] = scale.item()
        return loss, parts

    def _presence_negatives(self, indices: np.ndarray, batch_colours: np.ndarray) -> tuple[list[str], list[int]]:
        """Per scene one caption of a colour-shape pair not on its table, and sometimes a nonsense phrase."""
        from vla_ros.grounding.vocabulary import nonsense_phrase

        captions, scenes = [], []
        for b, i in enumerate(indices):
            absent = self.sampler.absent_caption(batch_colours[b], self.train_data.shapes[i], self.rng)
            if absent is not None:
                captions.append(absent[0])
                scenes.append(b)
            if self.rng.random() < self.config.nonsense_fraction:
                captions.append(nonsense_phrase(self.rng))
                scenes.append(b)
        return captions, scenes

    def _presence_loss(self, dense_regions: torch.Tensor, scene_of: np.ndarray, object_text: torch.Tensor,
                       absent_scene: np.ndarray, absent_text: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Balanced BCE of ``a * (best region similarity - b)``: object captions present, negatives absent.

        Returns the loss and the mean best similarity of positives minus that of negatives (for the log).
        """
        positive = (dense_regions[scene_of] @ object_text.unsqueeze(-1)).squeeze(-1).amax(dim=1)
        negative = (dense_regions[absent_scene] @ absent_text.unsqueeze(-1)).squeeze(-1).amax(dim=1)
        slope, bias = self.presence[0].exp(), self.presence[1]
        loss = F.binary_cross_entropy_with_logits(slope * (positive - bias), torch.ones_like(positive))
        if len(negative):
            loss = 0.5 * (loss + F.binary_cross_entropy_with_logits(slope * (negative - bias),
                                                                    torch.zeros_like(negative)))
        separation = float((positive.mean() - negative.mean()).detach()) if len(negative) else float("nan")
        return loss, separation

    def _dense_pick_loss(self, dense_regions: torch.Tensor, pixels: torch.Tensor, in_scene: torch.Tensor,
                         scene_of: np.ndarray, object_text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """CE of each caption over the regions at all patch centres of its scene.

        The soft target is the pooling weights around the objects the caption names, so a centre
        between two objects counts for both.
        """
        size, sigma = self.preprocessor.size, self.config.region_sigma
        near_object = region_weights(pixels, self.grid_size, size, sigma)  # (B, K, P)
        targets = torch.einsum("mk,mkp->mp", in_scene.float(), near_object[scene_of])
        targets = targets / targets.sum(dim=1, keepdim=True)
        logits = scale * torch.einsum("mpd,md->mp", dense_regions[scene_of], object_text)
        return -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()

    # ------------------------------------------------------------------ evaluation, checkpoints, export
    def eval_encoder(self) -> ClipEncoder:
        """A frozen copy of the current model (LoRA merged) as a :class:`ClipEncoder`."""
        model = create_clip(self.loaded.model_cfg).model
        model.load_state_dict(merged_state_dict(self.model))
        loaded = LoadedClip(model=model, tokenizer=self.loaded.tokenizer, model_cfg=self.loaded.model_cfg,
                            preprocess_cfg=self.loaded.preprocess_cfg, weights_path=None, weights_sha256=None,
                            metadata={"colour_space": self.config.colour_space})
        return ClipEncoder(loaded)

    def evaluate(self) -> dict[str, Any]:
        """Zero-shot and dense pick accuracy per split, retrieval R@1, presence separation, on held-out seeds.

        ``validation_words`` (pretrained text towers) has commands in words no caption uses, for choosing
        between runs; the held-out words are never looked at here. ``presence`` compares the best region
        score of the valid commands (train and validation words) with that of the corrupted ones.
        """
        from vla_ros.grounding.evaluation import dense_pick_accuracy, retrieval_r1, zero_shot_accuracy
        from vla_ros.grounding.refusal import score_frames, separation_report

        encoder = self.eval_encoder()
        splits = {"train": "train_combos", "heldout_combos": "heldout_combos",
                  "validation_words": "validation_words"}
        splits = {name: key for name, key in splits.items() if name in self.eval_data}
        metrics = {
            "zero_shot_accuracy": {key: zero_shot_accuracy(encoder, self.eval_data[name])
                                   for name, key in splits.items()},
            "dense_pick_accuracy": {key: dense_pick_accuracy(encoder, self.eval_data[name])
                                    for name, key in splits.items()},
            "retrieval_r1": retrieval_r1(encoder, self.eval_data["train"], self.sampler),
            "scenes": len(self.eval_data["train"]),
        }
        if "corrupted" in self.eval_data:
            def scores(name):
                data = self.eval_data[name]
                return score_frames(encoder, data.images, [str(c) for c in data.commands],
                                    self.config.region_sigma)

            valid = np.concatenate([scores(name) for name in splits if name != "heldout_combos"])
            metrics["presence"] = separation_report(valid, scores("corrupted"), false_refusal=0.01)
        return metrics

    def save_state(self) -> None:
        """Write a resumable checkpoint (atomic rename)."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "config": asdict(self.config),
            "history": self.history,
            "presence": self.presence.detach().clone(),
            "text_cache_layers": self.config.text_unlocked_layers,
        }
        path = self.out / "checkpoint" / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)

    def _load_state(self) -> None:
        path = self.out / "checkpoint" / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {path}")
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        self.history = list(state.get("history", []))
        if "presence" in state:
            with torch.no_grad():
                self.presence.copy_(state["presence"])

    def export(self, metrics: dict[str, Any] | None, wall_time_s: float) -> Path:
        """Write the trained model (LoRA merged) as an open_clip local-dir folder ``OUT/model``."""
        encoder = self.eval_encoder()
        metadata = {
            "trained_by": "vla-ros train-clip",
            "colour_space": self.config.colour_space,
            "config": {k: v for k, v in asdict(self.config).items() if k != "command"},
            "command": self.config.command,
            "steps": self.step,
            "wall_time_s": round(wall_time_s, 1),
            "metrics": metrics or {},
        }
        stored_text = None
        if self.pretrained_text:
            from vla_ros.grounding.text_tower import TEXT_TOWERS

            spec = TEXT_TOWERS[self.config.text_tower]
            metadata["text_tower"] = {"name": self.config.text_tower, "sha256": spec.sha256,
                                      "unlocked_layers": self.config.text_unlocked_layers}
            # the frozen transformer comes from its wheel; only trained layers are stored
            stored_text = {f"text.transformer.{name}" for name, p in self.model.text.transformer.named_parameters()
                           if p.requires_grad}
        slope, bias = self.presence.detach().tolist()
        metadata["presence_logit"] = {"slope": math.exp(slope), "bias": bias}
        out = self.out / "model"
        save_clip_checkpoint(encoder.model, out, self.loaded.model_cfg, self.loaded.preprocess_cfg, metadata,
                             dtype=torch.float16 if self.config.export_fp16 else torch.float32,
                             stored_text_keys=stored_text)
        return out

    # ------------------------------------------------------------------ loop
    def train(self, until_step: int | None = None) -> dict[str, Any] | None:
        """Train until ``config.steps``; evaluate, checkpoint, export; return the final metrics.

        ``until_step`` stops earlier (after a checkpoint, without exporting; returns None), as an
        interrupted run would; ``--resume`` continues it.
        """
        config = self.config
        stop = config.steps if until_step is None else min(until_step, config.steps)
        start = time.time()
        log = open(self.out / "metrics.jsonl", "a")
        metrics: dict[str, Any] | None = None
        bar = tqdm(total=config.steps, initial=self.step, desc="train-clip", unit="step", dynamic_ncols=True)
        running: dict[str, float] = {}
        try:
            while self.step < stop:
                self.model.train()
                indices = self.rng.choice(len(self.train_data), size=config.batch_size, replace=False)
                loss, parts = self.batch_loss(indices)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
                self.optimizer.step()
                self.scheduler.step()
                with torch.no_grad():  # open_clip clamps the temperature at 100
                    self.model.logit_scale.clamp_(0, math.log(100))
                self.step += 1
                running = {k: 0.9 * running.get(k, v) + 0.1 * v for k, v in parts.items()}
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in running.items()})
                if self.step % config.eval_every == 0 or self.step == config.steps:
                    metrics = self.evaluate()
                    record = {"step": self.step, "time_s": round(time.time() - start, 1),
                              **running, **metrics}
                    self.history.append(record)
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    zs = metrics["zero_shot_accuracy"]
                    bar.write(f"step {self.step}: zero-shot train {zs['train_combos']:.3f} "
                              f"heldout {zs['heldout_combos']:.3f}  dense heldout "
                              f"{metrics['dense_pick_accuracy']['heldout_combos']:.3f}  R@1 i2t "
                              f"{metrics['retrieval_r1']['image_to_text']:.3f}")
                if self.step % config.checkpoint_every == 0 or self.step in (config.steps, stop):
                    self.save_state()
        finally:
            bar.close()
            log.close()
        if self.step < config.steps:
            return None
        if metrics is None:
            metrics = self.evaluate()
        self.export(metrics, time.time() - start)
        return metrics


def command_line() -> list[str]:
    """The current process's command line, for the record."""
    if not sys.argv:
        return []
    program = Path(sys.argv[0]).name
    if program in ("cli.py", "__main__.py", "vla-ros"):  # python -m vla_ros.cli or the console script
        program = "vla-ros"
    return [program, *sys.argv[1:]]


def format_command(command: list[str]) -> str:
    """Shell-quoted command line."""
    return shlex.join(command)
