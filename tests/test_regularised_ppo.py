"""Imitation-regularised PPO: PPO updates followed by regression on the run's own expert demonstrations."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from vla_ros.paths import share_path
from vla_ros.policy import imitation
from vla_ros.policy.train import TrainConfig, TrainingRun


def _config(out, **overrides) -> TrainConfig:
    values = dict(out=str(out), task="reach", clip=str(share_path("models", "clip")), fusion="region_map",
                  reference_frame=True, map_weights=False, num_envs=1, vec_env="dummy", bc_episodes=2,
                  dagger_rounds=1, dagger_episodes=1, bc_epochs=1, ppo_steps=32, n_steps=16, batch_size=16,
                  n_epochs=1, eval_every=10_000, eval_episodes=1, checkpoint_every=10_000, fusion_dim=32,
                  hidden_dim=32, command="pytest")
    values.update(overrides)
    return TrainConfig(**values)


def _tiny_imitation(tmp_path, **option):
    """A real tiny run with one imitation ``option`` (recorded in its checkpoint), and its expert demonstrations."""
    (name, value), = option.items()
    run = TrainingRun(_config(tmp_path / "run", ppo_steps=0, dagger_rounds=0, **option))
    run.run()
    recorded = json.loads((tmp_path / "run" / "final" / "config.json").read_text())["training"]["config"][name]
    assert recorded == value and type(recorded) is type(value)
    return run, imitation.Demonstrations.load(tmp_path / "run" / "demos_0.npz")


def test_ppo_regularised_by_imitation_regresses_on_the_runs_demonstrations(tmp_path):
    """A real tiny run: the imitation steps run after each update, on the demonstrations the run saved."""
    run = TrainingRun(_config(tmp_path / "run", ppo_imitation_weight=1.0, ppo_imitation_batches=3,
                              learning_rate=1e-3, bc_batch_size=8))
    final = run.run()
    rows = list(csv.DictReader((tmp_path / "run" / "logs" / "progress.csv").open()))
    logged = [float(r["train/imitation_action_mse"]) for r in rows if r.get("train/imitation_action_mse")]
    assert logged and all(np.isfinite(logged))
    assert json.loads((final / "config.json").read_text())["training"]["config"]["ppo_imitation_weight"] == 1.0

    # the steps pull the actor towards the expert: the demonstrations' action error falls over a few updates
    from vla_ros.policy.regularised_ppo import ImitationRegularisedPPO

    data = imitation.Demonstrations.concatenate([imitation.Demonstrations.load(p)
                                                 for p in sorted((tmp_path / "run").glob("demos_*.npz"))])
    model = ImitationRegularisedPPO.load(tmp_path / "run" / "ppo_latest.zip", device="cpu")
    assert model.demonstrations is None  # saved without them: they stay in the run folder, attached on resume
    with torch.no_grad():
        model.policy.action_net.weight.add_(0.5)  # away from the expert
    every = np.arange(len(data))
    with torch.no_grad():
        before = float(imitation.batch_losses(model.policy, data, every)[0])
    model.attach_demonstrations(data, weight=1.0, batches=50, batch_size=8, seed=0, lr=3e-3)
    model._imitation_steps()
    with torch.no_grad():
        assert float(imitation.batch_losses(model.policy, data, every)[0]) < before * 0.9


def test_ppo_regularised_by_imitation_needs_the_demonstrations_and_a_positive_weight(tmp_path):
    from vla_ros.policy.regularised_ppo import ImitationRegularisedPPO

    run = TrainingRun(_config(tmp_path / "run", ppo_imitation_weight=1.0, ppo_steps=0))
    run.run()  # imitation only: the demonstrations are saved
    for path in (tmp_path / "run").glob("demos_1.npz"):
        path.unlink()
    with pytest.raises(FileNotFoundError, match="demos_1.npz"):
        run._demonstrations()
    data = imitation.Demonstrations.load(tmp_path / "run" / "demos_0.npz")
    with pytest.raises(ValueError, match="positive"):
        ImitationRegularisedPPO.attach_demonstrations(object.__new__(ImitationRegularisedPPO), data, 0.0, 8, 8, 0)


def test_a_detached_value_loss_reaches_the_critic_but_not_the_fusion_the_actor_shares(tmp_path):
    """`bc_value_detached`: on a real tiny run's demonstrations, the value loss's gradient stops at the features."""
    from vla_ros.policy.checkpoint import build_network

    run, data = _tiny_imitation(tmp_path, bc_value_detached=True)
    network = build_network(run.config)
    every = np.arange(len(data))

    def gradients(detached: bool) -> tuple[float, float]:
        network.zero_grad()
        imitation.batch_losses(network, data, every, value_detached=detached)[1].backward()
        norm = lambda module: sum(float(p.grad.abs().sum()) for p in module.parameters()  # noqa: E731
                                  if p.grad is not None)
        return norm(network.features_extractor), norm(network.mlp_extractor.value_net)

    fusion_shared, critic_shared = gradients(False)
    fusion_detached, critic_detached = gradients(True)
    assert fusion_shared > 0 and critic_shared > 0
    assert fusion_detached == 0 and critic_detached > 0
    # the actor's loss is the same either way
    with torch.no_grad():
        assert torch.equal(imitation.batch_losses(network, data, every, value_detached=True)[0],
                           imitation.batch_losses(network, data, every)[0])


def test_clipping_the_value_gradient_apart_keeps_the_actions_share_of_the_fusions_step(tmp_path):
    """`bc_clip_apart`: with returns far off, the fusion still moves the way the actions' loss asks."""
    from vla_ros.policy.checkpoint import build_network

    run, data = _tiny_imitation(tmp_path, bc_clip_apart=True)
    data.returns = data.returns + 1000.0  # a critic hopelessly wrong: its gradient dwarfs the actions'
    every = np.arange(len(data))

    network = build_network(run.config)
    params = [p for name, p in network.named_parameters() if name != "log_std"]
    fusion = [p for p in network.features_extractor.parameters() if p.requires_grad]

    def fusion_gradient(value_weight: float, clip_apart: bool) -> torch.Tensor:
        network.zero_grad(set_to_none=True)
        imitation.set_gradients(network, data, every, params, value_weight, 1.0, clip_apart=clip_apart)
        return torch.cat([p.grad.flatten() for p in fusion])

    actions_only = fusion_gradient(0.0, False)  # what the actions (and grounding) alone ask of the fusion

    def cosine(gradient: torch.Tensor) -> float:
        return float(torch.nn.functional.cosine_similarity(gradient, actions_only, dim=0))

    together, apart = cosine(fusion_gradient(0.5, False)), cosine(fusion_gradient(0.5, True))
    assert together < 0.2 < apart, (together, apart)  # clipped together, the critic's gradient sets the direction


def test_the_expert_round_can_label_every_step_of_a_chunked_policy(tmp_path):
    """`bc_expert_every_step`: the expert's demonstrations hold a state per env step, each with a whole chunk."""
    def demos(every_step: bool):
        out = tmp_path / ("every" if every_step else "decisions")
        run = TrainingRun(_config(out, ppo_steps=0, dagger_rounds=0, action_chunk=4, chunk_execute=4,
                                  bc_expert_every_step=every_step))
        run.run()
        state = json.loads((out / "state.json").read_text())
        return imitation.Demonstrations.load(out / "demos_0.npz"), state["imitation_env_steps"]

    decisions, decision_steps = demos(False)
    every, every_steps = demos(True)
    assert every.expert_actions.shape[1] == decisions.expert_actions.shape[1]  # chunks of 4 actions either way
    # the same two expert scenes: about four labelled states where the chunked run labelled one
    assert len(every) > 2 * len(decisions)
    assert every_steps == every.cost and decision_steps == 4 * decisions.cost


def test_every_round_can_label_the_states_a_chunk_passes(tmp_path):
    """`bc_label_every_step`: expert and DAgger rounds keep the states inside each chunk, expert-labelled."""
    out = tmp_path / "every"
    run = TrainingRun(_config(out, ppo_steps=0, dagger_rounds=1, action_chunk=4, chunk_execute=3,
                              bc_label_every_step=True))
    run.run()
    for k in (0, 1):
        data = imitation.Demonstrations.load(out / f"demos_{k}.npz")
        # each decision runs up to 3 steps: up to 2 passed states per decision beside it
        assert data.cost < len(data) <= 3 * data.cost
        assert data.expert_actions.shape[1] == 4 * data.expert_actions.shape[1] // 4
        assert len(data.returns) == len(data.target_xy) == len(data.reference_xy) == len(data)
        assert np.isfinite(data.returns).all() and np.abs(data.expert_actions).max() <= 1
        # a passed state is a real, different frame: its features differ from its decision's
        decisions = data.obs["image_patches"][:data.cost].astype(np.float32)
        passed = data.obs["image_patches"][data.cost:].astype(np.float32)
        assert not any(np.array_equal(passed[0], d) for d in decisions)
    state = json.loads((out / "state.json").read_text())
    assert state["imitation_env_steps"] <= 3 * sum(imitation.Demonstrations.load(out / f"demos_{k}.npz").cost
                                                   for k in (0, 1))
    with pytest.raises(ValueError, match="chunk_execute"):
        TrainingRun(_config(tmp_path / "bad", action_chunk=4, chunk_execute=1, bc_label_every_step=True))


def test_passed_states_are_labelled_as_the_expert_would_label_them_there():
    """A state inside a chunk gets the label an env deciding every step gives there, and the same next decision."""
    from vla_ros.policy.action_chunk import ActionChunk, ChunkedActionWrapper
    from vla_ros.policy.envs import CHUNK_STEPS, EXPERT_ACTION, TARGET_XY, ExpertLabelWrapper, make_env_fn

    every = make_env_fn("reach", expert_labels=True, action_chunk=ActionChunk(4, 3), label_every_step=True)()
    single = make_env_fn("reach", expert_labels=True, action_chunk=ActionChunk(4, 1))()
    assert isinstance(every, ExpertLabelWrapper) and isinstance(every.env, ChunkedActionWrapper)
    _, info = every.reset(seed=3)
    _, reference = single.reset(seed=3)
    np.testing.assert_allclose(info[EXPERT_ACTION], reference[EXPERT_ACTION])
    chunk = info[EXPERT_ACTION]
    _, _, terminated, _, info = every.step(chunk)
    passed = info[CHUNK_STEPS]
    assert not terminated and len(passed) == 2  # the chunk ran 3 steps: 2 states before its last
    joints = every.env.joint_dim
    labels = []
    for k in range(3):  # the same three actions, one decision each
        action = np.zeros_like(chunk)
        action[:joints] = chunk[k * joints:(k + 1) * joints]
        labels.append(single.step(action)[4])
    for state, step_info in zip(passed, labels[:2]):
        np.testing.assert_allclose(state[EXPERT_ACTION], step_info[EXPERT_ACTION], atol=1e-6)
        np.testing.assert_allclose(state[TARGET_XY], step_info[TARGET_XY], atol=1e-6)
    np.testing.assert_allclose(info[EXPERT_ACTION], labels[2][EXPERT_ACTION], atol=1e-6)
    with pytest.raises(ValueError, match="label_every_step"):
        make_env_fn("reach", expert_labels=False, action_chunk=ActionChunk(4, 3), label_every_step=True)


def test_imitation_without_a_value_weight_leaves_the_critic_untrained(tmp_path):
    """`bc_value_weight: 0`: the critic's own layers keep their initial weights; the actor still learns."""
    from vla_ros.policy.checkpoint import build_network

    run, data = _tiny_imitation(tmp_path, bc_value_weight=0.0)
    network = build_network(run.config)
    critic = [p.detach().clone() for p in network.value_net.parameters()]
    actor = [p.detach().clone() for p in network.action_net.parameters()]
    imitation.fit(network, data, epochs=2, batch_size=8, lr=1e-3, seed=0, value_weight=0.0)
    assert all(torch.equal(p, q) for p, q in zip(network.value_net.parameters(), critic))
    assert not all(torch.equal(p, q) for p, q in zip(network.action_net.parameters(), actor))
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="bc_value_weight"):
            TrainingRun(_config(tmp_path / "bad", bc_value_weight=bad))
