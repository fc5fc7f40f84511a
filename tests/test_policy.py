"""Policy training smoke run, checkpoint round trip, the Policy wrapper and its error handling."""

import csv
import functools
import json
import shutil

import numpy as np
import pytest

from vla_ros.grounding.checkpoint import create_clip, save_clip_checkpoint
from vla_ros.policy.checkpoint import CheckpointError
from vla_ros.policy.evaluate import SPLITS, run_episodes, wilson_interval
from vla_ros.policy.policy import Policy
from vla_ros.policy.train import TrainConfig, TrainingRun


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    loaded = create_clip(seed=0)
    folder = tmp_path_factory.mktemp("clip")
    save_clip_checkpoint(loaded.model, folder, loaded.model_cfg, loaded.preprocess_cfg)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_clip):
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(out=str(out), clip=str(tiny_clip), num_envs=2, vec_env="dummy", bc_episodes=2,
                      dagger_rounds=1, dagger_episodes=2, bc_epochs=1, ppo_steps=128, n_steps=32, batch_size=32,
                      n_epochs=1, eval_every=10_000, eval_episodes=2, checkpoint_every=64, command="pytest")
    final = TrainingRun(cfg).run()
    return cfg, final


def test_training_smoke_run_exports_a_loadable_checkpoint(trained):
    cfg, final = trained
    config = json.loads((final / "config.json").read_text())
    assert config["metrics"]["env_steps_ppo"] >= 128
    assert config["metrics"]["env_steps_imitation"] > 0
    assert config["training"]["command"] == "pytest"
    assert config["clip"]["colour_space"] == "rgb"  # recorded: what the CLIP's image tower reads
    policy = Policy.load(final)
    assert len(policy.joint_names) == len(config["joint_names"])
    assert (final.parent / "eval.csv").is_file() and (final.parent / "learning_curve.png").is_file()
    # the shipped iterate is chosen by validation success on training combos only, never on held-out ones
    last_ppo = [row for row in csv.DictReader((final.parent / "eval.csv").open()) if row["phase"] == "ppo"][-1]
    assert config["metrics"]["selected_ppo_steps"] == int(last_ppo["ppo_steps"])
    assert config["metrics"]["selected_validation_success_train"] == float(last_ppo["success_train"])


def test_training_logs_episodes_evaluations_and_imitation_to_tensorboard(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, _ = trained
    logs = __import__("pathlib").Path(cfg.out) / "logs"
    assert "rollout/ep_rew_mean" in (logs / "progress.csv").read_text().splitlines()[0]  # VecMonitor episodes
    tags = set()
    for events in logs.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"rollout/ep_len_mean", "eval/success_train", "eval/success_heldout_combos",
            "imitation/action_mse", "imitation/expert_success"} <= tags


def test_select_action_stays_within_limits_and_max_step(trained):
    _, final = trained
    policy = Policy.load(final)
    rng = np.random.default_rng(0)
    n = policy.num_joints
    for _ in range(5):
        frame = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
        q = rng.uniform(policy.lower, policy.upper)
        state = np.concatenate([q, rng.normal(size=n)])
        target = policy.select_action(frame, "touch the red cube", state)
        assert target.shape == (n,)
        assert np.all(target >= policy.lower - 1e-9) and np.all(target <= policy.upper + 1e-9)
        assert np.all(np.abs(target - q) <= policy.max_delta + 1e-9)


def test_policy_rejects_bad_joint_state_and_command(trained):
    policy = Policy.load(trained[1])
    frame = np.zeros((64, 64, 3), np.uint8)
    good = np.zeros(2 * policy.num_joints)
    with pytest.raises(ValueError, match="NaN"):
        policy.select_action(frame, "touch the red cube", np.full_like(good, np.nan))
    with pytest.raises(ValueError, match="shape"):
        policy.select_action(frame, "touch the red cube", good[:3])
    with pytest.raises(ValueError, match="empty"):
        policy.select_action(frame, "  ", good)


def test_resume_continues_from_saved_ppo_steps(trained):
    cfg, final = trained
    state = json.loads((final.parent / "state.json").read_text())
    assert state["phases_done"] == ["imitation"] and state["ppo_steps"] >= 128
    more = TrainConfig(**{**cfg.__dict__, "ppo_steps": 192})
    TrainingRun(more).run()
    state = json.loads((final.parent / "state.json").read_text())
    assert 192 <= state["ppo_steps"] < 128 + 192  # continued, not restarted


def test_mismatched_or_missing_checkpoints_are_clear_errors(trained, tmp_path, tiny_clip):
    _, final = trained
    with pytest.raises(CheckpointError, match="not found"):
        Policy.load(tmp_path / "nope")
    other_clip = tmp_path / "other_clip"
    loaded = create_clip(seed=1)
    save_clip_checkpoint(loaded.model, other_clip, loaded.model_cfg, loaded.preprocess_cfg)
    with pytest.raises(CheckpointError, match="does not match"):
        Policy.load(final, clip_path=other_clip)
    broken = tmp_path / "broken"
    shutil.copytree(final, broken)
    config = json.loads((broken / "config.json").read_text())
    config["clip"]["path"] = str(tiny_clip)
    fewer_joints = {**config, "joint_names": config["joint_names"][:-1]}
    (broken / "config.json").write_text(json.dumps(fewer_joints))
    with pytest.raises(CheckpointError, match="joint set does not match"):
        Policy.load(broken)
    wider = {**config, "network": {**config["network"], "fusion_dim": 128}}
    (broken / "config.json").write_text(json.dumps(wider))
    with pytest.raises(CheckpointError, match="weights do not match"):
        Policy.load(broken)
    policy = Policy.load(final)
    with pytest.raises(CheckpointError, match="joint"):
        policy.check_joint_names(["a", "b"])
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        Policy.load(broken)


def test_corrupted_split_reports_each_kind_of_corruption(trained):
    policy = Policy.load(trained[1])
    args = (policy.network, policy.encoder, policy.normalizer, "reach")
    corrupted = run_episodes(*args, episodes=6, seed=3, num_envs=2, vec_env="dummy", **SPLITS["corrupted"])
    kinds = corrupted.by_corruption
    assert set(kinds) <= {"absent_object", "random_string"} and kinds
    assert sum(n for _, n, _ in kinds.values()) == corrupted.episodes == 6
    assert sum(wins for wins, _, _ in kinds.values()) == corrupted.successes
    assert corrupted.refused == 0  # no refusal rule given
    entry = corrupted.report()["by_corruption"]
    for kind, (_, n, _) in kinds.items():
        assert entry[kind]["episodes"] == n and entry[kind]["ci95"][0] <= entry[kind]["success_rate"]
    clean = run_episodes(*args, episodes=2, seed=3, num_envs=2, vec_env="dummy", **SPLITS["train"])
    assert clean.by_corruption == {} and "by_corruption" not in clean.report()


def test_wilson_interval_brackets_the_rate():
    lo, hi = wilson_interval(190, 200)
    assert lo < 0.95 < hi and 0.9 < lo and hi < 0.98
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_resume_refuses_changed_learning_settings(trained):
    cfg, _ = trained
    with pytest.raises(ValueError, match="other settings"):
        TrainingRun(TrainConfig(**{**cfg.__dict__, "fusion": "late"}))


def test_imitation_rounds_are_saved_and_reload_without_pickle(trained):
    from vla_ros.policy.imitation import Demonstrations

    _, final = trained
    demos = Demonstrations.load(final.parent / "demos_0.npz")
    assert len(demos) > 0 and demos.episodes == 2
    assert demos.expert_actions.shape[1] == demos.obs["proprio"].shape[1] // 2
    assert np.all(np.abs(demos.target_xy) <= 1.0) and np.all(np.abs(demos.expert_actions) <= 1.0)
    state = json.loads((final.parent / "state.json").read_text())
    assert state["imitation_rounds_done"] == 2  # expert demonstrations + one DAgger round


def test_copy_checkpoint_repoints_clip_and_checks_it(trained, tiny_clip, tmp_path):
    from vla_ros.policy.checkpoint import copy_checkpoint

    _, final = trained
    shipped_clip = tmp_path / "models" / "clip"
    shutil.copytree(tiny_clip, shipped_clip)
    dest = copy_checkpoint(final, tmp_path / "models" / "policy", shipped_clip)
    assert json.loads((dest / "config.json").read_text())["clip"]["path"] == "../clip"
    assert Policy.load(dest).num_joints == 5
    other = tmp_path / "other"
    loaded = create_clip(seed=3)
    save_clip_checkpoint(loaded.model, other, loaded.model_cfg, loaded.preprocess_cfg)
    with pytest.raises(CheckpointError, match="not the CLIP"):
        copy_checkpoint(final, tmp_path / "elsewhere", other)


def test_rebind_clip_accepts_only_a_clip_with_the_same_image_tower(trained, tiny_clip, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from vla_ros.policy.checkpoint import rebind_clip

    final = trained[1]
    weights = load_file(str(tiny_clip / "open_clip_model.safetensors"))
    for name, changed in (("text", "text"), ("image", "visual.")):
        clip = tmp_path / f"clip_{name}"
        shutil.copytree(tiny_clip, clip)
        edited = {k: v + 0.01 if k.startswith(changed) and v.is_floating_point() else v for k, v in weights.items()}
        save_file(edited, str(clip / "open_clip_model.safetensors"))
        if name == "image":
            with pytest.raises(CheckpointError, match="image tower"):
                rebind_clip(final, tmp_path / "rebound_image", clip)
            continue
        rebound = rebind_clip(final, tmp_path / "rebound", clip)
        config = json.loads((rebound / "config.json").read_text())
        assert config["clip"]["rebound_from"] == json.loads((final / "config.json").read_text())["clip"]["sha256"]
        policy = Policy.load(rebound)  # the recorded hash is the new CLIP's
        assert not torch.equal(policy.encoder.encode_text(["the red cube"]),
                               Policy.load(final).encoder.encode_text(["the red cube"]))


def test_calibrated_refusal_is_stored_and_holds_refused_episodes_in_evaluation(trained, tmp_path):
    from vla_ros.commands.calibrate_refusal import calibrate
    from vla_ros.grounding.refusal import RefusalRule

    policy = Policy.load(trained[1])
    report = calibrate(policy, scenes=6, false_refusal=0.2, progress=False)
    rule = RefusalRule.from_dict(report["rule"])
    assert rule.calibration["valid_splits"] == ["train", "validation_words", "validation_phrasings"]
    assert rule.text_gate is None  # the tiny CLIP's text tower is not pretrained: no gate
    assert set(report["invalid"]) <= {"absent_object", "random_string"}
    valid_refused = [entry["false_refusal"] for entry in report["valid"].values()]
    assert max(valid_refused) <= 0.5  # the threshold is a low quantile of the valid scores
    args = (policy.network, policy.encoder, policy.normalizer, "reach")
    everything = RefusalRule(threshold=1.0)  # no region reaches it: every episode is refused and held
    held = run_episodes(*args, episodes=4, seed=3, num_envs=2, vec_env="dummy", refusal=everything,
                        **SPLITS["corrupted"])
    assert held.refused == held.episodes == 4 and held.report()["refusal_rate"] == 1.0
    assert held.mean_length == 50  # held to the time limit


def _copy_checkpoint(checkpoint, folder):
    """A copy of ``checkpoint`` in ``folder`` whose CLIP path still points at the original's CLIP."""
    shutil.copytree(checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["clip"]["path"] = str((checkpoint / config["clip"]["path"]).resolve())
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_train_done_fits_a_head_stores_it_and_evaluation_scores_it(trained, tmp_path):
    from vla_ros.commands.train_done import save_done_head, train_done
    from vla_ros.policy.done_head import (
        NO_TASK,
        DoneConfig,
        episode_metrics,
        task_thresholds,
        threshold_for_episode_precision,
    )

    # two episodes: the signal rises as each reaches success (labels); in the second it fires one step early
    data = {"labels": np.array([False, False, True, True, False, False, True, True]),
            "episode": np.array([0, 0, 0, 0, 1, 1, 1, 1]), "step": np.array([0, 1, 2, 3, 0, 1, 2, 3])}
    probabilities = np.array([0.1, 0.2, 0.9, 0.95, 0.1, 0.8, 0.85, 0.9])
    metrics = episode_metrics(probabilities, data, 0.75)
    assert metrics["stopped"] == 2 and metrics["precision"] == 0.5 and metrics["recall"] == 0.5
    threshold = threshold_for_episode_precision(probabilities, data, min_precision=0.99)
    assert episode_metrics(probabilities, data, threshold)["precision"] == 1.0 and 0.8 < threshold <= 0.85

    # one threshold per task: push's early firing no longer holds reach's signal back
    tasks = {"labels": np.tile(data["labels"], 2), "episode": np.concatenate([data["episode"], data["episode"] + 2]),
             "step": np.tile(data["step"], 2), "task": np.repeat([0, 1], 8)}
    reach_clean = np.concatenate([[0.1, 0.2, 0.6, 0.7, 0.1, 0.2, 0.6, 0.7], probabilities])
    per_task = task_thresholds(reach_clean, tasks, min_precision=0.99)
    assert 0.2 < per_task["reach"] <= 0.6 and 0.8 < per_task["push"] <= 0.85
    config = DoneConfig(features_dim=8, threshold=0.9, task_thresholds=per_task)
    assert episode_metrics(reach_clean, tasks, config.thresholds(tasks["task"]))["recall"] == 1.0
    assert episode_metrics(reach_clean, tasks, threshold_for_episode_precision(reach_clean, tasks, 0.99))[
        "recall"] == 0.5  # one threshold for both: reach stops nowhere
    assert config.thresholds(np.array([0, 1, NO_TASK])).tolist() == [per_task["reach"], per_task["push"], 0.9]
    assert DoneConfig.from_dict(config.to_dict()) == config
    assert "task_thresholds" not in DoneConfig(features_dim=8, threshold=0.9).to_dict()  # as older checkpoints
    for bad, match in (({"grasp": 0.5}, "unknown task"), ({"reach": 1.0}, "probability"),
                       ({"push": float("nan")}, "probability")):
        with pytest.raises(ValueError, match=match):
            DoneConfig.from_dict({**config.to_dict(), "task_thresholds": bad})

    folder = _copy_checkpoint(trained[1], tmp_path / "policy")
    policy = Policy.load(folder)
    head, done, report = train_done(policy, episodes=4, validation_episodes=2, vec_env="dummy", progress=False)
    assert report["train"]["episodes"] == 4 and 0.0 < done.threshold < 1.0
    assert done.calibration["observations"] > 4 * 10  # episodes run to the time limit, past any success
    assert report["done"]["calibration"]["seed"] != report["done"]["calibration"]["validation_seed"]
    save_done_head(folder, head, done)
    policy = Policy.load(folder)
    assert policy.has_done_signal
    assert policy.done_config == done


def test_a_done_head_on_the_fusions_estimates_is_trained_stored_and_read_back(trained, tmp_path):
    import torch

    from vla_ros.commands.train_done import save_done_head, train_done
    from vla_ros.grounding.fusion import FusionOutput
    from vla_ros.keys import OBS_PROPRIO
    from vla_ros.policy.done_head import DoneConfig, done_input_dim, done_inputs
    folder = _copy_checkpoint(trained[1], tmp_path / "policy")
    policy = Policy.load(folder)
    network = policy.network
    proprio_dim = network.observation_space[OBS_PROPRIO].shape[0]
    assert done_input_dim(network, "estimates") == 2 + proprio_dim  # no reference frame, no skill reader here

    # the inputs are the estimate (and, with a reference frame, where it started and the displacement) and joints
    xy, start = torch.tensor([[0.5, -0.25]]), torch.tensor([[0.25, 0.25]])
    proprio = torch.arange(proprio_dim, dtype=torch.float32)[None]
    inputs = done_inputs(network, None, FusionOutput(torch.zeros(1, 4), None, xy, start), {OBS_PROPRIO: proprio},
                         "estimates")
    assert inputs[0, :6].tolist() == [0.5, -0.25, 0.25, 0.25, 0.25, -0.5] and torch.equal(inputs[0, 6:], proprio[0])
    with pytest.raises(ValueError, match="unknown done inputs"):
        done_inputs(network, None, None, None, "actions")
    with pytest.raises(ValueError, match="'moved' need"):  # no reference prior: nothing holds the estimate back
        done_input_dim(network, "moved")
    with pytest.raises(ValueError, match="'moved' need"):
        done_inputs(network, None, FusionOutput(torch.zeros(1, 4), None, xy, start), {OBS_PROPRIO: proprio}, "moved")

    head, done, report = train_done(policy, episodes=4, validation_episodes=2, vec_env="dummy", progress=False,
                                    inputs="estimates")
    assert done.inputs == "estimates" and done.features_dim == 2 + proprio_dim
    assert report["done"]["inputs"] == "estimates"
    assert DoneConfig.from_dict(done.to_dict()) == done
    assert "inputs" not in DoneConfig(features_dim=8, threshold=0.5).to_dict()  # heads stored before read "policy"
    assert DoneConfig.from_dict({"features_dim": 8, "threshold": 0.5}).inputs == "policy"
    with pytest.raises(ValueError, match="done.inputs"):
        DoneConfig.from_dict({**done.to_dict(), "inputs": "actions"})
    save_done_head(folder, head, done)
    loaded = Policy.load(folder)
    assert loaded.has_done_signal and loaded.done_config == done
    from vla_ros.commands.export import sample_inputs

    frames, commands, states = sample_inputs(loaded, 1, seed=5)
    loaded.normalized_action(frames[0], commands[0], states[0])
    assert 0.0 <= loaded.last_done_probability <= 1.0

    # a head whose width is not this network's estimates is refused when the checkpoint loads
    stored = json.loads((folder / "config.json").read_text())
    stored["done"]["features_dim"] += 1
    (folder / "config.json").write_text(json.dumps(stored))
    with pytest.raises(CheckpointError, match="done inputs"):
        Policy.load(folder)


def _collect_two_episodes(run, **kwargs):
    """imitation.collect on two episodes of ``run``'s envs from seed 5 (the same scenes every call)."""
    from vla_ros.policy import imitation

    venv = run._venv(5, expert_labels=True)
    try:
        return imitation.collect(venv, 2, np.random.default_rng(0), **kwargs)
    finally:
        venv.close()


def test_takeover_rollouts_keep_only_the_experts_stretch(trained, tmp_path):
    """Takeover from the first decision is the expert's own data; a takeover after the time limit keeps nothing;
    in between, the learner's decisions before the switch are dropped."""
    from vla_ros.policy.checkpoint import build_network

    cfg, _ = trained
    run = TrainingRun(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "takeover"), "task": "push"}))
    network = build_network(run.config).eval()

    collect = functools.partial(_collect_two_episodes, run)

    expert = collect()
    from_start = collect(network=network, takeover=(0, 0))
    assert len(from_start) == len(expert) > 0 and from_start.successes == expert.successes
    np.testing.assert_array_equal(from_start.expert_actions, expert.expert_actions)
    np.testing.assert_array_equal(from_start.obs["proprio"], expert.obs["proprio"])
    never = collect(network=network, takeover=(10_000, 10_000))
    assert len(never) == 0 and never.episodes >= 2 and never.cost >= 2 * 3  # dropped decisions still count
    later = collect(network=network, takeover=(3, 3))
    assert 0 < len(later) < later.cost and later.episodes >= 2
    assert expert.cost == len(expert)
    with pytest.raises(ValueError, match="takeover"):
        collect(network=None, takeover=(0, 1))
    with pytest.raises(ValueError, match="dagger_takeover_rounds"):
        TrainingRun(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "bad"), "dagger_takeover_rounds": 3}))
    with pytest.raises(ValueError, match="dagger_takeover_repeat"):
        TrainingRun(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "bad3"), "dagger_takeover_repeat": 0}))
    with pytest.raises(ValueError, match="dagger_takeover_after"):
        TrainingRun(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "bad2"), "dagger_takeover_after": (5, 2)}))


def test_a_run_refuses_an_unknown_learning_rate_schedule(trained, tmp_path):
    cfg, _ = trained
    with pytest.raises(ValueError, match="bc_lr_schedule must be one of"):
        TrainingRun(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "bad"), "bc_lr_schedule": "linear"}))


def test_a_run_with_a_takeover_round_collects_it_after_its_mixed_rounds(trained, tmp_path):
    from vla_ros.policy.imitation import Demonstrations

    cfg, _ = trained
    out = tmp_path / "run"
    TrainingRun(TrainConfig(**{**cfg.__dict__, "out": str(out), "dagger_rounds": 2, "dagger_takeover_rounds": 1,
                               "dagger_takeover_after": (0, 0), "dagger_takeover_repeat": 3,
                               "ppo_steps": 0})).run()
    state = json.loads((out / "state.json").read_text())
    assert state["imitation_rounds_done"] == 3 and state["config"]["dagger_takeover_after"] == [0, 0]
    takeover = Demonstrations.load(out / "demos_2.npz")  # taken over from the first decision: every step kept
    assert takeover.episodes >= cfg.dagger_episodes and len(takeover) >= takeover.episodes
    rounds = [Demonstrations.load(out / f"demos_{k}.npz") for k in range(3)]  # steps run, not their repeats
    assert state["imitation_env_steps"] == sum(d.cost for d in rounds) * cfg.chunk_execute


def test_noisy_expert_rollouts_leave_the_experts_path_but_keep_its_clean_labels(trained, tmp_path):
    cfg, _ = trained
    run = TrainingRun(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "dart"), "task": "push"}))

    collect = functools.partial(_collect_two_episodes, run)

    clean, noisy = collect(), collect(action_noise=0.5)
    envs = cfg.num_envs  # the first decision of each env starts from the same state: the same clean label
    np.testing.assert_array_equal(noisy.expert_actions[:envs], clean.expert_actions[:envs])
    steps = min(len(clean), len(noisy))
    assert not np.allclose(noisy.obs["proprio"][envs:steps], clean.obs["proprio"][envs:steps])
    assert np.all(np.abs(noisy.expert_actions) <= 1.0)
    with pytest.raises(ValueError, match="action_noise"):
        collect(action_noise=-0.1)
    with pytest.raises(ValueError, match="bc_action_noise"):
        TrainingRun(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "bad"), "bc_action_noise": -1.0}))


def test_done_data_can_carry_each_observations_simulator_state(trained):
    """privileged rows line up with their observations: an episode's first holds the object where it started, and
    an observation is labelled fulfilled exactly where its fingertip is within reach's 5 cm of the object."""
    from vla_ros.policy.done_head import collect_done_data

    policy = Policy.load(trained[1])
    data = collect_done_data(policy.network, policy.encoder, policy.normalizer, "reach", 3, 11, vec_env="dummy",
                             privileged=True)
    state = data["privileged"]
    assert state.shape[0] == len(data["labels"]) and state.shape[1] >= 12
    first = data["step"] == 0
    assert first.sum() == 3 and np.allclose(state[first, 3:6], state[first, 6:9])
    near = np.linalg.norm(state[:, 0:3] - state[:, 3:6], axis=1) < 0.05
    assert np.array_equal(near[~first], data["labels"][~first])
    assert "privileged" not in collect_done_data(policy.network, policy.encoder, policy.normalizer, "reach", 1, 11,
                                                 vec_env="dummy")


def test_a_done_head_with_a_fingertip_locator_is_trained_stored_and_read_back(trained, tmp_path):
    import torch

    from vla_ros.commands.train_done import save_done_head, train_done
    from vla_ros.policy.done_head import DoneConfig, proprio_columns

    folder = _copy_checkpoint(trained[1], tmp_path / "policy")
    policy = Policy.load(folder)
    with pytest.raises(ValueError, match="joint state"):  # the policy's own features: no known joint columns
        train_done(policy, episodes=2, validation_episodes=2, vec_env="dummy", progress=False, fingertip=True)
    head, done, report = train_done(policy, episodes=4, validation_episodes=2, vec_env="dummy", progress=False,
                                    inputs="estimates", fingertip=True)
    columns = proprio_columns(policy.network, "estimates")
    assert done.fingertip_proprio == columns and report["done"]["fingertip_proprio"] == list(columns)
    assert set(done.calibration["fingertip_locator_errors"]) == {"image_median", "height_median_m"}
    assert DoneConfig.from_dict(done.to_dict()) == done
    assert all(not p.requires_grad for p in head.locator.parameters())  # fitted first, then frozen
    save_done_head(folder, head, done)
    loaded = Policy.load(folder)
    assert loaded.has_done_signal and loaded.done_config == done
    for name, value in head.state_dict().items():
        assert torch.equal(loaded.done_head.state_dict()[name], value)
    config = json.loads((folder / "config.json").read_text())
    config["done"]["fingertip_proprio"] = [0, columns[1] - columns[0]]  # not where this network's joints are
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="fingertip_proprio"):
        Policy.load(folder)
    with pytest.raises(ValueError, match="fingertip_proprio"):
        DoneConfig.from_dict({**done.to_dict(), "fingertip_proprio": [5, 2]})
