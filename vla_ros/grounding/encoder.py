"""``ClipEncoder``: batched CLIP image/text embeddings from numpy frames and command strings.

Images go straight from (B, H, W, 3) uint8 frames through OpenCV resize and one normalisation to the
vision tower; besides the global embedding the encoder returns the patch tokens projected into the
joint space (``ln_post`` then ``visual.proj``, as MaskCLIP does), so text can be compared with each
image region. Text embeddings are cached per string because commands repeat every control step.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

# open_clip pulls in torchvision -> torch._dynamo -> triton, whose C extension segfaults when first loaded
# after MuJoCo has created an EGL context; importing it here, early, makes that order impossible.
import open_clip  # noqa: F401
import torch
import torch.nn.functional as F

from vla_ros.grounding.checkpoint import LoadedClip, create_clip, load_clip
from vla_ros.grounding.preprocess import FrameGeometry, FramePreprocessor
from vla_ros.grounding.text_pooling import embed_text_sentence_and_states, text_pooling
from vla_ros.grounding.text_tower import is_pretrained_text

PRECISIONS = ("fp32", "fp16")
TOKEN_CACHE_SIZE = 256  # commands whose token states are kept (about 25 kB each for all-MiniLM-L6-v2)


@dataclass
class ImageFeatures:
    """CLIP image features of a batch.

    ``global_embedding``: (B, D) L2-normalised image embeddings.
    ``patches``: (B, P, D) L2-normalised patch tokens in the same joint space, P = grid_h * grid_w,
    row-major over the image (patch ``i`` covers grid row ``i // grid_w``, column ``i % grid_w``).
    """

    global_embedding: torch.Tensor
    patches: torch.Tensor
    grid_size: tuple[int, int]


def check_patch_support(visual: torch.nn.Module) -> None:
    """Raise unless ``visual`` is an open_clip ViT whose patch tokens can be projected."""
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise ValueError(f"patch tokens need an open_clip VisionTransformer image tower, got "
                         f"{type(visual).__name__}")
    if visual.attn_pool is not None:
        raise ValueError("patch tokens of attention-pooled ViTs (CoCa) are not in the joint space")
    if visual.proj is None:
        raise ValueError("the image tower has no output projection")


def check_patch_stitch(visual: torch.nn.Module, patch_stitch: int) -> None:
    """Raise ``ValueError`` unless ``patch_stitch`` views shift the ViT's patches by whole pixels, evenly."""
    patch = int(visual.patch_size[0])
    if patch_stitch != int(patch_stitch) or patch_stitch < 1:
        raise ValueError(f"patch_stitch must be a positive integer, got {patch_stitch!r}")
    if patch_stitch > 1 and patch % (2 * patch_stitch):
        raise ValueError(f"patch_stitch={patch_stitch} needs a patch size divisible by {2 * patch_stitch} "
                         f"(whole-pixel shifts centred on the patches); this ViT's patches are {patch} px")


def stitched_grid(visual: torch.nn.Module, patch_stitch: int = 1) -> tuple[int, int]:
    """Rows and columns of the token grid :func:`vision_forward` returns with ``patch_stitch``."""
    return tuple(int(g) * patch_stitch for g in visual.grid_size)


def _shifted_views(pixels: torch.Tensor, patch: int, patch_stitch: int) -> torch.Tensor:
    """(B, 3, S, S) -> (s*s*B, 3, S, S): view (sy, sx) shows the content at (y + dy[sy], x + dx[sx]) at (y, x).

    Offsets (k - (s - 1) / 2) * patch / s put the views' patch centres on a grid s times as dense, centred
    like the original one; borders repeat the edge pixels.
    """
    size = pixels.shape[-1]
    offsets = [int((2 * k - (patch_stitch - 1)) * patch // (2 * patch_stitch)) for k in range(patch_stitch)]
    margin = max(abs(o) for o in offsets)
    padded = F.pad(pixels, (margin, margin, margin, margin), mode="replicate")
    return torch.cat([padded[..., margin + dy: margin + dy + size, margin + dx: margin + dx + size]
                      for dy in offsets for dx in offsets])


def vision_forward(visual: torch.nn.Module, pixels: torch.Tensor,
                   patch_stitch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Run an open_clip ViT; return (pooled (B, D), patch tokens (B, P, D)), both projected, unnormalised.

    Differentiable (used for training too). Patch tokens go through the same ``ln_post`` and ``proj``
    as the pooled token, which puts them in the joint image-text space.

    ``patch_stitch`` s > 1 is shift-and-stitch (as for dense prediction with strided networks): the ViT
    runs on s*s copies shifted by fractions of a patch, in one batch, and their tokens interleave into a
    grid s times as dense each way (P = s*s times the ViT's patches, row-major over the dense grid). A
    small object then gets a token centred near it, not only one that straddles it. The pooled
    embedding is the mean over the copies.
    """
    if patch_stitch == 1:
        return _vision_tokens(visual, pixels)
    batch = pixels.shape[0]
    pooled, tokens = _vision_tokens(visual, _shifted_views(pixels, int(visual.patch_size[0]), patch_stitch))
    grid_h, grid_w = visual.grid_size
    tokens = tokens.reshape(patch_stitch, patch_stitch, batch, grid_h, grid_w, -1)
    tokens = tokens.permute(2, 3, 0, 4, 1, 5).reshape(batch, grid_h * grid_w * patch_stitch ** 2, -1)
    return pooled.reshape(patch_stitch ** 2, batch, -1).mean(dim=0), tokens


def _vision_tokens(visual: torch.nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = visual._embeds(pixels)
    x = visual.transformer(x)
    if visual.final_ln_after_pool:
        pooled, tokens = visual._global_pool(x)
        pooled, tokens = visual.ln_post(pooled), visual.ln_post(tokens)
    else:
        pooled, tokens = visual._global_pool(visual.ln_post(x))
    return pooled @ visual.proj, tokens @ visual.proj


def trim_padding(tokens):
    """Token ids (B, L), torch or numpy, cut after the longest row's last non-padding (id 0) token.

    Padding is masked out of a Hugging Face tower's attention and mean pooling, so its output does not change;
    a short command then costs a fraction of the full context.
    """
    return tokens[:, : max(1, int((tokens != 0).sum(1).max()))]


class ClipEncoder:
    """Frozen open_clip model wrapped for inference on numpy frames and command strings.

    Attributes: ``image_size`` (model input side, pixels), ``embed_dim`` (D), ``num_patches`` (P),
    ``grid_size`` (rows, cols of patches), ``context_length`` (max text tokens incl. start/end),
    ``weights_sha256`` (None for an in-memory model), ``device``, ``precision``, ``patch_stitch``.

    ``patch_stitch`` s > 1 returns patch tokens on a grid s times as dense each way (shift-and-stitch,
    :func:`vision_forward`; ``grid_size`` and ``num_patches`` are that grid's) for s*s times the image
    tower's work.
    """

    def __init__(self, loaded: LoadedClip, device: str | torch.device = "cpu", precision: str = "fp32",
                 text_cache_size: int = 4096, patch_stitch: int = 1):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available")
        self.precision = precision
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        model = loaded.model.to(self.device).eval()
        if precision == "fp16":
            model = model.half()  # LayerNorms in open_clip compute in fp32 internally, then cast back
        for param in model.parameters():
            param.requires_grad_(False)
        check_patch_support(model.visual)
        self.model = model
        self.tokenizer = loaded.tokenizer
        self.model_cfg = loaded.model_cfg
        self.preprocess_cfg = loaded.preprocess_cfg
        self.weights_path = loaded.weights_path
        self.weights_sha256 = loaded.weights_sha256
        self.metadata = loaded.metadata
        size = loaded.preprocess_cfg.get("size", model.visual.image_size)
        size = size[0] if isinstance(size, (tuple, list)) else size
        self.image_size = int(size)
        self.preprocessor = FramePreprocessor(
            self.image_size,
            mean=loaded.preprocess_cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)),
            std=loaded.preprocess_cfg.get("std", (0.26862954, 0.26130258, 0.27577711)),
            resize_mode=loaded.preprocess_cfg.get("resize_mode", "shortest"),
            fill_color=loaded.preprocess_cfg.get("fill_color", 0),
            colour_space=loaded.colour_space,
        )
        check_patch_stitch(model.visual, patch_stitch)
        self.patch_stitch = int(patch_stitch)
        self.grid_size = stitched_grid(model.visual, self.patch_stitch)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.embed_dim = int(model.visual.proj.shape[1])
        # a Hugging Face text tower reports its position table (512); commands use the configured context
        self.context_length = int(loaded.model_cfg.get("text_cfg", {}).get("context_length")
                                  or getattr(model, "context_length", 77))
        self.pretrained_text = is_pretrained_text(loaded.model_cfg)
        self.text_pooling = text_pooling(loaded.model_cfg)  # how a pretrained tower's token states are pooled
        # width of :meth:`encode_sentences` (0: a text tower trained from scratch has no sentence embedding)
        self.sentence_dim = int(model.text.config.hidden_size) if self.pretrained_text else 0
        self.lexicon = None  # a grounding.lexicon.Lexicon: words outside the CLIP's vocabulary read as known ones
        self.text_cache_size = int(text_cache_size)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._sentence_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        # a command's token states (its real tokens only), keyed by its reading: the pass that embeds a new command
        # keeps them for a token skill reader, which asks next (:meth:`encode_token_states`)
        self._token_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.token_cache_size = min(self.text_cache_size, TOKEN_CACHE_SIZE)
        self.cache_hits = 0
        self.cache_misses = 0

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, pretrained: str | Path | None = None,
                        device: str | torch.device = "cpu", precision: str = "fp32",
                        text_cache_size: int = 4096, patch_stitch: int = 1) -> "ClipEncoder":
        """Load from a checkpoint folder, or an open_clip model name + ``pretrained`` local weights file.

        Nothing is downloaded: hub names and pretrained tags raise ``ValueError``; missing folders or
        files raise ``FileNotFoundError``.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        loaded = load_clip(name_or_dir, pretrained, device="cpu", precision="fp32")
        return cls(loaded, device=device, precision=precision, text_cache_size=text_cache_size,
                   patch_stitch=patch_stitch)

    @classmethod
    def random_init(cls, model_cfg: dict[str, Any] | str = "vla-tiny-clip", seed: int = 0,
                    **kwargs) -> "ClipEncoder":
        """An untrained encoder of the given architecture (tests, benchmarks)."""
        return cls(create_clip(model_cfg, seed=seed), **kwargs)

    # ---------------------------------------------------------------- images
    def frame_geometry(self, height: int, width: int) -> FrameGeometry:
        """Source-frame to model-input pixel mapping (to place object pixels on the patch grid)."""
        return self.preprocessor.geometry(height, width)

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) or (H, W, 3) uint8 RGB -> normalised (B, 3, S, S) on the encoder's device/dtype."""
        return self.preprocessor(frames, device=self.device, dtype=self.dtype)

    @torch.inference_mode()
    def encode_images(self, frames: np.ndarray) -> ImageFeatures:
        """Embed frames: global (B, D) and patches (B, P, D), both L2-normalised, float32 tensors."""
        pixels = self.preprocess(frames)
        pooled, tokens = vision_forward(self.model.visual, pixels, self.patch_stitch)
        return ImageFeatures(
            global_embedding=F.normalize(pooled.float(), dim=-1),
            patches=F.normalize(tokens.float(), dim=-1),
            grid_size=self.grid_size,
        )

    # ---------------------------------------------------------------- text
    def check_text(self, text: str) -> None:
        """Raise ``TypeError``/``ValueError`` for non-strings, empty text, or text over the context."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text.strip():
            raise ValueError("text must not be empty")
        # tokenise with room to spare so over-long text is detected instead of silently truncated
        tokens = self.tokenizer([text], context_length=self.context_length + 64)
        count = int((tokens != 0).sum())
        if count > self.context_length:
            raise ValueError(f"text is {count} tokens (with start/end), over the model's context of "
                             f"{self.context_length}: {text[:60]!r}")

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Validate and tokenise ``texts`` to (B, context_length) token ids, read through the lexicon if any."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        for text in texts:
            self.check_text(text)
        return self.tokenizer([self.reading(t) for t in texts], context_length=self.context_length)

    def reading(self, text: str) -> str:
        """``text`` as the CLIP reads it: words outside its vocabulary replaced by the lexicon's readings."""
        return text if self.lexicon is None else self.lexicon.normalise(text)[0]

    def set_lexicon(self, lexicon) -> None:
        """Read commands through ``lexicon`` (None: as written); cached embeddings are dropped."""
        self.lexicon = lexicon
        self.clear_text_cache()

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed strings to (B, D) L2-normalised float32; repeated strings come from the cache."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        if len(texts) == 0:
            raise ValueError("texts must not be empty")
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        for text in texts:
            if text in self._text_cache:
                self.cache_hits += 1
                self._text_cache.move_to_end(text)
            else:
                self.cache_misses += 1
        if missing:
            for text, emb in zip(missing, self._embed(missing)):
                self._remember(self._text_cache, text, emb)
        return torch.stack([self._text_cache[t] if t in self._text_cache else self._encode_uncached(t)
                            for t in texts])

    @torch.inference_mode()
    def encode_sentences(self, texts: Sequence[str]) -> torch.Tensor:
        """The pretrained text tower's own sentence embeddings (B, width), L2-normalised float32.

        The mean of the tower's last hidden states over each command's tokens, before the CLIP's projection
        (all-MiniLM-L6-v2's sentence-transformers pooling). The refusal text gate reads it
        (:mod:`vla_ros.grounding.text_gate`); a CLIP with a text tower trained from scratch has none.
        """
        if not self.pretrained_text:
            raise ValueError("sentence embeddings need a pretrained (Hugging Face) text tower")
        texts = list(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self._sentence_cache]
        if missing:
            self._embed(missing)  # caches their sentence embeddings
        found = [self._sentence_cache.get(t) for t in texts]
        if any(f is None for f in found):  # more distinct strings in one call than the cache keeps
            return torch.cat([self.encode_sentences([t]) for t in texts])
        return torch.stack(found)

    @torch.inference_mode()
    def encode_token_states(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The pretrained text tower's last hidden states of each command's tokens, read through the lexicon.

        Returns (states (B, L, width) float32, mask (B, L) bool of the real tokens, [CLS] and [SEP] included); L
        is the longest command's token count; past a command's own tokens its row is zeros. A token skill reader
        scores each state (:func:`vla_ros.policy.skill_reader.token_skill_logits`). Cached by reading, with the
        embedding's pass: a command embedded first (:meth:`encode_text`) costs no second pass here.
        """
        if not self.pretrained_text:
            raise ValueError("token states need a pretrained (Hugging Face) text tower")
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        readings = [self.reading(t) for t in texts]
        found = {r: self._token_cache[r] for r in readings if r in self._token_cache}
        missing = [r for r in dict.fromkeys(readings) if r not in found]
        if missing:  # the lexicon leaves a reading unchanged, so the pass reads what the keys say
            found.update(zip(missing, self._embed(missing, keep_tokens=True)[1]))
        length = max(len(found[r]) for r in readings)
        states = torch.zeros(len(readings), length, found[readings[0]].shape[-1], device=self.device)
        mask = torch.zeros(len(readings), length, dtype=torch.bool, device=self.device)
        for row, reading in enumerate(readings):
            real = found[reading]
            states[row, :len(real)], mask[row, :len(real)] = real, True
        return states, mask

    def _embed(self, texts: list[str], keep_tokens: bool = False):
        """Normalised joint-space embeddings (B, D) of ``texts``.

        With a pretrained tower, the one transformer pass also gives the texts' sentence embeddings and token
        states, which are cached for :meth:`encode_sentences` and :meth:`encode_token_states` (a new command's
        refusal reads the first two, a token skill reader the states). ``keep_tokens``: also return each text's
        token states (a list of (real tokens, width) float32).
        """
        tokens = self.tokenize(texts).to(self.device)
        if not self.pretrained_text:
            return F.normalize(self.model.encode_text(tokens).float(), dim=-1)
        embeddings, sentences, states, mask = embed_text_sentence_and_states(self.model.text, trim_padding(tokens),
                                                                             self.text_pooling)
        real = [row[keep.bool()].float() for row, keep in zip(states, mask)]
        for string, sentence, token_states in zip(texts, sentences.cpu(), real):
            self._remember(self._sentence_cache, string, sentence)
            self._remember(self._token_cache, self.reading(string), token_states, self.token_cache_size)
        return (embeddings, real) if keep_tokens else embeddings

    def _remember(self, cache: OrderedDict, text: str, value: torch.Tensor, size: int | None = None) -> None:
        cache[text] = value
        cache.move_to_end(text)
        if len(cache) > (self.text_cache_size if size is None else size):
            cache.popitem(last=False)

    def _encode_uncached(self, text: str) -> torch.Tensor:
        # only reached when one call holds more distinct strings than the cache can keep
        return self._embed([text])[0]

    def clear_text_cache(self) -> None:
        """Forget cached text embeddings and reset the hit/miss counters."""
        self._text_cache.clear()
        self._sentence_cache.clear()
        self._token_cache.clear()
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def logit_scale(self) -> float:
        """The learned CLIP temperature inverse (exp of ``logit_scale``), e.g. 100 for OpenAI CLIP."""
        return float(self.model.logit_scale.exp())
