"""PPO training of the policy on frozen CLIP features, with an imitation warm start.

Phases (each resumable; ``state.json`` in the run folder records what is done):
1. ``imitation``: behaviour cloning on scripted-expert demonstrations, then DAgger rounds.
2. ``ppo``: stable-baselines3 PPO from the imitation weights, checkpoints every ``checkpoint_every``
   steps, periodic held-out evaluation (``eval.csv``), CSV + TensorBoard logs.
3. ``export``: the final network as a safetensors checkpoint folder + learning-curve PNG.

The final policy is PPO-trained and sees only camera features, command features and proprioception.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecMonitor
from tqdm import tqdm

from vla_ros.grounding.checkpoint import sha256_file
from vla_ros.grounding.encoder import ClipEncoder
from vla_ros.keys import FEAT_IMAGE_PATCHES, FEAT_REFERENCE_PATCHES, FEAT_TEXT
from vla_ros.paths import share_path
from vla_ros.policy import imitation
from vla_ros.policy.action_chunk import ActionChunk
from vla_ros.policy.checkpoint import build_network, policy_kwargs, save_checkpoint
from vla_ros.policy.clip_vec_env import ClipFeatureVecEnv
from vla_ros.policy.envs import make_vec_env
from vla_ros.policy.evaluate import run_episodes
from vla_ros.policy.network_config import NetworkConfig
from vla_ros.policy.proprio import ProprioNormalizer
from vla_ros.policy.regularised_ppo import ImitationRegularisedPPO
from vla_ros.policy.skill_reader import CommandSkillReader
from vla_ros.robot_config import robot_name, robot_reference


@dataclass
class TrainConfig:
    """Arguments of ``vla-ros train`` (each is also a ``--flag``)."""

    task: str = "reach"
    """task to train: reach, push, or mixed (both, drawn per episode: one policy whose task comes from the
    command)"""
    robot: str = ""
    """robot file: a name in sim/robots (vla_arm, so101) or a path to your own; empty: vla_arm"""
    out: str = "runs/policy"
    """run folder: logs, resumable checkpoints, the exported checkpoint in out/final"""
    clip: str = ""
    """CLIP checkpoint folder (default: the shipped models/clip)"""
    fusion: str = "cross_attention"
    """fusion module: late, cross_attention, gated, region or region_map"""
    reference_frame: bool = False
    """also attend over the episode's first frame (where the objects were before the arm hid them);
    cross_attention, region and region_map only"""
    peak_window: float = 0.0
    """region_map only: also a mode-seeking position estimate, the map re-weighted by a Gaussian of this
    many patches around its maximum, so that a second, weaker match elsewhere cannot pull it (0: off)"""
    reference_prior: bool = False
    """region_map with a reference frame only: add the first frame's map (learned weight) to the current
    frame's, so that the estimate stays on the target while the arm covers it"""
    current_estimate: bool = False
    """region_map with reference_prior only: the fusion's MLP also reads the current frame's own estimate (without
    the prior), which follows an object the arm has pushed where the prior holds the estimate near its start"""
    prior_spread: float = 0.0
    """region_map with reference_prior only: the prior is the first frame's map spread by a Gaussian of this many
    patches (a soft max over the window), so it still bars jumps to other objects but lets a pushed object move
    within it (0: the map itself, which holds the estimate at the object's start)"""
    patch_stitch: int = 1
    """region_map only: run the CLIP image tower on s*s copies shifted by fractions of a patch and
    interleave their tokens into a grid s times as dense (shift-and-stitch); s*s times the image work"""
    map_weights: bool = True
    """region_map only: feed the MLP the map itself besides its position estimates; --no-map-weights
    gives it only the estimates, which look alike for seen and unseen colour-shape combos"""
    text_features: int = 0
    """region_map only: the MLP also reads a learned projection of the command's text embedding to this
    many numbers (push needs the commanded direction, which the map does not carry); 0: off"""
    command_film: bool = False
    """region_map only: the command's text embedding FiLM-modulates (scales and shifts) the MLP's hidden
    features, so the verb and a push's direction act on where the map puts the object"""
    skill_reader: bool = False
    """region_map with a pretrained text tower only: a frozen linear reader of the text tower's sentence embedding,
    fitted on training commands before imitation, names the skill (reach, push left / right / forward / back);
    its five probabilities FiLM-modulate the MLP's hidden features (vla_ros.policy.skill_reader)"""
    skill_reader_hard: bool = False
    """skill_reader only: FiLM reads the skill the reader names, one-hot, instead of its five probabilities"""
    skill_reader_filled: int = 0
    """skill_reader only: each training command also comes this many times in its frame with WordNet verbs put
    in (vla_ros.policy.skill_reader.filled_frame), so a new verb does not read as a direction; 0: off"""
    skill_reader_tokens: bool = False
    """skill_reader only: the reader scores each token state of the text tower, log-sum-exp pooled over the
    command's tokens, instead of the mean-pooled sentence (a new verb cannot outvote a direction word)"""
    fusion_proprio: bool = False
    """region_map only: the joint state enters the fusion's MLP beside the map's position estimates (as well as the
    actor), so its first layers can relate where the arm is to where the object is (push's approach)"""
    object_locator: bool = False
    """region_map with reference_frame, instead of reference_prior: a learned map of the
    commanded object replaces the current frame's CLIP map; fitted on the expert demonstrations' true object
    positions before the first policy fit, then frozen (vla_ros.grounding.object_locator)"""
    object_locator_epochs: int = 10
    """object_locator: epochs of its fit on the expert demonstrations"""
    object_locator_refit: bool = False
    """object_locator: fit it again before every DAgger round's policy fit, on all rounds' demonstrations so far,
    warm from its last fit, so it also learns the learner's own states (its arm resting on or pushing the object),
    which the expert's demonstrations, ending at success, lack; frozen in the policy fits and at run time"""
    action_chunk: int = 1
    """actions the actor predicts per decision (1: one per step); imitation labels each state with the expert's
    next action_chunk actions (vla_ros.policy.action_chunk)"""
    chunk_execute: int = 1
    """of a chunk, how many run before the policy decides again (receding horizon; at most action_chunk)"""
    seed: int = 0
    """seed of envs, network initialisation and sampling"""
    num_envs: int = 4
    """parallel simulator envs"""
    vec_env: str = "subproc"
    """subproc (one process per env), dummy (in-process) or ray (batches of envs on Ray actors, any node)"""
    ray_workers: int = 0
    """vec_env ray: actors hosting the envs (0: one per free CPU of the cluster, at most one per env)"""
    ray_address: str = ""
    """vec_env ray: join this Ray cluster (host:port or auto); empty: start a local Ray on this machine"""
    image_size: int = 64
    """camera resolution (square); the tiny CLIP's input size"""
    num_objects: int = 3
    """objects on the table"""
    bc_episodes: int = 200
    """expert episodes for behaviour cloning"""
    dagger_rounds: int = 2
    """DAgger rounds after behaviour cloning"""
    dagger_episodes: int = 100
    """episodes per DAgger round"""
    dagger_beta: float = 0.5
    """probability that the expert acts in the first DAgger round's steps; halved every round"""
    bc_value_detached: bool = False
    """imitation's value regression trains the critic's own layers only, not the fusion the actor shares with it:
    by the last DAgger rounds the returns' MSE is hundreds of times the actions' (docs/EXPERIMENT_LOG.md, 2026-12-07)"""
    bc_value_weight: float = 0.5
    """weight of imitation's value regression (the critic on the observed returns, PPO's warm start) beside the
    actions' (weight 1); 0 leaves the critic untrained until PPO"""
    bc_clip_apart: bool = False
    """imitation clips the value loss's gradient and the actions' apart (each to norm 1) before adding them, so the
    returns' large error cannot alone set the direction of the fusion both share (vla_ros.policy.imitation.fit)"""
    bc_expert_every_step: bool = False
    """a chunked policy's expert round labels every env step, not only the steps where a chunk is decided: the
    expert acts closed-loop, so its path is the same, with chunk_execute times the labelled states (the DAgger
    rounds still decide every chunk_execute steps, as the policy runs)"""
    bc_label_every_step: bool = False
    """a chunked policy's imitation labels every env step of every round: the states each chunk passes before its
    last step are labelled by the expert and kept beside the decisions' (vla_ros.policy.imitation.collect's
    passed_states); the policy still decides every chunk_execute steps. Not with takeover rounds"""
    bc_settle_steps: int = 0
    """imitation's episodes (expert and DAgger rounds) run this many env steps past their first success, labelled
    by the expert settling there (a reach descends onto the object's top, a push rises off the moved object), so
    the policy comes to rest inside the goal rather than at its edge (vla_ros.policy.envs.SettleAfterSuccess);
    evaluation still ends at the first success. 0: episodes end at it"""
    expert_reach_approach: str = "hover"
    """how the scripted expert that labels imitation comes down onto a reach target: ``hover`` (straight down once
    within 3 cm of it in the table plane, every recipe before) or ``cone`` (down a cone from 5 cm, the goal's height
    falling with the distance: no step in the labels where a learner's estimate wavers; vla_ros.envs.expert)"""
    bc_action_noise: float = 0.0
    """standard deviation of Gaussian noise on the actions the expert executes while collecting, in every round
    (labels stay clean: DART's recovery states, vla_ros.policy.imitation.collect)"""
    dagger_takeover_rounds: int = 0
    """the last this many DAgger rounds are takeover rounds instead: the learner acts alone for
    dagger_takeover_after decisions, then the expert drives to the episode's end and only its stretch is kept
    (vla_ros.policy.imitation.collect); the rounds before them keep beta's schedule"""
    dagger_takeover_after: tuple[int, int] = (8, 40)
    """takeover rounds: the learner's decisions before the expert takes over, drawn per episode from low..high"""
    dagger_takeover_repeat: int = 1
    """how many times each takeover round's samples count in the fits (a round keeps few: most of its episodes
    succeed or end before the expert takes over)"""
    bc_epochs: int = 15
    """epochs over the aggregated demonstrations per fit"""
    bc_batch_size: int = 256
    """behaviour-cloning minibatch size"""
    bc_lr: float = 1e-3
    """behaviour-cloning learning rate"""
    bc_lr_schedule: str = "constant"
    """each fit's learning rate: "constant" (bc_lr throughout) or "cosine" (annealed from bc_lr to 0 over the fit).
    Fresh 20-epoch fits of one run's demonstrations pushed 52.5-73.5% on validation scenes at a constant rate and
    66.0-73.5% annealed; 60-epoch annealed fits of two runs' data 81.0-87.0% (research.fit_seed_probe;
    docs/EXPERIMENT_LOG.md, 2026-12-07, twentieth session)"""
    ppo_steps: int = 50_000
    """PPO environment steps after the warm start (decisions of a chunked policy, each up to chunk_execute steps)"""
    ppo_imitation_weight: float = 0.0
    """0: plain PPO. Otherwise each PPO update is followed by ppo_imitation_batches minibatch steps of this weight
    times the imitation loss on the run's own demonstrations (OUT/demos_*.npz), so fine-tuning keeps what
    imitation taught (vla_ros.policy.regularised_ppo)"""
    ppo_imitation_batches: int = 8
    """imitation minibatches (of bc_batch_size) after each PPO update, with ppo_imitation_weight"""
    ppo_selection: str = "success"
    """which PPO iterate the checkpoint keeps, read on training combos of validation scenes: 'success' (the
    highest success rate) or 'lowest_task' (the highest of a mixed run's lower per-task success, so that gains on
    one task cannot pay for losses on another)"""
    n_steps: int = 128
    """PPO rollout length per env"""
    batch_size: int = 256
    """PPO minibatch size"""
    n_epochs: int = 4
    """PPO epochs per rollout"""
    learning_rate: float = 5e-5
    """PPO learning rate (small: it fine-tunes the warm-started network)"""
    gamma: float = 0.97
    """discount"""
    clip_range: float = 0.1
    """PPO clip range"""
    ent_coef: float = 0.0
    """entropy bonus"""
    log_std_init: float = -1.6
    """initial log standard deviation of the Gaussian actions after the warm start"""
    fusion_dim: int = 256
    """fusion output width"""
    hidden_dim: int = 256
    """fusion hidden width"""
    net_arch: tuple[int, ...] = (256, 256)
    """actor and critic MLP widths"""
    eval_every: int = 10_000
    """PPO steps between held-out evaluations"""
    eval_episodes: int = 30
    """episodes per held-out evaluation"""
    checkpoint_every: int = 10_000
    """PPO steps between resumable checkpoints"""
    device: str = "cpu"
    """torch device for training"""
    torch_threads: int = 1
    """torch threads in the main process (env workers use one)"""
    command: str = field(default="", repr=False)
    """the command line that started the run (recorded in the checkpoint)"""


PPO_SELECTIONS = ("success", "lowest_task")


def selection_score(result, selection: str) -> float:
    """The model-selection score of a validation :class:`~vla_ros.policy.evaluate.SplitResult`.

    ``lowest_task``: the lowest per-task success rate (a single-task run's own success rate).
    """
    if selection == "success" or not result.by_task:
        return result.success_rate
    return min(result.task_success_rate(task) for task in result.by_task)


def _network_config(cfg: TrainConfig, encoder: ClipEncoder) -> dict:
    return NetworkConfig(
        fusion=cfg.fusion, reference_frame=cfg.reference_frame, peak_window=float(cfg.peak_window),
        reference_prior=cfg.reference_prior, current_estimate=cfg.current_estimate,
        prior_spread=cfg.prior_spread, patch_stitch=cfg.patch_stitch,
        map_weights=cfg.map_weights,
        text_features=cfg.text_features, command_film=cfg.command_film,
        skill_reader_width=encoder.sentence_dim if cfg.skill_reader else 0,
        skill_reader_hard=cfg.skill_reader_hard, skill_reader_tokens=cfg.skill_reader_tokens,
        fusion_proprio=cfg.fusion_proprio,
        object_locator=cfg.object_locator,
        action_chunk=cfg.action_chunk, chunk_execute=cfg.chunk_execute, fusion_dim=cfg.fusion_dim,
        hidden_dim=cfg.hidden_dim, heads=4,
        grid_size=tuple(int(g) for g in encoder.grid_size), net_arch_pi=tuple(cfg.net_arch),
        net_arch_vf=tuple(cfg.net_arch), activation="tanh", log_std_init=float(cfg.log_std_init),
        source="vla-ros train").to_dict()


def checkpoint_config(cfg: TrainConfig, encoder: ClipEncoder, clip_dir: Path, robot, control_dt: float,
                      max_delta: np.ndarray, export_dir: Path) -> dict:
    """The ``config.json`` of a checkpoint trained with ``cfg``."""
    return {
        "task": cfg.task,
        "joint_names": list(robot.joint_names),
        "action": {
            "type": "joint_position_delta", "units": "rad", "control_dt": control_dt,
            "max_delta": [float(x) for x in max_delta], "lower": [float(x) for x in robot.lower],
            "upper": [float(x) for x in robot.upper],
            "rule": "q_target = clip(q + a * max_delta, lower, upper), a in [-1, 1]^n",
        },
        "proprio_normalization": ProprioNormalizer.from_robot(robot).to_dict(),
        "clip": {
            "path": os.path.relpath(clip_dir.resolve(), export_dir.resolve()),
            "sha256": sha256_file(clip_dir / "open_clip_model.safetensors"),
            "embed_dim": encoder.embed_dim, "num_patches": encoder.num_patches,
            "image_size": encoder.image_size,
            "colour_space": encoder.preprocessor.colour_space,  # what its image tower reads (rgb or vsh)
        },
        "network": _network_config(cfg, encoder),
        "robot": robot_name(cfg.robot),
        "env": {"image_size": cfg.image_size, "num_objects": cfg.num_objects,
                **({"robot": robot_reference(cfg.robot)} if cfg.robot else {})},
        "training": {"command": cfg.command, "config": asdict(cfg)},
        "metrics": {},
    }


class _Monitor(VecMonitor):
    """SB3's VecMonitor that also passes on the wrapped env's ``reset_infos`` (imitation reads expert labels there)."""

    def reset(self):
        obs = super().reset()
        self.reset_infos = self.venv.reset_infos
        return obs

    def step_wait(self):
        result = super().step_wait()
        self.reset_infos = self.venv.reset_infos
        return result


class _Progress(BaseCallback):
    """tqdm bar, resumable checkpoints and periodic held-out evaluation during PPO."""

    def __init__(self, run: "TrainingRun"):
        super().__init__()
        self.run = run
        self.bar = None
        self.next_eval = self.next_checkpoint = 0

    def _on_training_start(self) -> None:
        cfg, done = self.run.cfg, self.model.num_timesteps
        self.bar = tqdm(total=cfg.ppo_steps, initial=done, desc="PPO", unit="step")
        self.next_eval = done + cfg.eval_every
        self.next_checkpoint = done + cfg.checkpoint_every

    def _on_step(self) -> bool:
        steps = self.model.num_timesteps
        self.bar.update(steps - self.bar.n)
        if steps >= self.next_checkpoint:
            self.run.save_ppo(self.model)
            self.next_checkpoint += self.run.cfg.checkpoint_every
        if steps >= self.next_eval:
            self.run.evaluate(self.model.policy, phase="ppo", ppo_steps=steps)
            self.next_eval += self.run.cfg.eval_every
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


def demonstrations_path(run_dir: str | Path, round_index: int) -> Path:
    """Where a run folder keeps imitation round ``round_index``'s demonstrations (0: the expert's)."""
    return Path(run_dir) / f"demos_{round_index}.npz"


def run_demonstrations(run_dir: str | Path, rounds: int, needed_by: str) -> imitation.Demonstrations:
    """The demonstrations of a run folder's first ``rounds`` imitation rounds, aggregated in round order.

    With the run state's ``imitation_rounds_done`` they are what its last fit saw. ``needed_by`` names the caller in
    the error raised when any is missing.
    """
    run_dir = Path(run_dir)
    paths = [demonstrations_path(run_dir, k) for k in range(rounds)]
    missing = [p.name for p in paths if not p.exists()]
    if not rounds or missing:
        raise FileNotFoundError(f"{needed_by} needs the imitation phase's demonstrations in {run_dir}; "
                                f"missing: {missing or 'all (no imitation round recorded)'}")
    return imitation.Demonstrations.concatenate([imitation.Demonstrations.load(p) for p in paths])


class TrainingRun:
    """One resumable training run in ``cfg.out``."""

    def __init__(self, cfg: TrainConfig):
        if cfg.ppo_selection not in PPO_SELECTIONS:
            raise ValueError(f"ppo_selection must be one of {PPO_SELECTIONS}, got {cfg.ppo_selection!r}")
        if not 0 <= cfg.dagger_takeover_rounds <= cfg.dagger_rounds:
            raise ValueError(f"dagger_takeover_rounds must be in [0, dagger_rounds={cfg.dagger_rounds}], "
                             f"got {cfg.dagger_takeover_rounds}")
        if not (math.isfinite(cfg.bc_value_weight) and cfg.bc_value_weight >= 0):
            raise ValueError(f"bc_value_weight must be finite and >= 0, got {cfg.bc_value_weight}")
        if cfg.bc_settle_steps < 0:
            raise ValueError(f"bc_settle_steps must be >= 0, got {cfg.bc_settle_steps}")
        if cfg.skill_reader_hard and not cfg.skill_reader:
            raise ValueError("skill_reader_hard needs skill_reader")
        if cfg.skill_reader_tokens and not cfg.skill_reader:
            raise ValueError("skill_reader_tokens needs skill_reader")
        if cfg.skill_reader_filled < 0 or (cfg.skill_reader_filled and not cfg.skill_reader):
            raise ValueError(f"skill_reader_filled must be >= 0 and needs skill_reader, got {cfg.skill_reader_filled}")
        if cfg.bc_lr_schedule not in imitation.LR_SCHEDULES:
            raise ValueError(f"bc_lr_schedule must be one of {imitation.LR_SCHEDULES}, got {cfg.bc_lr_schedule!r}")
        from vla_ros.envs.expert import check_reach_approach

        try:
            check_reach_approach(cfg.expert_reach_approach)
        except ValueError as error:
            raise ValueError(f"expert_{error}") from None
        if cfg.bc_action_noise < 0:
            raise ValueError(f"bc_action_noise must be >= 0, got {cfg.bc_action_noise}")
        if cfg.dagger_takeover_repeat < 1:
            raise ValueError(f"dagger_takeover_repeat must be at least 1, got {cfg.dagger_takeover_repeat}")
        if cfg.bc_label_every_step and (cfg.chunk_execute < 2 or cfg.dagger_takeover_rounds
                                        or cfg.bc_expert_every_step):
            raise ValueError("bc_label_every_step labels the states inside executed chunks: it needs chunk_execute "
                             ">= 2, no takeover rounds, and replaces bc_expert_every_step")
        if cfg.object_locator_refit and not cfg.object_locator:
            raise ValueError("object_locator_refit refits the object locator: it needs object_locator")
        if cfg.bc_expert_every_step and cfg.chunk_execute < 2:
            raise ValueError("bc_expert_every_step needs chunk_execute >= 2 (a policy deciding every step labels "
                             "every step already)")
        after = tuple(cfg.dagger_takeover_after)
        if len(after) != 2 or not 0 <= after[0] <= after[1]:
            raise ValueError(f"dagger_takeover_after must be (low, high) with 0 <= low <= high, got {after}")
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(cfg.torch_threads)
        self.clip_dir = Path(cfg.clip) if cfg.clip else share_path("models", "clip")
        self.encoder = ClipEncoder.from_pretrained(self.clip_dir, device=cfg.device, patch_stitch=cfg.patch_stitch)
        self.command_skill_reader = None  # a token reader's policy: set once its network exists (imitation, ppo)
        self.state_path = self.out / "state.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {
            "phases_done": [], "imitation_env_steps": 0, "config": asdict(cfg)}
        self._check_resumed_config()
        self.env_kwargs = {"image_size": cfg.image_size, "num_objects": cfg.num_objects}
        self.action_chunk = ActionChunk(cfg.action_chunk, cfg.chunk_execute)
        if cfg.robot:  # a path is made absolute: evaluation may run elsewhere (another folder, a Ray worker)
            self.env_kwargs["robot"] = robot_reference(cfg.robot)
        probe = make_vec_env(cfg.task, 1, cfg.seed, vec_env="dummy", **self.env_kwargs)
        unwrapped = probe.envs[0].unwrapped
        self.robot, self.control_dt = unwrapped.robot, float(unwrapped.control_dt)
        self.max_delta = np.asarray(unwrapped.max_delta, dtype=np.float64)
        probe.close()
        self.normalizer = ProprioNormalizer.from_robot(self.robot)
        self.config = checkpoint_config(cfg, self.encoder, self.clip_dir, self.robot, self.control_dt,
                                        self.max_delta, self.out / "final")
        self._writer = None  # TensorBoard writer for evaluations and imitation losses, opened on first use
        # called with each evaluation row (validation scenes only) after it is written; `vla-ros sweep` reports
        # them to Ray Tune for early stopping
        self.on_evaluation = None

    # ------------------------------------------------------------------ helpers
    # settings a resumed run may change: how long it runs and how it reports, not what it learns
    RESUMABLE_CHANGES = ("ppo_steps", "eval_every", "eval_episodes", "checkpoint_every", "command", "torch_threads",
                         "vec_env", "num_envs", "ray_workers", "ray_address")

    def _check_resumed_config(self) -> None:
        old, new = (json.loads(json.dumps(c)) for c in (self.state["config"], asdict(self.cfg)))  # tuples -> lists
        defaults = json.loads(json.dumps(asdict(TrainConfig())))  # settings added after a run started
        changed = {k: (old.get(k, defaults[k]), v) for k, v in new.items()
                   if k not in self.RESUMABLE_CHANGES and old.get(k, defaults[k]) != v}
        if changed:
            raise ValueError(f"{self.out} holds a run with other settings {changed} (old, new); "
                             "use another --out or the same settings to resume")
        self.state["config"] = new

    def log_scalar(self, tag: str, value: float, step: int) -> None:
        """A scalar in the run's TensorBoard log (``OUT/logs``, beside SB3's PPO scalars)."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out / "logs"))
        self._writer.add_scalar(tag, float(value), int(step))
        self._writer.flush()

    def _steps_per_decision(self, round_index: int) -> int:
        """Env steps one labelled decision of imitation round ``round_index`` runs (at most)."""
        if round_index == 0 and self.cfg.bc_expert_every_step:
            return 1
        return self.cfg.chunk_execute

    def _save_state(self) -> None:
        self.state_path.write_text(json.dumps(self.state, indent=2) + "\n")

    def _venv(self, seed: int, expert_labels: bool = False, action_chunk: ActionChunk | None = None,
              label_every_step: bool = False, **env_kwargs) -> ClipFeatureVecEnv:
        kwargs = {**self.env_kwargs, **env_kwargs}
        raw = make_vec_env(self.cfg.task, self.cfg.num_envs, seed, vec_env=self.cfg.vec_env,
                           ray_workers=self.cfg.ray_workers, ray_address=self.cfg.ray_address,
                           expert_labels=expert_labels, action_chunk=action_chunk or self.action_chunk,
                           label_every_step=label_every_step, reach_approach=self.cfg.expert_reach_approach,
                           **kwargs)
        raw = _Monitor(raw)  # episode reward and length reach SB3's logger (rollout/ep_rew_mean, ep_len_mean)
        return ClipFeatureVecEnv(raw, self.encoder, self.normalizer, reference_frame=self.cfg.reference_frame,
                                 sentence=self.cfg.skill_reader and not self.cfg.skill_reader_tokens,
                                 skill_reader=self.command_skill_reader)

    def evaluate(self, network, phase: str, ppo_steps: int = 0) -> dict:
        """Held-out evaluation appended to ``eval.csv``."""
        row = {"phase": phase, "ppo_steps": ppo_steps,
               "env_steps": self.state["imitation_env_steps"] + ppo_steps * self.cfg.chunk_execute,
               "time": time.time()}
        for split in ("train", "heldout_combos"):
            result = run_episodes(network, self.encoder, self.normalizer, self.cfg.task,
                                  self.cfg.eval_episodes, seed=10_000 + self.cfg.seed, num_envs=self.cfg.num_envs,
                                  vec_env=self.cfg.vec_env, split=split, **self.env_kwargs)
            row[f"success_{split}"] = result.success_rate
            if len(result.by_task) > 1:  # a mixed run: each task apart
                for task in sorted(result.by_task):
                    row[f"success_{split}_{task}"] = result.task_success_rate(task)
            if split == "train":  # only training combos choose a PPO iterate (below)
                score = selection_score(result, self.cfg.ppo_selection)
        _append_row(self.out / "eval.csv", row)
        for key, value in row.items():
            if key.startswith("success_"):
                self.log_scalar(f"eval/{key}", value, row["env_steps"])
        tqdm.write(f"[eval] {phase} ppo_steps={ppo_steps} " +
                   " ".join(f"{k}={v:.2f}" for k, v in row.items() if k.startswith("success")))
        if phase == "ppo":
            # Model selection among PPO iterates reads only training combos on validation scenes: held-out
            # combos are what the evaluation measures, so they must not choose the iterate. Ties go to the
            # later iterate (more training), so a saturated score keeps the last one. The score is
            # ppo_selection's: the success rate, or a mixed run's lowest per-task success rate.
            if score >= self.state.get("best_ppo_train_success", -1.0):
                save_model(network, str(self.out / "ppo_best.safetensors"))
                self.state.update(best_ppo_train_success=score, best_ppo_steps=ppo_steps)
                self._save_state()
        if self.on_evaluation is not None:
            self.on_evaluation(row)
        return row

    # ------------------------------------------------------------------ phases
    def imitation(self):
        """Behaviour cloning + DAgger rounds; returns the warm-started network.

        Each round's demonstrations and the network fitted after it are saved in the run folder, so an
        interrupted run resumes at the next round (the RNG of later rounds is seeded per round).
        """
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # the initial weights follow from the seed, not from what ran before
        network = build_network(self.config)
        # a token reader reads the network's own buffers, so a fit or a load below is what the envs observe
        self.command_skill_reader = CommandSkillReader.of_network(network, self.encoder)
        weights = self.out / "imitation.safetensors"
        if "imitation" in self.state["phases_done"]:
            load_model(network, str(weights))
            return network.eval()
        rounds_done = int(self.state.get("imitation_rounds_done", 0))
        # rounds whose demonstrations were saved (a run cut off in a fit resumes with that round's samples)
        collected = int(self.state.get("imitation_rounds_collected", rounds_done))
        if cfg.skill_reader and not rounds_done:
            self._fit_skill_reader(network)
        datasets = [imitation.Demonstrations.load(self._demos_path(k)) for k in range(rounds_done)]
        costs = [d.cost * self._steps_per_decision(r) for r, d in enumerate(datasets)]  # env steps per round
        # without repeated rounds one aggregate replaces the rounds' parts: one copy of the data in memory, not two
        keep_rounds = cfg.dagger_takeover_rounds > 0 and cfg.dagger_takeover_repeat > 1
        if rounds_done:
            load_model(network, str(weights))
            tqdm.write(f"[imitation] resuming after round {rounds_done - 1} ({sum(map(len, datasets))} samples)")
            if not keep_rounds:
                datasets = [imitation.Demonstrations.concatenate(datasets)]
        passed = cfg.bc_label_every_step
        venv = self._venv(cfg.seed, expert_labels=True, label_every_step=passed, settle_steps=cfg.bc_settle_steps)
        try:
            for k in range(rounds_done, cfg.dagger_rounds + 1):
                rng = np.random.default_rng([cfg.seed, k])
                if k < collected and self._demos_path(k).is_file():
                    # collected before the run was cut off in this round's fit: the same samples again
                    data = imitation.Demonstrations.load(self._demos_path(k))
                    tqdm.write(f"[imitation] round {k}: its saved demonstrations ({len(data)} samples)")
                else:
                    data = self._collect_round(k, venv, network, rng)
                    data.save(self._demos_path(k))
                    self.state["imitation_rounds_collected"] = k + 1
                    self._save_state()
                costs.append(data.cost * self._steps_per_decision(k))
                round_success = data.successes / max(1, data.episodes)
                datasets.append(data)
                del data
                if keep_rounds:
                    repeats = [cfg.dagger_takeover_repeat if self._is_takeover_round(r) else 1 for r in range(k + 1)]
                    weighted = imitation.Demonstrations.concatenate(
                        [d for d, n in zip(datasets, repeats) for _ in range(n)])
                else:
                    weighted = imitation.Demonstrations.concatenate(datasets)
                    datasets = [weighted]
                if cfg.object_locator and (k == 0 or cfg.object_locator_refit):
                    self._fit_object_locator(network, weighted, k)
                losses = imitation.fit(network, weighted, cfg.bc_epochs,
                                       cfg.bc_batch_size, cfg.bc_lr, cfg.seed + k,
                                       value_weight=cfg.bc_value_weight, value_detached=cfg.bc_value_detached,
                                       clip_apart=cfg.bc_clip_apart, lr_schedule=cfg.bc_lr_schedule)
                tqdm.write(f"[imitation] fit after round {k}: " + ", ".join(f"{n} {v:.4f}" for n, v in losses.items()))
                for name, value in losses.items():
                    self.log_scalar(f"imitation/{name}", value, k)
                self.log_scalar("imitation/expert_success" if k == 0 else "imitation/dagger_success",
                                round_success, k)
                save_model(network, str(weights))
                self.state["imitation_rounds_done"] = k + 1
                # one sample per decision; a chunked policy's decision runs up to chunk_execute env steps (one in
                # an expert round that labels every step)
                self.state["imitation_env_steps"] = int(sum(costs))
                self._save_state()
        finally:
            venv.close()
        self.state["phases_done"].append("imitation")
        self._save_state()
        self.evaluate(network, phase="imitation")
        return network

    def _collect_round(self, k: int, venv, network, rng: np.random.Generator) -> imitation.Demonstrations:
        """Imitation round ``k``'s demonstrations: the expert's (k = 0) or a DAgger round's."""
        cfg = self.cfg
        passed = cfg.bc_label_every_step
        if k == 0 and cfg.bc_expert_every_step:
            # every step a decision: the expert's chunk labels each state it passes (one runs, the rest
            # are the labels); returns discounted per step so they match the decisions' per chunk
            every_step = self._venv(cfg.seed, expert_labels=True,
                                    action_chunk=ActionChunk(self.action_chunk.predicted, 1),
                                    settle_steps=cfg.bc_settle_steps)
            try:
                data = imitation.collect(every_step, cfg.bc_episodes, rng,
                                         gamma=cfg.gamma ** (1.0 / cfg.chunk_execute),
                                         desc="expert demos (every step)", action_noise=cfg.bc_action_noise)
            finally:
                every_step.close()
            tqdm.write(f"[imitation] expert: {data.successes}/{data.episodes} successes, {len(data)} samples "
                       f"(every step labelled)")
        elif k == 0:
            data = imitation.collect(venv, cfg.bc_episodes, rng, gamma=cfg.gamma, desc="expert demos",
                                    action_noise=cfg.bc_action_noise, passed_states=passed)
            tqdm.write(f"[imitation] expert: {data.successes}/{data.episodes} successes, {len(data)} samples")
        elif self._is_takeover_round(k):
            low, high = (int(v) for v in cfg.dagger_takeover_after)
            data = imitation.collect(venv, cfg.dagger_episodes, rng, network=network, gamma=cfg.gamma,
                                     desc=f"DAgger {k} (takeover)", takeover=(low, high),
                                     action_noise=cfg.bc_action_noise)
            tqdm.write(f"[imitation] DAgger {k}: {data.successes}/{data.episodes} successes "
                       f"(takeover after {low}-{high} decisions, {len(data)} expert samples kept)")
        else:
            beta = cfg.dagger_beta * 0.5 ** (k - 1)  # the learner takes over as it improves
            data = imitation.collect(venv, cfg.dagger_episodes, rng, network=network, beta=beta,
                                     gamma=cfg.gamma, desc=f"DAgger {k}", action_noise=cfg.bc_action_noise,
                                     passed_states=passed)
            tqdm.write(f"[imitation] DAgger {k}: {data.successes}/{data.episodes} successes "
                       f"(beta {beta:.3f})")
        return data

    def _is_takeover_round(self, k: int) -> bool:
        return k > self.cfg.dagger_rounds - self.cfg.dagger_takeover_rounds

    def _fit_object_locator(self, network, data: imitation.Demonstrations, round_index: int = 0) -> None:
        """Fit the object locator on ``data`` and freeze it.

        ``data`` is the expert's demonstrations in round 0; with object_locator_refit, every round's so far, and
        the fit starts from the last one's weights.
        """
        from vla_ros.grounding.object_locator import fit_object_locator

        fit = fit_object_locator(network.features_extractor.fusion, data.obs[FEAT_IMAGE_PATCHES],
                                 data.obs[FEAT_REFERENCE_PATCHES], data.obs[FEAT_TEXT], data.target_xy,
                                 epochs=self.cfg.object_locator_epochs, seed=self.cfg.seed + round_index)
        tqdm.write(f"[imitation] object locator, round {round_index}: held-out median error {fit.median_error:.3f} "
                   f"(map {fit.map_median_error:.3f}), jumps {fit.share_jumps:.3f} (map {fit.map_share_jumps:.3f})")
        self.state["object_locator"] = fit.as_dict()
        self.state.setdefault("object_locator_rounds", {})[str(round_index)] = fit.as_dict()
        self._save_state()

    def _fit_skill_reader(self, network) -> None:
        """Fit the skill reader on training commands only and freeze it into ``network``'s fusion buffers."""
        from vla_ros.envs.instructions import load_instructions
        from vla_ros.policy.skill_reader import fit_from_encoder

        fit = fit_from_encoder(self.encoder, load_instructions(), seed=self.cfg.seed,
                               filled_variants=self.cfg.skill_reader_filled, tokens=self.cfg.skill_reader_tokens)
        fusion = network.features_extractor.fusion
        with torch.no_grad():
            fusion.skill_weight.copy_(fit.weight)
            fusion.skill_bias.copy_(fit.bias)
        tqdm.write(f"[imitation] skill reader: {fit.train_accuracy:.3f} of {fit.num_commands} training commands")
        self.state["skill_reader"] = {"train_accuracy": fit.train_accuracy, "commands": fit.num_commands}
        self._save_state()

    def save_ppo(self, model: ImitationRegularisedPPO) -> None:
        """Resumable PPO state (SB3 zip; our own run files, never shipped)."""
        model.save(self.out / "ppo_latest.zip")
        self.state["ppo_steps"] = int(model.num_timesteps)
        self._save_state()

    def ppo(self, network):
        """Fine-tune with PPO; returns the trained SB3 policy network."""
        cfg = self.cfg
        if cfg.ppo_steps <= 0:
            return network
        self.command_skill_reader = CommandSkillReader.of_network(network, self.encoder)
        venv = self._venv(cfg.seed + 1000)
        latest = self.out / "ppo_latest.zip"
        try:
            if latest.exists():
                model = ImitationRegularisedPPO.load(latest, env=venv, device=cfg.device)
            else:
                # plain SB3 PPO unless ppo_imitation_weight attaches demonstrations below
                model = ImitationRegularisedPPO(
                    "MultiInputPolicy", venv, policy_kwargs=policy_kwargs(self.config["network"]),
                    n_steps=cfg.n_steps, batch_size=cfg.batch_size, n_epochs=cfg.n_epochs,
                    learning_rate=cfg.learning_rate, gamma=cfg.gamma, gae_lambda=0.95, clip_range=cfg.clip_range,
                    ent_coef=cfg.ent_coef, vf_coef=0.5, max_grad_norm=0.5, seed=cfg.seed, device=cfg.device, verbose=0)
                model.policy.load_state_dict(network.state_dict())
                with torch.no_grad():
                    model.policy.log_std.fill_(cfg.log_std_init)
            if cfg.ppo_imitation_weight > 0:
                model.attach_demonstrations(self._demonstrations(), cfg.ppo_imitation_weight,
                                            cfg.ppo_imitation_batches, cfg.bc_batch_size, cfg.seed + 2000)
            model.set_logger(configure(str(self.out / "logs"), ["csv", "tensorboard"]))
            remaining = cfg.ppo_steps - model.num_timesteps
            if remaining > 0:
                model.learn(remaining, callback=_Progress(self), reset_num_timesteps=False)
                self.evaluate(model.policy, phase="ppo", ppo_steps=model.num_timesteps)
            self.save_ppo(model)
        finally:
            venv.close()
        return model.policy.eval()

    def _demos_path(self, round_index: int) -> Path:
        """Where imitation round ``round_index`` (0: the expert's) keeps its demonstrations in the run folder."""
        return demonstrations_path(self.out, round_index)

    def _demonstrations(self) -> imitation.Demonstrations:
        """The imitation phase's aggregated demonstrations, from the run folder (for imitation-regularised PPO)."""
        data = run_demonstrations(self.out, int(self.state.get("imitation_rounds_done", 0)), "ppo_imitation_weight")
        tqdm.write(f"[ppo] regularised by imitation on {len(data)} demonstrated decisions "
                   f"(weight {self.cfg.ppo_imitation_weight}, {self.cfg.ppo_imitation_batches} batches per update)")
        return data

    def export(self, network) -> Path:
        """Write the final checkpoint folder and the learning curve."""
        cfg = self.cfg
        final = self.out / "final"
        config = dict(self.config)
        ppo_steps = int(self.state.get("ppo_steps", 0))
        config["metrics"] = {"env_steps_imitation": self.state["imitation_env_steps"],
                             "env_steps_ppo": ppo_steps * cfg.chunk_execute}
        if "skill_reader" in self.state:
            config["metrics"]["skill_reader_train_accuracy"] = self.state["skill_reader"]["train_accuracy"]
        if "object_locator" in self.state:
            config["metrics"]["object_locator_heldout"] = self.state["object_locator"]
        best = self.out / "ppo_best.safetensors"
        if best.exists():  # the PPO iterate with the best validation success on training combos
            load_model(network, str(best))
            config["metrics"]["selected_ppo_steps"] = self.state.get("best_ppo_steps")
            config["metrics"]["selected_validation_success_train"] = self.state.get("best_ppo_train_success")
            config["metrics"]["selected_by"] = cfg.ppo_selection
        eval_path = self.out / "eval.csv"
        if eval_path.exists():
            rows = list(csv.DictReader(eval_path.open()))
            config["metrics"]["last_eval"] = rows[-1] if rows else {}
            plot_learning_curve(rows, self.out / "learning_curve.png", title=f"{cfg.task} / {cfg.fusion}")
        save_checkpoint(final, network.cpu(), config)
        return final

    def run(self) -> Path:
        """All phases; returns the exported checkpoint folder."""
        network = self.imitation()
        network = self.ppo(network)
        return self.export(network)


def _append_row(path: Path, row: dict) -> None:
    """Append ``row`` to the CSV at ``path``; new columns rewrite it with them (earlier rows leave them empty)."""
    rows, columns = [], list(row)
    if path.exists():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = list(reader.fieldnames or []) + [k for k in row if k not in (reader.fieldnames or [])]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows + [row])


def plot_learning_curve(rows: list[dict], path: Path, title: str) -> None:
    """Success rate against environment steps, per evaluated split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in [k for k in rows[0] if k.startswith("success_")]:
        kept = [r for r in rows if r.get(key) not in (None, "")]  # a column added after the first rows
        ax.plot([int(float(r["env_steps"])) for r in kept], [float(r[key]) for r in kept], marker="o",
                label=key.removeprefix("success_"))
    ax.set_xlabel("environment steps (imitation + PPO)")
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def command_line() -> str:
    """The command line of this process, for the model card."""
    return " ".join(shlex.quote(a) for a in ["vla-ros", *sys.argv[1:]])
