"""``Policy``: one frame + command + joint state -> joint position targets.

The evaluation command, the benchmarks and ``vla_node`` all act through this class, so what is
measured in simulation is what runs on the robot.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from vla_ros.grounding.checkpoint import sha256_file
from vla_ros.grounding.encoder import ClipEncoder, trim_padding
from vla_ros.grounding.lexicon import Lexicon
from vla_ros.grounding.refusal import Refusal, RefusalRule, unreadable
from vla_ros.keys import (
    FEAT_IMAGE_GLOBAL,
    FEAT_IMAGE_PATCHES,
    FEAT_REFERENCE_PATCHES,
    FEAT_SENTENCE,
    FEAT_SKILL_LOGITS,
    FEAT_TEXT,
    OBS_PROPRIO,
)
from vla_ros.policy.action_chunk import ActionChunk, ActionQueue
from vla_ros.policy.checkpoint import CheckpointError, load_network, read_config, resolve_clip_path
from vla_ros.policy.done_head import command_tasks, done_inputs
from vla_ros.policy.proprio import ProprioNormalizer
from vla_ros.policy.skill_reader import CommandSkillReader

BACKENDS = ("torch", "onnxruntime")


class CommandRefused(ValueError):
    """The policy will not act on a command: nothing in view matches it, or it cannot be read.

    ``refusal`` (:class:`vla_ros.grounding.refusal.Refusal`) says which and why; the caller holds still.
    """

    def __init__(self, refusal: Refusal):
        super().__init__(refusal.reason)
        self.refusal = refusal
ONNX_DIR = "onnx"  # beside policy.safetensors, written by `vla-ros export`


class Policy:
    """A trained policy with its frozen CLIP encoder.

    ``select_action`` returns absolute joint position targets (rad) by the rule shared with the
    simulator: ``q_target = clip(q + a * max_delta, lower, upper)`` with ``a`` the network's action
    in [-1, 1]. The safety gate runs after this, in the node.

    Policies trained with a reference frame (``reference_frame``) remember the CLIP patches of the
    first frame of an episode: the first frame after :meth:`reset` or after the command changes.

    On that same first frame the command is judged (:meth:`judge`): a command the text encoder cannot read,
    or one whose presence score is under the checkpoint's refusal threshold (``config["refusal"]``), is
    refused for the whole episode, and :meth:`select_action` raises :class:`CommandRefused`.
    """

    def __init__(self, network, config: dict, encoder: ClipEncoder, device: str = "cpu",
                 checkpoint: Path | None = None, onnx=None):
        self.network = network
        self.onnx = onnx  # OnnxGraphs when the backend is onnxruntime
        self.config = config
        self.encoder = encoder
        self.device = device
        self.checkpoint = checkpoint
        self.joint_names: tuple[str, ...] = tuple(config["joint_names"])
        action = config["action"]
        self.control_dt = float(action["control_dt"])
        self.max_delta = np.asarray(action["max_delta"], dtype=np.float64)
        self.lower = np.asarray(action["lower"], dtype=np.float64)
        self.upper = np.asarray(action["upper"], dtype=np.float64)
        self.normalizer = ProprioNormalizer.from_dict(config["proprio_normalization"])
        self.last_features: dict[str, torch.Tensor] | None = None
        # the fusion's map over patches (1, P) for the last action; eager torch only (ONNX and CUDA graphs: None)
        self.last_attention: torch.Tensor | None = None
        self.last_grounding: dict[str, float] | None = None  # per-object scores of the last frame (torch backend)
        self.grounding_labels = _object_labels()
        self.cuda_graph = None  # CudaGraphFrame replaying batch-1 torch inference on CUDA
        self.reference_frame = bool(config["network"].get("reference_frame", False))
        # a skill reader also reads the text tower's sentence embedding of the command
        self.skill_reader = bool(config["network"].get("skill_reader_width", 0))
        # ... or, a token reader, its logits of the command's token states (vla_ros.policy.skill_reader)
        token_reader = bool(config["network"].get("skill_reader_tokens", False))
        if onnx is not None and self.skill_reader and token_reader != onnx.has_skill_logits:
            raise CheckpointError(f"{checkpoint}: the ONNX export reads the command's "
                                  f"{'sentence embedding' if token_reader else 'token skill logits'}, the checkpoint "
                                  f"its {'token skill logits' if token_reader else 'sentence embedding'}: run "
                                  "`vla-ros export` again")
        self.command_skill_reader = None if onnx is not None else CommandSkillReader.of_network(network, encoder)
        if onnx is not None and self.skill_reader != onnx.has_sentence:
            raise CheckpointError(f"{checkpoint}: the ONNX export {'lacks' if self.skill_reader else 'has'} the "
                                  "skill reader's sentence input that the checkpoint "
                                  f"{'has' if self.skill_reader else 'lacks'}: run `vla-ros export` again")
        self._reference = None  # patches of the episode's first frame (tensor; numpy for ONNX Runtime)
        self._reference_command: str | None = None
        # a chunked policy's plan: the actions of its last decision still to run (vla_ros.policy.action_chunk)
        self.action_chunk = ActionChunk.of(config["network"])
        self._queue = ActionQueue(self.action_chunk, len(self.joint_names))
        self._plan_command: str | None = None
        self.refusal_rule = RefusalRule.from_dict(config.get("refusal"))
        self._judged_command: str | None = None
        self._refusal: Refusal | None = None
        self.last_presence: float | None = None  # presence score of the command on its episode's first frame
        # the score the refusal rule judged that command by (presence, or contrast for familiar words) and its bar
        self.last_refusal_score: float | None = None
        self.last_refusal_bar: float | None = None
        # the learned done signal (config["done"], torch backend): P(the command is fulfilled) of the last frame
        self.done_head, self.done_config = (None, None) if onnx is not None else \
            _load_done_head(checkpoint, config, network)
        self.last_done = False
        self.last_done_probability: float | None = None

    def enable_cuda_graph(self) -> None:
        """Capture the per-frame computation at batch 1 as a CUDA graph (torch backend on CUDA only)."""
        from vla_ros.policy.cuda_graph import CudaGraphFrame

        if self.onnx is not None:
            raise ValueError("CUDA graphs are for the torch backend; ONNX Runtime has its own graph execution")
        if self.skill_reader:
            raise RuntimeError("CUDA graphs do not capture a skill reader's sentence embedding yet; running eagerly")
        self.cuda_graph = None
        self.network.eval()
        self.cuda_graph = CudaGraphFrame(self.encoder.model.visual, self.network, self.encoder.image_size,
                                         self.encoder.embed_dim, 2 * self.num_joints, self.encoder.dtype,
                                         self.encoder.device)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", backend: str = "torch",
             clip_path: str | Path | None = None, precision: str = "fp32",
             cuda_graphs: bool | None = None, lexicon: bool = True) -> "Policy":
        """Load a checkpoint folder and the CLIP it was trained with (sha256 checked).

        ``cuda_graphs``: replay batch-1 torch inference from a CUDA graph; ``None`` = on wherever it
        applies (torch backend on a CUDA device; falls back to eager with a warning if capture fails),
        ``True`` = required (an error elsewhere). ``lexicon`` False reads commands as written even where the
        checkpoint records a lexicon (the ablation of :mod:`vla_ros.grounding.lexicon`).
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        path = Path(path)
        config = read_config(path)
        clip_dir = Path(clip_path) if clip_path else resolve_clip_path(path, config)
        weights = clip_dir / "open_clip_model.safetensors"
        if not weights.is_file():
            raise CheckpointError(f"CLIP checkpoint of the policy not found: {weights}")
        expected = config["clip"].get("sha256")
        if expected and sha256_file(weights) != expected:
            raise CheckpointError(f"CLIP checkpoint {clip_dir} does not match the one the policy was trained "
                                  f"with (sha256 {expected[:12]}...)")
        encoder = ClipEncoder.from_pretrained(clip_dir, device=device, precision=precision,
                                              patch_stitch=int(config["network"].get("patch_stitch", 1)))
        if (encoder.embed_dim, encoder.num_patches) != (config["clip"]["embed_dim"], config["clip"]["num_patches"]):
            raise CheckpointError("CLIP embedding/patch sizes do not match the policy checkpoint")
        if lexicon and config.get("lexicon") is not None:
            try:
                encoder.set_lexicon(Lexicon.from_dict(config["lexicon"]).open())
            except ValueError as error:
                raise CheckpointError(f"{path / 'config.json'}: {error}") from None
        network, config = load_network(path, config, device=device)
        onnx = OnnxGraphs.load(path / ONNX_DIR, device, fp16=precision == "fp16") if backend == "onnxruntime" else None
        policy = cls(network, config, encoder, device=device, checkpoint=path, onnx=onnx)
        on_cuda = backend == "torch" and encoder.device.type == "cuda"
        if cuda_graphs and not on_cuda:
            raise ValueError(f"cuda_graphs needs the torch backend on a CUDA device, got {backend} on {device}")
        if cuda_graphs or (cuda_graphs is None and on_cuda):
            try:
                policy.enable_cuda_graph()
            except RuntimeError as error:
                if cuda_graphs:
                    raise
                warnings.warn(f"CUDA graph capture failed, running eagerly: {error}", RuntimeWarning, stacklevel=2)
        return policy

    @property
    def has_done_signal(self) -> bool:
        """True when the checkpoint has a done head and it runs here (torch backend, without a CUDA graph)."""
        return self.done_head is not None and self.cuda_graph is None

    @property
    def num_joints(self) -> int:
        """Number of controlled joints."""
        return len(self.joint_names)

    def reset(self) -> None:
        """Start a new episode: forget the reference frame (if any) and the last grounding output."""
        self.last_features = None
        self.last_attention = None
        self._reference = None
        self._reference_command = None
        self._queue.clear()
        self._plan_command = None
        self._judged_command = None
        self._refusal = None
        self.last_presence = self.last_refusal_score = self.last_refusal_bar = None
        self.last_done, self.last_done_probability = False, None

    def reading(self, command: str) -> tuple[str, list]:
        """How the CLIP reads ``command``: (text, the lexicon's word readings); ``(command, [])`` without one."""
        lexicon = self.encoder.lexicon
        return (command, []) if lexicon is None else lexicon.normalise(command)

    @torch.no_grad()
    def judge(self, frame: np.ndarray, command) -> Refusal | None:
        """Whether to refuse ``command``; decided on the first frame of its episode and kept until it changes.

        Unreadable commands are always refused; without a refusal rule in the checkpoint every readable
        command is acted on.
        """
        if command is not None and command == self._judged_command:
            return self._refusal
        refusal = unreadable(self.encoder, command)
        self.last_presence = self.last_refusal_score = self.last_refusal_bar = None
        if refusal is None and self.refusal_rule is not None:
            rule = self.refusal_rule
            patches = self.encoder.encode_images(frame).patches
            text = self.encoder.encode_text([command])
            judged = rule.judged(self.encoder, patches, text)
            self.last_presence = float(judged["presence"][0])
            self.last_refusal_score, self.last_refusal_bar = float(judged["score"][0]), float(judged["bar"][0])
            refusal = rule.refusals(self.encoder, patches, text, [command])[0]
        self._judged_command = command if isinstance(command, str) else None
        self._refusal = refusal
        return refusal

    def _episode_reference(self, command: str, batch: int):
        """The stored reference patches, or None when this frame starts the episode (new command or batch)."""
        if command != self._reference_command:
            self._reference, self._reference_command = None, command
        if self._reference is not None and len(self._reference) != batch:
            self._reference = None
        return self._reference

    def check_joint_names(self, names) -> None:
        """Raise ``CheckpointError`` unless ``names`` (e.g. from the URDF) are the checkpoint's joints, in order."""
        if tuple(names) != self.joint_names:
            raise CheckpointError(f"joint set mismatch: the policy controls {list(self.joint_names)}, "
                                  f"the robot has {list(names)}")

    def check_joint_state(self, joint_state: np.ndarray) -> np.ndarray:
        """Validate a (2n,) joint state (positions then velocities); raise ``ValueError``."""
        state = np.asarray(joint_state, dtype=np.float64)
        if state.shape != (2 * self.num_joints,):
            raise ValueError(f"joint_state must have shape ({2 * self.num_joints},): {self.num_joints} "
                             f"positions then velocities; got {state.shape}")
        if not np.all(np.isfinite(state)):
            raise ValueError("joint_state contains NaN or Inf")
        return state

    @torch.no_grad()
    def normalized_action(self, frame: np.ndarray, command: str, joint_state: np.ndarray,
                          image_scale: float = 1.0, text_scale: float = 1.0) -> np.ndarray:
        """The network's deterministic action in [-1, 1]^n (the simulator's action space).

        A chunked policy (``network.action_chunk`` K > 1) decides on every E-th frame of a command
        (``chunk_execute``) and hands out its plan's actions one per frame in between, as it was trained; the
        frames in between are not encoded, and ``last_done`` and the grounding outputs are those of the decision.
        """
        if self.action_chunk.single:
            return self.decide(frame, command, joint_state, image_scale, text_scale)
        if np.ndim(frame) != 3:
            raise ValueError("a chunked policy acts on one frame at a time (H, W, 3)")
        if command != self._plan_command:  # a new command re-plans at once
            self._queue.clear()
            self._plan_command = command
        if self._queue.needs_plan:
            self._queue.plan(self.decide(frame, command, joint_state, image_scale, text_scale))
        else:
            self.check_joint_state(joint_state)
        return self._queue.pop()

    def discard_plan(self) -> None:
        """Forget a chunked policy's remaining planned actions: its next frame decides anew (a hold, a stale frame)."""
        self._queue.clear()

    @torch.no_grad()
    def decide(self, frame: np.ndarray, command: str, joint_state: np.ndarray,
               image_scale: float = 1.0, text_scale: float = 1.0) -> np.ndarray:
        """One decision of the network: its action in [-1, 1], (K * n,) for a chunk of K (n for one action)."""
        state = self.check_joint_state(joint_state)
        reference = self._episode_reference(command, 1 if np.ndim(frame) == 3 else len(frame))
        self.last_attention = None
        if self.onnx is not None:
            action, self._reference = self.onnx.action(self.encoder, frame, command, self.normalizer(state[None]),
                                                       image_scale, text_scale, reference=reference,
                                                       reference_frame=self.reference_frame)
            return action
        if self.cuda_graph is not None and np.ndim(frame) == 3 and image_scale == text_scale == 1.0:
            return self._graph_action(frame, command, state, reference)
        image = self.encoder.encode_images(frame)
        text = self.encoder.encode_text([command])
        patches = image.patches.to(self.device)
        obs = {
            FEAT_IMAGE_GLOBAL: image.global_embedding.to(self.device) * image_scale,
            FEAT_IMAGE_PATCHES: patches * image_scale,
            FEAT_TEXT: text.to(self.device) * text_scale,
            OBS_PROPRIO: torch.as_tensor(self.normalizer(state[None]), device=self.device),
        }
        if self.command_skill_reader is not None:
            obs[FEAT_SKILL_LOGITS] = self.command_skill_reader.logits([command]).to(self.device) * text_scale
        elif self.skill_reader:
            obs[FEAT_SENTENCE] = self.encoder.encode_sentences([command]).to(self.device) * text_scale
        if self.reference_frame:
            if reference is None:
                reference = self._reference = patches
            obs[FEAT_REFERENCE_PATCHES] = reference * image_scale
        self.last_features = obs
        self.last_grounding = self._object_scores(image.patches[0])
        # SB3's deterministic action (the Gaussian's mean), keeping the fusion's map on the way
        features, fused = self.network.features_extractor.extract(obs)
        self.last_attention = fused.attention
        if self.done_head is not None:
            inputs = done_inputs(self.network, features, fused, obs, self.done_config.inputs).cpu()
            probability = float(torch.sigmoid(self.done_head(inputs).double())[0])
            self.last_done_probability = probability
            # the threshold of the task the command reads as (skill-reader policies), else the one threshold
            threshold = float(self.done_config.thresholds(command_tasks(self.network, obs))[0])
            self.last_done = probability >= threshold
        action = self.network.action_net(self.network.mlp_extractor.forward_actor(features))
        return np.clip(action.float().cpu().numpy()[0], -1.0, 1.0)

    def _graph_action(self, frame: np.ndarray, command: str, state: np.ndarray, reference) -> np.ndarray:
        text = self.encoder.encode_text([command]).to(self.device, torch.float32)
        proprio = torch.as_tensor(self.normalizer(state[None]), device=self.device, dtype=torch.float32)
        action, image, patches = self.cuda_graph(self.encoder.preprocess(frame), text, proprio, reference)
        if self.reference_frame and reference is None:
            self._reference = patches
        self.last_features = {FEAT_IMAGE_GLOBAL: image, FEAT_IMAGE_PATCHES: patches, FEAT_TEXT: text,
                              OBS_PROPRIO: proprio}
        self.last_grounding = self._object_scores(patches[0])
        return action.float().cpu().numpy()[0].astype(np.float64)

    def _object_scores(self, patches: torch.Tensor) -> dict[str, float] | None:
        """Softmax over known object labels of each label's best-matching patch: what is on the table."""
        if not self.grounding_labels:
            return None
        labels = self.encoder.encode_text([f"a {label}" for label in self.grounding_labels])
        presence = (patches.to(labels.device) @ labels.T).max(dim=0).values  # (L,)
        probs = torch.softmax(presence * self.encoder.logit_scale, dim=0)
        return {label: round(float(p), 4) for label, p in zip(self.grounding_labels, probs)}

    def to_target(self, action: np.ndarray, joint_state: np.ndarray) -> np.ndarray:
        """Absolute joint targets for a normalised action at the given joint state."""
        q = np.asarray(joint_state, dtype=np.float64)[: self.num_joints]
        return np.clip(q + np.asarray(action, dtype=np.float64) * self.max_delta, self.lower, self.upper)

    def select_action(self, frame: np.ndarray, command: str, joint_state: np.ndarray) -> np.ndarray:
        """Joint position targets (rad, (n,)) for one camera frame, command and joint state.

        Raises :class:`CommandRefused` for a command :meth:`judge` refuses (the caller holds still).
        """
        state = self.check_joint_state(joint_state)
        refusal = self.judge(frame, command)
        if refusal is not None:
            raise CommandRefused(refusal)
        return self.to_target(self.normalized_action(frame, command, state), state)


def _object_labels() -> list[str]:
    """'colour shape' labels of the simulator's instruction set (empty if it cannot be read)."""
    try:
        from vla_ros.envs.instructions import load_instructions

        return [f"{colour} {shape}" for colour, shape in load_instructions().all_combos]
    except (OSError, ValueError):
        return []


class OnnxGraphs:
    """ONNX Runtime sessions of an exported policy (``vla-ros export``): per-frame graph + text encoder."""

    def __init__(self, frame_session, text_session, dtype):
        self.frame_session = frame_session
        self.text_session = text_session
        self.dtype = dtype
        self._text_cache: dict[str, dict[str, np.ndarray]] = {}
        # an export of a skill-reader policy: the text graph also gives the sentence embedding (or, a token reader's,
        # the skill logits) the frame graph reads
        inputs = {i.name for i in frame_session.get_inputs()}
        self.has_skill_logits = FEAT_SKILL_LOGITS in inputs
        self.has_sentence = FEAT_SENTENCE in inputs or self.has_skill_logits

    @classmethod
    def load(cls, folder: Path, device: str, fp16: bool, threads: int | None = None) -> "OnnxGraphs":
        """Open ``policy[_fp16].onnx`` and ``text_encoder[_fp16].onnx`` in ``folder``."""
        from vla_ros.policy.export import onnx_session

        suffix = "_fp16" if fp16 else ""
        frame_path, text_path = folder / f"policy{suffix}.onnx", folder / f"text_encoder{suffix}.onnx"
        if not frame_path.is_file() or not text_path.is_file():
            raise CheckpointError(f"no ONNX export in {folder}: run `vla-ros export --checkpoint {folder.parent}`")
        return cls(onnx_session(frame_path, device, fp16, threads), onnx_session(text_path, device, fp16, threads),
                   np.float16 if fp16 else np.float32)

    def text_features(self, encoder: ClipEncoder, command: str) -> dict[str, np.ndarray]:
        """The text graph's outputs for ``command`` by name (cached: commands repeat).

        ``text_embedding`` (1, D) and, from a skill-reader export, ``command_sentence`` (1, W).
        """
        if command not in self._text_cache:
            tokens = encoder.tokenize([command]).numpy().astype(np.int64)
            if encoder.pretrained_text:  # its graph takes any length
                tokens = trim_padding(tokens)
            names = [o.name for o in self.text_session.get_outputs()]
            outputs = self.text_session.run(names, {"tokens": tokens})
            self._text_cache[command] = {n: o.astype(self.dtype) for n, o in zip(names, outputs)}
        return self._text_cache[command]

    def text_embedding(self, encoder: ClipEncoder, command: str) -> np.ndarray:
        """(1, D) embedding of ``command`` (cached: commands repeat)."""
        return self.text_features(encoder, command)["text_embedding"]

    def action(self, encoder: ClipEncoder, frame: np.ndarray, command: str, proprio: np.ndarray,
               image_scale: float = 1.0, text_scale: float = 1.0, reference: np.ndarray | None = None,
               reference_frame: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Normalised action for one frame and, for reference-frame graphs, the reference patches used.

        ``reference`` None on a reference-frame graph: this frame starts the episode, so the graph runs
        twice, the second time with the frame's own patches as the reference. The ablation scales are
        not supported here.
        """
        from vla_ros.policy.export import run_frame_graph

        if image_scale != 1.0 or text_scale != 1.0:
            raise ValueError("ablations run on the torch backend only")
        pixels = encoder.preprocess(frame).float().numpy().astype(self.dtype)
        feeds = {"pixels": pixels, "proprio": proprio.astype(self.dtype), **self.text_features(encoder, command)}
        action, _, reference = run_frame_graph(self.frame_session, feeds, reference, reference_frame)
        return np.clip(action[0].astype(np.float64), -1.0, 1.0), reference


def _load_done_head(checkpoint: Path | None, config: dict, network):
    """(DoneHead, DoneConfig) from ``config["done"]`` and ``done_head.safetensors``, or (None, None) without one."""
    if not config.get("done") or checkpoint is None:
        return None, None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from vla_ros.policy.done_head import DONE_WEIGHTS_FILE, DoneConfig, DoneHead, done_input_dim, proprio_columns

    path = Path(checkpoint) / DONE_WEIGHTS_FILE
    try:
        done = DoneConfig.from_dict(config["done"])
    except ValueError as error:
        raise CheckpointError(f"{Path(checkpoint) / 'config.json'}: {error}") from None
    try:
        expected = done_input_dim(network, done.inputs)
    except ValueError as error:
        raise CheckpointError(f"{Path(checkpoint) / 'config.json'}: {error}") from None
    if done.features_dim != expected:
        raise CheckpointError(f"{Path(checkpoint) / 'config.json'}: done.features_dim {done.features_dim} is not "
                              f"the width of this network's done inputs ({done.inputs}), {expected}")
    if done.fingertip_proprio is not None and done.fingertip_proprio != proprio_columns(network, done.inputs):
        raise CheckpointError(f"{Path(checkpoint) / 'config.json'}: done.fingertip_proprio "
                              f"{list(done.fingertip_proprio)} are not the joint state's columns of this network's "
                              f"done inputs, {list(proprio_columns(network, done.inputs))}")
    head = DoneHead(done.features_dim, done.hidden, done.fingertip_proprio)
    try:
        head.load_state_dict(load_file(str(path)))
    except (OSError, SafetensorError, RuntimeError) as error:
        raise CheckpointError(f"{path}: cannot load the done head: {str(error)[:200]}") from None
    if any(not torch.all(torch.isfinite(p)) for p in head.parameters()):
        raise CheckpointError(f"{path}: the done head has NaN or Inf weights")
    return head.eval(), done
