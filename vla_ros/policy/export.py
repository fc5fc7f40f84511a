"""ONNX export of the per-frame inference graph and of the text encoder, with parity checks.

``policy.onnx`` (per frame): ``pixels`` (B, 3, S, S) normalised image, ``text_embedding`` (B, D),
``proprio`` (B, 2n) normalised -> ``action`` (B, n) in [-1, 1] and ``image_embedding`` (B, D). A policy
with a reference frame (``network.reference_frame``) also takes ``reference_patches`` (B, P, D), the
``patches`` output of the episode's first frame, and returns ``patches`` (B, P, D); on that first frame
the runtime runs the graph twice, the second time with its own patches as the reference. Image
tower + fusion + actor run in one graph; the text tower is a separate graph (``text_encoder.onnx``:
``tokens`` (B, L) int64 -> ``text_embedding`` (B, D)) because commands change rarely and are cached. A policy
with a skill reader (``network.skill_reader_width``) reads the command twice: ``text_encoder.onnx`` also returns
``command_sentence`` (B, W), the tower's sentence embedding, and ``policy.onnx`` takes it after ``proprio``; with a
token reader (``network.skill_reader_tokens``) that is ``command_skill_logits`` (B, 5) instead, the reader's
logits pooled over the tower's token states inside the text graph.
Resizing/normalising frames and proprioception stay outside (OpenCV / numpy), described in
``onnx_metadata.json`` beside the models. fp16 variants carry ``_fp16`` in their names.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vla_ros.grounding.encoder import vision_forward
from vla_ros.grounding.fusion import NUM_SKILLS
from vla_ros.grounding.text_pooling import embed_text_and_sentence, pool_projected, token_states
from vla_ros.keys import (
    FEAT_IMAGE_GLOBAL,
    FEAT_IMAGE_PATCHES,
    FEAT_REFERENCE_PATCHES,
    FEAT_SENTENCE,
    FEAT_SKILL_LOGITS,
    FEAT_TEXT,
    OBS_PROPRIO,
)

OPSET = 17
METADATA_FILE = "onnx_metadata.json"


def frame_forward(visual: nn.Module, network: nn.Module, pixels: torch.Tensor, text: torch.Tensor,
                  proprio: torch.Tensor, reference: torch.Tensor | None = None, sentence: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixels (B,3,S,S), text (B,D), proprio (B,2n)) -> (action in [-1,1] (B,n), image (B,D), patches (B,P,D)).

    ``reference`` (B,P,D): patches of the episode's first frame, for networks with a reference frame
    (``None``: this frame is the first, its own patches are the reference); other networks ignore it.
    ``sentence`` (B,W): the command's sentence embedding, for networks with a skill reader; (B,5) a token
    reader's skill logits for networks with ``skill_reader_tokens``.

    The per-frame computation the ONNX export traces and a CUDA graph captures; it equals the eager
    path of ``Policy.normalized_action``. Image features are normalised in the network's dtype (that of
    ``proprio``), so an fp16 image tower can feed an fp32 head. The deterministic action is the
    Gaussian's mean (``action_net`` on the actor latent), as SB3's ``predict(deterministic=True)``,
    built from tensor ops only.
    """
    pooled, tokens = vision_forward(visual, pixels, getattr(network.features_extractor, "patch_stitch", 1))
    image = F.normalize(pooled.to(proprio.dtype), dim=-1)
    patches = F.normalize(tokens.to(proprio.dtype), dim=-1)
    obs = {FEAT_IMAGE_GLOBAL: image, FEAT_IMAGE_PATCHES: patches, FEAT_TEXT: text, OBS_PROPRIO: proprio}
    if getattr(network.features_extractor, "reference_frame", False):
        obs[FEAT_REFERENCE_PATCHES] = patches if reference is None else reference.to(patches.dtype)
    token_reader = getattr(network.features_extractor, "skill_logits", False)
    if token_reader or getattr(network.features_extractor, "sentence_dim", 0):
        if sentence is None:
            raise ValueError("this network has a skill reader: pass the command's sentence embedding or skill logits")
        obs[FEAT_SKILL_LOGITS if token_reader else FEAT_SENTENCE] = sentence.to(proprio.dtype)
    features = network.features_extractor(obs)
    action = network.action_net(network.mlp_extractor.forward_actor(features))
    return torch.clamp(action, -1.0, 1.0), image, patches


class FrameToAction(nn.Module):
    """Image tower + fusion + actor mean (:func:`frame_forward`): the graph ``vla_node`` runs for every frame."""

    def __init__(self, visual: nn.Module, network: nn.Module):
        super().__init__()
        self.visual = visual
        self.network = network

    def forward(self, pixels: torch.Tensor, text_embedding: torch.Tensor, proprio: torch.Tensor):
        """(pixels, text, proprio) -> (action in [-1, 1], normalised image embedding)."""
        action, image, _ = frame_forward(self.visual, self.network, pixels, text_embedding, proprio)
        return action, image


class FrameToActionWithReference(FrameToAction):
    """:class:`FrameToAction` for reference-frame policies: takes the first frame's patches, returns this frame's."""

    def forward(self, pixels: torch.Tensor, text_embedding: torch.Tensor, proprio: torch.Tensor,
                reference_patches: torch.Tensor):
        """(pixels, text, proprio, reference) -> (action in [-1, 1], normalised image embedding, patches)."""
        return frame_forward(self.visual, self.network, pixels, text_embedding, proprio, reference_patches)


class FrameToActionWithSentence(nn.Module):
    """:class:`FrameToAction` for skill-reader policies: also takes the command's sentence embedding.

    Inputs (pixels, text, proprio, sentence[, reference]); outputs (action, image embedding[, patches]) as the
    graphs without a reader, with or without a reference frame.
    """

    def __init__(self, visual: nn.Module, network: nn.Module, reference_frame: bool):
        super().__init__()
        self.visual, self.network, self.reference_frame = visual, network, reference_frame
        # the input's name: a token reader's logits or the sentence embedding
        self.command_input = FEAT_SKILL_LOGITS if getattr(network.features_extractor, "skill_logits", False) \
            else FEAT_SENTENCE

    def forward(self, pixels, text_embedding, proprio, command_sentence, reference_patches=None):
        """(pixels, text, proprio, sentence[, reference]) -> (action, image embedding[, patches])."""
        action, image, patches = frame_forward(self.visual, self.network, pixels, text_embedding, proprio,
                                               reference_patches, command_sentence)
        return (action, image, patches) if self.reference_frame else (action, image)


class TextEncoder(nn.Module):
    """open_clip text tower with L2 normalisation."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.clip_model = clip_model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, D) normalised text embeddings."""
        return F.normalize(self.clip_model.encode_text(tokens), dim=-1)


class TextAndSentenceEncoder(nn.Module):
    """A pretrained (Hugging Face) text tower in one pass: the CLIP text embedding and the sentence embedding.

    :func:`vla_ros.grounding.text_pooling.embed_text_and_sentence`, which
    :meth:`vla_ros.grounding.encoder.ClipEncoder._embed` calls too.
    """

    def __init__(self, clip_model: nn.Module, pooling: str):
        super().__init__()
        self.text, self.pooling = clip_model.text, pooling

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) token ids -> (B, D) text embeddings, (B, W) sentence embeddings."""
        return embed_text_and_sentence(self.text, tokens, self.pooling)


class TextAndSkillEncoder(nn.Module):
    """A pretrained text tower and a token skill reader in one pass: the CLIP text embedding and the skill logits.

    The reader's weights (the network's ``skill_weight`` / ``skill_bias``) are constants of the graph; the logits
    are :func:`vla_ros.policy.skill_reader.pooled_skill_logits` of the tower's token states, as
    :class:`vla_ros.policy.skill_reader.CommandSkillReader` computes them.
    """

    def __init__(self, clip_model: nn.Module, pooling: str, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.text, self.pooling = clip_model.text, pooling
        self.register_buffer("skill_weight", weight.detach().float().clone())
        self.register_buffer("skill_bias", bias.detach().float().clone())

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) token ids -> (B, D) text embeddings, (B, 5) skill logits."""
        from vla_ros.policy.skill_reader import pooled_skill_logits

        states, mask = token_states(self.text, tokens)
        projected = pool_projected(self.text, states, mask, self.pooling)
        return F.normalize(projected.float(), dim=-1), pooled_skill_logits(states, mask, self.skill_weight,
                                                                           self.skill_bias)


@dataclass
class ExportedFiles:
    """Paths written by :func:`export_onnx`."""

    policy: Path
    text_encoder: Path
    metadata: Path


def _export(frame_graph, text_graph, example, policy_path: Path, text_path: Path, context_length: int,
            dynamic_length: bool = False) -> None:
    inputs, outputs = ["pixels", "text_embedding", "proprio"], ["action", "image_embedding"]
    if isinstance(frame_graph, FrameToActionWithSentence):
        inputs = inputs + [frame_graph.command_input]
    if isinstance(frame_graph, FrameToActionWithReference) or getattr(frame_graph, "reference_frame", False):
        inputs, outputs = inputs + ["reference_patches"], outputs + ["patches"]
    text_outputs = ["text_embedding"]
    if isinstance(text_graph, (TextAndSentenceEncoder, TextAndSkillEncoder)):
        text_outputs.append(FEAT_SENTENCE if isinstance(text_graph, TextAndSentenceEncoder) else FEAT_SKILL_LOGITS)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX export
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer warns about the fusion modules' shape checks, which are constant for a trace
            warnings.simplefilter("ignore")
            torch.onnx.export(frame_graph, example, str(policy_path), opset_version=OPSET, dynamo=False,
                              input_names=inputs, output_names=outputs,
                              dynamic_axes={name: {0: "batch"} for name in inputs + outputs})
            tokens = torch.zeros(1, context_length, dtype=torch.long)
            token_axes = {0: "batch"}
            if dynamic_length:  # a masked (Hugging Face) tower: commands run at their own length, not the context's
                tokens[0, :3] = 1  # padding after real tokens, so the traced graph keeps the attention mask
                token_axes[1] = "length"
            torch.onnx.export(text_graph, (tokens,), str(text_path), opset_version=OPSET, dynamo=False,
                              input_names=["tokens"], output_names=text_outputs,
                              dynamic_axes={"tokens": token_axes, **{name: {0: "batch"} for name in text_outputs}})
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def export_onnx(policy, out_dir: str | Path, fp16: bool = False) -> ExportedFiles:
    """Export a loaded :class:`~vla_ros.policy.policy.Policy` (torch backend) to ONNX files in ``out_dir``."""
    import copy

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_fp16" if fp16 else ""
    dtype = torch.float16 if fp16 else torch.float32
    clip_model = copy.deepcopy(policy.encoder.model).float().cpu().eval()
    network = copy.deepcopy(policy.network).float().cpu().eval()
    token_reader = getattr(policy, "command_skill_reader", None) is not None
    skill_reader = bool(getattr(policy, "skill_reader", False))
    if skill_reader:
        frame_graph = FrameToActionWithSentence(clip_model.visual, network, policy.reference_frame).to(dtype).eval()
    else:
        graph_class = FrameToActionWithReference if policy.reference_frame else FrameToAction
        frame_graph = graph_class(clip_model.visual, network).to(dtype).eval()
    if token_reader:  # fp32 at both precisions, as below
        fusion = network.features_extractor.fusion
        text_graph = TextAndSkillEncoder(copy.deepcopy(policy.encoder.model).float().cpu().eval(),
                                         policy.encoder.text_pooling, fusion.skill_weight, fusion.skill_bias).eval()
    elif skill_reader:  # fp32 at both precisions, as below
        text_graph = TextAndSentenceEncoder(copy.deepcopy(policy.encoder.model).float().cpu().eval(),
                                            policy.encoder.text_pooling).eval()
    elif policy.encoder.pretrained_text:
        # the Hugging Face text tower's LayerNorms do not export in fp16 (mixed types in one node); it runs once
        # per command, so its graph stays fp32 at both precisions and its output is cast where it is used
        text_graph = TextEncoder(copy.deepcopy(policy.encoder.model).float().cpu().eval()).eval()
    else:
        text_graph = TextEncoder(clip_model).to(dtype).eval()
    size, dim, n = policy.encoder.image_size, policy.encoder.embed_dim, policy.num_joints
    example = (torch.zeros(1, 3, size, size, dtype=dtype), torch.zeros(1, dim, dtype=dtype),
               torch.zeros(1, 2 * n, dtype=dtype))
    if skill_reader:
        example += (torch.zeros(1, NUM_SKILLS if token_reader else policy.encoder.sentence_dim, dtype=dtype),)
    if policy.reference_frame:
        example += (torch.zeros(1, policy.encoder.num_patches, dim, dtype=dtype),)
    policy_path = out / f"policy{suffix}.onnx"
    text_path = out / f"text_encoder{suffix}.onnx"
    _export(frame_graph, text_graph, example, policy_path, text_path, policy.encoder.context_length,
            dynamic_length=policy.encoder.pretrained_text)
    pre = policy.encoder.preprocessor
    std = (1.0 / (255.0 * pre._scale)).ravel()  # the preprocessor keeps (x/255 - mean)/std folded
    mean = -pre._shift.ravel() * std
    metadata = {
        "format": "vla_ros.onnx/1",
        "opset": OPSET,
        "image_size": size,
        "normalisation": {"mean": [float(x) for x in mean], "std": [float(x) for x in std],
                          "resize_mode": pre.resize_mode, "input_layout": f"NCHW {pre.colour_space.upper()} float",
                          # "vsh": vla_ros.grounding.preprocess.rgb_to_vsh, before the mean and std
                          "colour_space": pre.colour_space},
        "embed_dim": dim,
        "reference_frame": policy.reference_frame,
        # text_encoder also returns command_sentence (W), or with a token reader command_skill_logits (5),
        # which policy.onnx takes after proprio
        "skill_reader": skill_reader,
        "skill_reader_tokens": token_reader,
        "context_length": policy.encoder.context_length,
        # text_encoder takes tokens cut after the command's last token (any length up to context_length)
        "text_dynamic_length": bool(policy.encoder.pretrained_text),
        "text_encoder_precision": "fp32" if policy.encoder.pretrained_text else ("fp16" if fp16 else "fp32"),
        "joint_names": list(policy.joint_names),
        "proprio_normalization": policy.config["proprio_normalization"],
        "action": policy.config["action"],
        "clip_sha256": policy.config["clip"].get("sha256"),
        "files": {"fp32" if not fp16 else "fp16": {"policy": policy_path.name, "text_encoder": text_path.name}},
    }
    meta_path = out / METADATA_FILE
    if meta_path.exists():  # keep the other precision's entry
        old = json.loads(meta_path.read_text())
        metadata["files"] = {**old.get("files", {}), **metadata["files"]}
    meta_path.write_text(json.dumps(metadata, indent=2) + "\n")
    return ExportedFiles(policy_path, text_path, meta_path)


def run_frame_graph(session, feeds: dict[str, np.ndarray], reference: np.ndarray | None = None,
                    reference_frame: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Run ``policy.onnx``: (action, image embedding, reference patches used, or None without a reference frame).

    ``reference`` None on a reference-frame graph means these frames start their episodes: the graph
    runs once for their patches, then again with them as the reference.
    """
    if not reference_frame:
        action, image = session.run(["action", "image_embedding"], feeds)
        return action, image, None
    if reference is None:
        shape = next(i.shape for i in session.get_inputs() if i.name == "reference_patches")  # [batch, P, D]
        reference = session.run(["patches"], {**feeds, "reference_patches": np.zeros(
            (len(feeds["pixels"]), *shape[1:]), dtype=feeds["pixels"].dtype)})[0]
    action, image = session.run(["action", "image_embedding"], {**feeds, "reference_patches": reference})
    return action, image, reference


def onnx_session(path: str | Path, device: str = "cpu", fp16: bool = False, threads: int | None = None):
    """An ONNX Runtime session on the best available provider (TensorRT, CUDA, then CPU)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] if device.startswith("cuda") else []
    providers = [p for p in wanted if p in available] + ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    if fp16 and providers == ["CPUExecutionProvider"]:
        # ONNX Runtime 1.32's CPU graph optimiser crashes (SIGSEGV) on these fp16 graphs; unoptimised they run.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def parity_report(policy, files: ExportedFiles, frames: np.ndarray, commands: list[str], joint_states: np.ndarray,
                  fp16: bool = False) -> dict:
    """Max absolute differences ONNX Runtime vs PyTorch on embeddings and actions over sample inputs."""
    dtype = np.float16 if fp16 else np.float32
    frame_session = onnx_session(files.policy, fp16=fp16)
    text_session = onnx_session(files.text_encoder, fp16=fp16)
    pixels = policy.encoder.preprocess(frames).float().numpy()
    tokens = policy.encoder.tokenize(commands).numpy().astype(np.int64)
    text_ort = text_session.run(None, {"tokens": tokens})[0].astype(np.float32)
    text_torch = policy.encoder.encode_text(commands).float().numpy()
    proprio = policy.normalizer(joint_states)
    feeds = {"pixels": pixels.astype(dtype), "text_embedding": text_torch.astype(dtype),
             "proprio": proprio.astype(dtype)}
    skill_logits_diff = None
    if getattr(policy, "command_skill_reader", None) is not None:
        logits_torch = policy.command_skill_reader.logits(commands).float().numpy()
        feeds[FEAT_SKILL_LOGITS] = logits_torch.astype(dtype)
        logits_ort = text_session.run([FEAT_SKILL_LOGITS], {"tokens": tokens})[0].astype(np.float32)
        skill_logits_diff = float(np.abs(logits_ort - logits_torch).max())
    elif getattr(policy, "skill_reader", False):
        feeds[FEAT_SENTENCE] = policy.encoder.encode_sentences(commands).float().numpy().astype(dtype)
    # every sample is the first frame of its episode: its own patches are the reference
    action_ort, image_ort, _ = run_frame_graph(frame_session, feeds, reference_frame=policy.reference_frame)
    actions_torch = []
    for f, c, s in zip(frames, commands, joint_states):
        policy.reset()
        actions_torch.append(policy.decide(f, c, s))  # the whole chunk of a chunked policy
    actions_torch = np.stack(actions_torch)
    image_torch = policy.encoder.encode_images(frames).global_embedding.float().numpy()
    action_diff = np.abs(action_ort.astype(np.float32) - actions_torch)
    tolerance = 5e-2 if fp16 else 1e-3
    return {
        "precision": "fp16" if fp16 else "fp32",
        "samples": int(len(frames)),
        "max_abs_diff_image_embedding": float(np.abs(image_ort.astype(np.float32) - image_torch).max()),
        "max_abs_diff_text_embedding": float(np.abs(text_ort - text_torch).max()),
        **({"max_abs_diff_skill_logits": skill_logits_diff} if skill_logits_diff is not None else {}),
        "max_abs_diff_action": float(action_diff.max()),
        "tolerance_action": tolerance,
        "actions_match": bool(action_diff.max() <= tolerance),
        # same movement direction on every joint that the torch policy moves noticeably
        "same_direction": bool(np.all((np.sign(action_ort) == np.sign(actions_torch))
                                      | (np.abs(actions_torch) < tolerance))),
    }
