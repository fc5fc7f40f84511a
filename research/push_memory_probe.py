"""Memory for push: does frame history or an action chunk let a learner imitate the expert on its own states.

Usage: ``python -m research.push_memory_probe [--variants none history2 history4 chunk8x4 history2_chunk8x4]
[--bc-episodes 400] [--dagger-rounds 3] [--dagger-episodes 200] [--eval-episodes 200] [--estimate-noise 0.0]
[--layout flat] [--value-weight 0] [--grad-clip 0] [--separate-clip] [--fresh-optimizer] [--label-decisions]
[--bc-every-step] [--dagger-execute E] [--json FILE]``

The CLIP policy's actor reads, besides the command, what its fusion estimates of the commanded object (its image
position now and in the episode's first frame) and the arm's joint positions and velocities. This probe gives a
small MLP exactly those inputs, from simulator state instead of CLIP (no rendering: the answer is about memory,
not perception), plus the push direction as one-hot, and trains it like the policy's warm start: behaviour
cloning on expert episodes, then DAgger rounds (expert with probability 0.5 / 0.25 / 0.125 per decision,
labelling every visited state), then scores it alone on held-apart scenes. Variants:

| variant | input | output | executed |
|---|---|---|---|
| ``none`` | this step's inputs | one action | every step (memoryless, as the policy) |
| ``historyH`` | this and the H-1 steps before (an episode's first repeated) | one action | every step |
| ``chunkKxE`` | this step's inputs | the expert's next K actions | the first E, then re-plan |
| ``historyH_chunkKxE`` | both | | |

A chunk's labels come from rolling the expert K steps from a copy of the simulator state (receding horizon, as
Diffusion Policy executes 8 of 16).

``--layout policy`` gives the learner the CLIP policy's shape (proprioception joins after two layers).
``--estimate-noise`` adds Gaussian noise (image half-widths) to the position estimates, as a CLIP map's error;
``--estimates-from CHECKPOINT`` takes them from a reference-frame ``region_map`` policy's fusion on rendered frames
(its CLIP and its trained map), so the estimates carry the map's real errors (the arm covering the object);
``--prior-weight W`` adds W times the first frame's map to the current one first (``reference_prior``).
The fit can follow the CLIP policy's imitation (``vla_ros.policy.imitation.fit``) piece by piece: a critic
regressing the discounted returns through the shared layers (``--value-weight 0.5``), the gradient clipped to
norm 1 (``--grad-clip 1``; ``--separate-clip`` clips the critic's apart), a new Adam per fit
(``--fresh-optimizer``), and labels only where a chunk is decided (``--label-decisions``; ``--bc-every-step``
keeps every step in the expert's episodes, ``--dagger-execute 1`` lets DAgger's learner decide every step).
Reported per variant: the DAgger rounds' success (expert-mixed), action MSE on each round's new (learner-visited)
states before fitting them, and the learner alone on ``--eval-episodes`` scenes from seed 7,000,000 (success,
pushes the wrong way). Push only, training split; seeds apart from training and evaluation scenes of the policy.
"""

from __future__ import annotations

import argparse
import importlib
import math
import re
import time
from dataclasses import dataclass

import numpy as np

PROBE_SEED = 7_000_000
DIRECTION_ORDER = ("left", "right", "forward", "back")
PUSH_STEPS = 100
DAGGER_BETAS = (0.5, 0.25, 0.125)


@dataclass(frozen=True)
class Variant:
    """Memory of one learner: ``history`` steps of input, ``chunk`` actions predicted, ``execute`` of them run."""

    name: str
    history: int = 1
    chunk: int = 1
    execute: int = 1

    @classmethod
    def parse(cls, name: str) -> "Variant":
        """``none``, ``history2``, ``chunk8x4``, ``history2_chunk8x4``; ``ValueError`` otherwise."""
        match = re.fullmatch(r"(?:none|history(\d+))?(?:_?chunk(\d+)x(\d+))?", name)
        if not name or match is None:
            raise ValueError(f"unknown variant {name!r}: expected none, historyH, chunkKxE or historyH_chunkKxE")
        history, chunk, execute = (int(g) if g else 1 for g in match.groups())
        if history < 1 or chunk < 1 or not 1 <= execute <= chunk:
            raise ValueError(f"variant {name!r}: need history >= 1 and 1 <= executed <= chunk")
        return cls(name, history, chunk, execute)


def _mujoco():
    """The ``mujoco`` module, imported after ``vla_ros.envs`` has picked the offscreen GL backend."""
    import vla_ros.envs  # noqa: F401

    return importlib.import_module("mujoco")


class PushScenes:
    """One push env (rendered for ``estimates_from`` only), its expert, and the learner's inputs."""

    def __init__(self, estimate_noise: float = 0.0, estimates_from: str | None = None, prior_weight: float = 0.0,
                 clip: str | None = None):
        from vla_ros.envs.expert import ScriptedExpert
        from vla_ros.envs.tabletop import TabletopEnv
        from vla_ros.policy.proprio import ProprioNormalizer

        _mujoco()  # the GL backend before any renderer

        self.policy = None
        if estimates_from:  # a reference-frame region_map checkpoint whose fusion gives the estimates
            from vla_ros.policy.policy import Policy

            self.policy = Policy.load(estimates_from)
            self.fusion = self.policy.network.features_extractor.fusion
            if not getattr(self.fusion, "reference_frame", False):
                raise ValueError(f"{estimates_from}: the estimates need a reference-frame region_map policy")
            if clip:  # another CLIP's map read with this checkpoint's fusion (its temperature and prior rule)
                from vla_ros.grounding.encoder import ClipEncoder

                self.policy.encoder = ClipEncoder.from_pretrained(
                    clip, patch_stitch=int(self.policy.config["network"].get("patch_stitch", 1)))
        elif clip:
            raise ValueError("clip replaces the CLIP of estimates_from: give both")
        self.env = TabletopEnv(task="push", render_observation=self.policy is not None)
        self.expert = ScriptedExpert(self.env)
        self.normalise = ProprioNormalizer.from_robot(self.env.robot)
        self.noise = estimate_noise
        self.prior_weight = float(prior_weight)
        self.rng = np.random.default_rng(0)
        self.model, self.data = self.env.model, self.env.data

    def reset(self, seed: int) -> tuple[np.ndarray, dict]:
        """New scene; returns (inputs, info)."""
        self.rng = np.random.default_rng(seed)
        obs, info = self.env.reset(seed=seed)
        self._reference_patches = None
        self._start_xy = self._target_xy() if self.policy is None else None
        return self._inputs(obs, info), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, dict, bool, float]:
        """Act; returns (inputs, info, episode over, reward)."""
        obs, reward, terminated, _, info = self.env.step(action)
        return self._inputs(obs, info), info, bool(terminated) or self.env._steps >= PUSH_STEPS, float(reward)

    def expert_chunk(self, info: dict, length: int) -> np.ndarray:
        """The expert's next ``length`` actions from the current state, as the policy's labels are made.

        :func:`vla_ros.policy.action_chunk.expert_chunk` rolls a copy of the whole simulator state ahead and
        restores it (the probe's own rollout restored only the integration state, 2e-3 off the expert's actions).
        """
        from vla_ros.policy.action_chunk import expert_chunk

        return expert_chunk(self.env, self.expert, info, length)

    def _target_xy(self) -> np.ndarray:
        size = self.env.image_size
        pixel = self.env.object_pixels()[self.env.target_index]
        return (pixel / size * 2 - 1).astype(np.float32)

    def _clip_estimates(self, image: np.ndarray, command: str) -> tuple[np.ndarray, np.ndarray]:
        """The fusion's position estimates of the commanded object now and in the episode's first frame."""
        import torch

        with torch.no_grad():
            encoded = self.policy.encoder.encode_images(image[None])
            patches = encoded.patches.float()
            if self._reference_patches is None:
                self._reference_patches = patches
            text = self.policy.encoder.encode_text([command]).float()
            self.last_patches, self.last_text = patches, text  # this frame's, for research.push_estimate_errors
            # the map's own readouts (not fuse(), whose MLP may also want the joint state or the sentence); the
            # first frame's map is a prior on this one only at --prior-weight (region_map's reference_prior)
            prior = self.fusion.logits(self._reference_patches, text)
            xy = self.fusion._readout(self.fusion.logits(patches, text) + self.prior_weight * prior)[2]
            reference_xy = self.fusion._readout(prior)[2]
        return xy[0].numpy().astype(np.float32), reference_xy[0].numpy().astype(np.float32)

    def _inputs(self, obs: dict, info: dict) -> np.ndarray:
        direction = np.zeros(len(DIRECTION_ORDER), np.float32)
        direction[DIRECTION_ORDER.index(info["direction"])] = 1.0
        if self.policy is None:
            xy = self._target_xy()
        else:
            xy, self._start_xy = self._clip_estimates(obs["image"], info["command"])
        if self.noise:
            xy = xy + self.rng.normal(0.0, self.noise, 2).astype(np.float32)
        return np.concatenate([self.normalise(obs["proprio"]), xy, self._start_xy, direction]).astype(np.float32)


LAYOUTS = ("flat", "policy", "policy_proprio", "policy_film")


def _build_net(layout: str, input_dim: int, proprio_dim: int, history: int, out_dim: int):
    """The learner's network: ``flat`` or ``policy``; its ``forward`` gives (actions, value).

    ``flat``: every input into three GELU layers of 256. ``policy``: the CLIP policy's shape, where the estimates
    and the direction pass the fusion's two GELU layers before proprioception joins them in the actor's two tanh
    layers (SB3's ``net_arch`` of 256, 256). ``policy_proprio``: the same, with proprioception also entering the
    fusion's first layer beside the estimates. ``policy_film``: ``policy_proprio`` whose push direction does not
    enter the fusion as an input but scales and shifts its first hidden layer (FiLM, zero-initialised), as the
    CLIP policy's skill reader conditions its fusion. The value is a critic's estimate of the return, as the CLIP
    policy's critic (``--value-weight``): for ``flat`` a linear head on the last hidden layer, for the policy
    shapes SB3's critic (two tanh layers of 256 beside the actor's, on the same shared features).
    """
    import torch
    from torch import nn

    if layout == "flat":
        class Flat(nn.Module):
            def __init__(self):
                super().__init__()
                self.trunk = nn.Sequential(nn.Linear(input_dim * history, 256), nn.GELU(), nn.Linear(256, 256),
                                           nn.GELU(), nn.Linear(256, 256), nn.GELU())
                self.actor, self.critic = nn.Linear(256, out_dim), nn.Linear(256, 1)

            def forward(self, x):
                hidden = self.trunk(x)
                return self.actor(hidden), self.critic(hidden).squeeze(-1)

        return Flat()

    early = layout in ("policy_proprio", "policy_film")
    film = layout == "policy_film"
    directions = len(DIRECTION_ORDER)  # the inputs' last columns (PushScenes._inputs)

    class PolicyShaped(nn.Module):
        def __init__(self):
            super().__init__()
            width = input_dim - (0 if early else proprio_dim) - (directions if film else 0)
            self.fusion = nn.Sequential(nn.Linear(width * history, 256), nn.GELU(),
                                        nn.Linear(256, 256), nn.GELU())
            if film:  # the direction scales and shifts the first hidden layer, starting from no conditioning
                self.film = nn.Linear(directions, 2 * 256)
                nn.init.zeros_(self.film.weight)
                nn.init.zeros_(self.film.bias)
            self.actor = nn.Sequential(nn.Linear(256 + proprio_dim * history, 256), nn.Tanh(), nn.Linear(256, 256),
                                       nn.Tanh(), nn.Linear(256, out_dim))
            self.critic = nn.Sequential(nn.Linear(256 + proprio_dim * history, 256), nn.Tanh(), nn.Linear(256, 256),
                                        nn.Tanh(), nn.Linear(256, 1))

        def _fuse(self, frames):
            inputs = frames[..., 0 if early else proprio_dim:]
            if not film:
                return self.fusion(inputs.flatten(1))
            hidden = self.fusion[1](self.fusion[0](inputs[..., :-directions].flatten(1)))
            scale, shift = self.film(frames[:, -1, -directions:]).chunk(2, dim=-1)  # the newest frame's
            return self.fusion[3](self.fusion[2](hidden * (1 + scale) + shift))

        def forward(self, x):
            frames = x.reshape(len(x), history, input_dim)
            fused = self._fuse(frames)
            features = torch.cat([fused, frames[..., :proprio_dim].flatten(1)], dim=-1)
            return self.actor(features), self.critic(features).squeeze(-1)

    return PolicyShaped()


@dataclass(frozen=True)
class Regime:
    """How the learner is fitted: the probe's plain regression, or the CLIP policy's imitation (``imitation.fit``).

    ``value_weight``: the critic regresses the discounted returns at this weight beside the actions (0: no critic
    loss). ``grad_clip``: the gradient's total norm is clipped to this (0: not clipped); the CLIP policy clips the
    sum of its action, value and grounding losses' gradients to 1.0. ``fresh_optimizer``: a new Adam for every fit,
    as ``imitation.fit`` makes, instead of one across rounds. ``separate_clip``: the actions' and the values'
    gradients are clipped apart, then added (so a large value loss cannot shrink the actions' step).
    """

    value_weight: float = 0.0
    grad_clip: float = 0.0
    fresh_optimizer: bool = False
    separate_clip: bool = False
    gamma: float = 0.97


class ChunkLearner:
    """An MLP (``layout``, :func:`_build_net`) from ``history`` stacked inputs to ``chunk`` actions and a value."""

    def __init__(self, input_dim: int, action_dim: int, variant: Variant, seed: int, layout: str = "flat",
                 proprio_dim: int = 0, regime: Regime = Regime()):
        import torch

        torch.manual_seed(seed)
        self.variant, self.action_dim, self.regime = variant, action_dim, regime
        self.net = _build_net(layout, input_dim, proprio_dim, variant.history, action_dim * variant.chunk)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-3)

    def predict(self, stacked: np.ndarray) -> np.ndarray:
        """(history * input_dim,) -> (chunk, action_dim) in [-1, 1]."""
        import torch

        with torch.no_grad():
            out = self.net(torch.as_tensor(stacked[None]))[0][0].numpy()
        return np.clip(out.reshape(self.variant.chunk, self.action_dim), -1, 1)

    def mse(self, inputs: np.ndarray, labels: np.ndarray) -> float:
        """Mean squared error of the first predicted action (the one every variant executes)."""
        import torch

        with torch.no_grad():
            out = self.net(torch.as_tensor(inputs))[0].numpy().reshape(len(inputs), self.variant.chunk, -1)
        return float(np.mean((np.clip(out[:, 0], -1, 1) - labels[:, 0]) ** 2))

    def fit(self, inputs: np.ndarray, labels: np.ndarray, returns: np.ndarray, epochs: int,
            seed: int) -> dict[str, float]:
        """Regress all chunk actions (and the returns, at the regime's weight); the last epoch's mean losses."""
        import torch
        import torch.nn.functional as F

        from vla_ros.policy.imitation import add_clipped_gradients

        regime = self.regime
        rng = np.random.default_rng(seed)
        if regime.fresh_optimizer:
            self.optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        params = list(self.net.parameters())
        x, y = torch.as_tensor(inputs), torch.as_tensor(labels.reshape(len(labels), -1))
        g = torch.as_tensor(returns, dtype=torch.float32)
        totals = np.zeros(2)
        for _ in range(epochs):
            totals[:] = 0.0
            for idx in np.array_split(rng.permutation(len(x)), max(1, len(x) // 256)):
                actions, values = self.net(x[idx])
                action_loss, value_loss = F.mse_loss(actions, y[idx]), F.mse_loss(values, g[idx])
                self.optimizer.zero_grad()
                if regime.separate_clip and regime.value_weight:
                    value_grads = torch.autograd.grad(regime.value_weight * value_loss, params, retain_graph=True,
                                                      allow_unused=True)
                    action_loss.backward()
                    if regime.grad_clip:
                        torch.nn.utils.clip_grad_norm_(params, regime.grad_clip)
                    add_clipped_gradients(params, value_grads, regime.grad_clip or math.inf)
                else:
                    (action_loss + regime.value_weight * value_loss).backward()
                    if regime.grad_clip:
                        torch.nn.utils.clip_grad_norm_(params, regime.grad_clip)
                self.optimizer.step()
                totals += [action_loss.item() * len(idx), value_loss.item() * len(idx)]
        return {"action_mse": totals[0] / len(x), "value_mse": totals[1] / len(x)}


def _discounted(rewards: list[float], gamma: float) -> np.ndarray:
    out, running = np.zeros(len(rewards), np.float32), 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def run_episodes(scenes: PushScenes, variant: Variant, learner: ChunkLearner | None, beta: float, seeds,
                 rng: np.random.Generator, label: bool = True, decisions_only: bool = False,
                 gamma: float = 0.97) -> dict:
    """Roll out episodes (expert with probability ``beta`` per decision, else the learner's chunk).

    Labels every step's state, or with ``decisions_only`` only the states where a chunk is decided (as the CLIP
    policy's imitation does). Returns are discounted by ``gamma`` per decision (``gamma ** (1 / executed)`` a step).
    """
    inputs, labels, returns = [], [], []
    successes = wrong_way = 0
    for seed in seeds:
        x, info = scenes.reset(int(seed))
        history = [x] * variant.history
        plan, done, rewards, labelled = [], False, [], []
        while not done:
            stacked = np.concatenate(history[-variant.history:])
            deciding = not plan
            labelling = label and (deciding or not decisions_only)
            expert_labels = scenes.expert_chunk(info, variant.chunk) if labelling else None
            if labelling:
                inputs.append(stacked)
                labels.append(expert_labels)
                labelled.append(len(rewards))
            if deciding:  # decide the next executed actions: the expert's or the learner's chunk
                use_expert = learner is None or rng.random() < beta
                source = (expert_labels if expert_labels is not None else scenes.expert_chunk(info, variant.chunk)) \
                    if use_expert else learner.predict(stacked)
                plan = list(source[:variant.execute])
            x, info, done, reward = scenes.step(plan.pop(0))
            rewards.append(reward)
            history.append(x)
        if label:
            returns.append(_discounted(rewards, gamma ** (1.0 / variant.execute))[labelled])
        successes += int(info["is_success"])
        env = scenes.env
        moved = (env._object_positions()[env.target_index] - env._target_start)[:2]
        wrong_way += int(np.linalg.norm(moved) > 0.04 and moved @ env._direction_vector[:2] < 0)
    out = {"episodes": len(seeds), "success": successes / len(seeds), "wrong_way": wrong_way / len(seeds)}
    if label:
        out["inputs"], out["labels"] = np.stack(inputs), np.stack(labels)
        out["returns"] = np.concatenate(returns)
    return out


def run_variant(variant: Variant, args) -> dict:
    """Behaviour cloning, DAgger rounds and an evaluation of one variant."""
    import torch

    torch.set_num_threads(max(1, args.threads))
    scenes = PushScenes(args.estimate_noise, args.estimates_from, args.prior_weight)
    regime = Regime(value_weight=args.value_weight, grad_clip=args.grad_clip, fresh_optimizer=args.fresh_optimizer,
                    separate_clip=args.separate_clip)
    rng = np.random.default_rng(args.seed)
    started = time.time()
    next_seed = PROBE_SEED + 100_000
    seeds = lambda n: range(next_seed, next_seed + n)  # noqa: E731
    collect = dict(decisions_only=args.label_decisions, gamma=regime.gamma)
    demos = run_episodes(scenes, variant, None, 1.0, seeds(args.bc_episodes), rng,
                         **{**collect, "decisions_only": args.label_decisions and not args.bc_every_step})
    next_seed += args.bc_episodes
    inputs, labels, returns = demos["inputs"], demos["labels"], demos["returns"]
    learner = ChunkLearner(inputs.shape[1] // variant.history, labels.shape[2], variant, args.seed, args.layout,
                           2 * scenes.normalise.num_joints, regime)
    losses = learner.fit(inputs, labels, returns, args.epochs, args.seed)
    report = {"bc_frames": len(inputs), "bc_loss": losses["action_mse"], "bc_value_mse": losses["value_mse"],
              "rounds": []}
    dagger_variant, dagger_collect = variant, collect
    if args.dagger_execute:  # DAgger's learner runs fewer of its chunk's actions (returns discounted as before)
        dagger_variant = Variant(variant.name, variant.history, variant.chunk, args.dagger_execute)
        dagger_collect = {**collect, "gamma": regime.gamma ** (args.dagger_execute / variant.execute)}
    for round_index, beta in enumerate(DAGGER_BETAS[:args.dagger_rounds]):
        new = run_episodes(scenes, dagger_variant, learner, beta, seeds(args.dagger_episodes), rng, **dagger_collect)
        next_seed += args.dagger_episodes
        report["rounds"].append({"beta": beta, "success": new["success"],
                                 "mse_on_new_states": learner.mse(new["inputs"], new["labels"])})
        inputs, labels = np.concatenate([inputs, new["inputs"]]), np.concatenate([labels, new["labels"]])
        returns = np.concatenate([returns, new["returns"]])
        losses = learner.fit(inputs, labels, returns, args.epochs, args.seed + round_index + 1)
        report["rounds"][-1].update(loss=losses["action_mse"], value_mse=losses["value_mse"])
    evaluation = run_episodes(scenes, variant, learner, 0.0, range(PROBE_SEED, PROBE_SEED + args.eval_episodes),
                              rng, label=False)
    report.update(eval_success=evaluation["success"], eval_wrong_way=evaluation["wrong_way"],
                  eval_episodes=evaluation["episodes"], frames=len(inputs), seconds=round(time.time() - started, 1))
    return report


def main(argv=None) -> dict:
    """Run every variant; print a table and return the report."""
    from vla_ros.reporting import format_table, write_json

    parser = argparse.ArgumentParser(prog="python -m research.push_memory_probe", description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["none", "history2", "history4", "chunk8x4",
                                                            "history2_chunk8x4"])
    parser.add_argument("--bc-episodes", type=int, default=400, help="expert episodes (default 400)")
    parser.add_argument("--dagger-rounds", type=int, default=3, choices=range(len(DAGGER_BETAS) + 1))
    parser.add_argument("--dagger-episodes", type=int, default=200, help="episodes per DAgger round (default 200)")
    parser.add_argument("--eval-episodes", type=int, default=200, help="learner-only episodes (default 200)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per fit (default 20)")
    parser.add_argument("--estimate-noise", type=float, default=0.0,
                        help="std of the position estimates' noise, image half-widths (default 0)")
    parser.add_argument("--estimates-from", metavar="CHECKPOINT",
                        help="take the position estimates from this reference-frame region_map policy's fusion "
                             "on rendered frames (default: the simulator's exact positions)")
    parser.add_argument("--prior-weight", type=float, default=0.0,
                        help="with --estimates-from: add the first frame's map times this to the current one "
                             "(as region_map's reference_prior) before the estimate (default 0: off)")
    parser.add_argument("--layout", choices=LAYOUTS, default="flat",
                        help="the learner's network: flat (default), the CLIP policy's shape, that shape with "
                             "proprioception entering the fusion too, or that with the direction as FiLM")
    parser.add_argument("--value-weight", type=float, default=0.0,
                        help="the critic regresses the discounted returns at this weight beside the actions, "
                             "through the shared layers (the CLIP policy's imitation: 0.5; default 0: no critic loss)")
    parser.add_argument("--grad-clip", type=float, default=0.0,
                        help="clip the gradient's total norm to this (the CLIP policy's imitation: 1.0; default 0)")
    parser.add_argument("--separate-clip", action="store_true",
                        help="with --value-weight: clip the actions' and the values' gradients apart, then add them")
    parser.add_argument("--fresh-optimizer", action="store_true",
                        help="a new Adam for every fit (the CLIP policy's imitation) instead of one for the run")
    parser.add_argument("--label-decisions", action="store_true",
                        help="label only the states where a chunk is decided (the CLIP policy's imitation), not "
                             "every step's")
    parser.add_argument("--bc-every-step", action="store_true",
                        help="with --label-decisions: the expert's own episodes still label every step (the expert "
                             "runs closed-loop, so a chunk of one executed action gives the same path)")
    parser.add_argument("--dagger-execute", type=int, default=0,
                        help="in DAgger rounds the learner runs this many of its chunk's actions before deciding "
                             "again (1: closed loop, so every step is a decision); the evaluation runs the "
                             "variant's (default 0: the variant's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    variants = [Variant.parse(name) for name in args.variants]
    report = {"config": {k: v for k, v in vars(args).items() if k != "json"}, "variants": {}}
    for variant in variants:
        report["variants"][variant.name] = run_variant(variant, args)
    rows = [{"variant": name, "BC loss": r["bc_loss"],
             "DAgger success": " / ".join(f"{x['success']:.2f}" for x in r["rounds"]),
             "value MSE": " / ".join(f"{x['value_mse']:.2f}" for x in r["rounds"]),
             "MSE on new states": " / ".join(f"{x['mse_on_new_states']:.4f}" for x in r["rounds"]),
             "learner alone": f"{100 * r['eval_success']:.1f}%", "wrong way": f"{100 * r['eval_wrong_way']:.1f}%",
             "frames": r["frames"], "s": r["seconds"]}
            for name, r in report["variants"].items()]
    print(format_table(rows, list(rows[0])))
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
