"""Smoke tests of the research probes (``research/``): each ``main`` on a few scenes or episodes, real parts.

The CLIP is a randomly initialised tiny one and the policy an untrained tiny one, so only the plumbing and
the shape of what each probe prints and returns are checked, not its numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_ros.envs.instructions import load_instructions

INSTRUCTIONS = load_instructions()
COMBO_NAMES = [f"{c} {s}" for c, s in INSTRUCTIONS.all_combos]
HELD_OUT = [f"{c} {s}" for c, s in INSTRUCTIONS.all_combos if (c, s) in INSTRUCTIONS.heldout_combos]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A randomly initialised tiny CLIP in the real checkpoint format."""
    from vla_ros.grounding import create_clip, save_clip_checkpoint

    folder = tmp_path_factory.mktemp("research_clip") / "clip"
    loaded = create_clip(seed=0)
    save_clip_checkpoint(loaded.model, folder, loaded.model_cfg, loaded.preprocess_cfg)
    return folder


@pytest.fixture(scope="module")
def reference_policy(clip_dir):
    """An untrained tiny ``region_map`` policy with a reference frame, on the tiny CLIP."""
    import torch

    from vla_ros.grounding.encoder import ClipEncoder
    from vla_ros.policy.checkpoint import build_network, save_checkpoint
    from vla_ros.policy.train import TrainConfig, checkpoint_config
    from vla_ros.robot_description import load_robot_description

    robot = load_robot_description()
    out = clip_dir.parent / "policy"
    cfg = TrainConfig(out=str(clip_dir.parent), clip=str(clip_dir), fusion="region_map", reference_frame=True,
                      fusion_dim=32, hidden_dim=32, net_arch=(32,))
    control_dt = 0.05
    config = checkpoint_config(cfg, ClipEncoder.from_pretrained(clip_dir), clip_dir, robot, control_dt,
                               robot.velocity * control_dt, out)
    torch.manual_seed(0)
    save_checkpoint(out, build_network(config), config)
    return out


def test_clip_attribute_probe_prints_a_row_per_combo_of_the_scenes(clip_dir, capsys):
    from research.clip_attribute_probe import main

    results = main([str(clip_dir), "--scenes", "3", "--split", "heldout_combos"])
    out = capsys.readouterr().out
    assert f"{clip_dir}, heldout_combos, 3 scenes" in out
    assert results and set(results) <= set(COMBO_NAMES)
    assert set(results) & set(HELD_OUT)  # each held-out scene commands a held-out combo
    assert sum(row["objects"] for row in results.values()) >= 3
    for name, row in results.items():
        assert all(0.0 <= row[key] <= 1.0 for key in ("shape", "colour", "combo"))
        assert f"  {name:18} {row['objects']:7}  {row['shape']:.2f}" in out


def test_clip_map_localisation_scores_both_splits(clip_dir, capsys):
    from research.clip_map_localisation import main

    results = main([str(clip_dir), "--scenes", "3", "--temperature", "2.0", "--patch-stitch", "2"])
    out = capsys.readouterr().out
    assert set(results) == {"train", "heldout_combos"}
    for split, rows in results.items():
        assert f"{clip_dir} {split}, 3 scenes, temperature 2.0, patch_stitch 2" in out
        assert rows["all"]["scenes"] == 3
        assert sum(row["scenes"] for combo, row in rows.items() if combo != "all") == 3
        for row in rows.values():
            assert 0.0 <= row["pick"] <= 1.0 and 0.0 <= row["peak_pick"] <= 1.0
            assert row["error"] >= 0 and row["peak_error"] >= 0
        assert f"  all    {3:6}  {rows['all']['pick']:.3f}" in out
    held_out_indices = {f"{list(INSTRUCTIONS.colours).index(c)}-{list(INSTRUCTIONS.shapes).index(s)}"
                        for c, s in INSTRUCTIONS.heldout_combos}
    assert set(results["heldout_combos"]) - {"all"} <= held_out_indices


def test_pixel_shape_probe_reports_the_task_files_held_out_combos(capsys):
    from research.pixel_shape_probe import main

    results = main(["--train-scenes", "6", "--heldout-scenes", "4"])
    out = capsys.readouterr().out
    assert set(results) == {"RGB", "grey (mean of RGB)", "value", "value + saturation"}
    header = next(line for line in out.splitlines() if line.strip().startswith("input"))
    assert all(name in header for name in HELD_OUT)
    for name, row in results.items():
        assert list(row) == ["seen", *HELD_OUT]
        assert 0.0 <= row["seen"] <= 1.0
        assert any(np.isfinite(row[c]) for c in HELD_OUT)
        assert f"  {name:20} {row['seen']:5.2f}" in out


def test_reference_attention_pick_counts_first_frames_and_outcomes(reference_policy, capsys):
    from research.reference_attention_pick import main

    results = main([str(reference_policy), "--split", "heldout_combos", "--episodes", "1", "--num-envs", "1",
                    "--vec-env", "dummy"])
    out = capsys.readouterr().out
    assert results["episodes"] == 1 and results["frames"] == 1
    assert sum(results["outcomes"].values()) == 1
    assert 0 <= results["hits"] <= 1 and 0 <= results["successes"] <= 1
    assert f"{reference_policy} heldout_combos: reference attention nearest the commanded object on " \
           f"{results['hits']}/1 first frames; success {results['successes']}/1" in out
    for grounded in ("grounded", "not grounded"):
        for outcome in ("success", "failure"):
            assert f"  {grounded}, {outcome}: " in out



def test_presence_statistics_compares_every_statistic(clip_dir, capsys):
    from research.presence_statistics import main

    results = main([str(clip_dir), "--scenes", "6", "--patch-stitch", "1", "--false-refusal", "0.1"])
    assert set(results) == {"max", "z", "max-alt", "max-familiarity"}
    for entry in results.values():
        assert 0.0 <= entry["auroc"] <= 1.0 and set(entry["refused"]) <= {"absent_object", "random_string"}
    assert "max-familiarity" in capsys.readouterr().out


def test_done_history_features_are_differences_to_earlier_steps_of_the_same_episode():
    from research.done_history_probe import with_history

    data = {"features": np.array([[0.0], [1.0], [3.0], [10.0], [12.0]]),
            "episode": np.array([0, 0, 0, 1, 1]), "step": np.array([0, 1, 2, 0, 1])}
    np.testing.assert_array_equal(with_history(data, 0), data["features"])
    # lag 1: to the step before (the first step repeats itself); lag 2: two steps before, clipped at the start
    np.testing.assert_array_equal(with_history(data, 2)[:, 1:], [[0, 0], [1, 1], [2, 3], [0, 0], [2, 2]])


def test_done_history_probe_fits_a_head_per_history_and_reports_held_out_episodes(reference_policy, tmp_path, capsys):
    from research.done_history_probe import main

    cache = tmp_path / "episodes.npz"
    args = [str(reference_policy), "--episodes", "2", "--validation-episodes", "2", "--history", "0", "2",
            "--num-envs", "1", "--vec-env", "dummy", "--cache", str(cache)]
    results = main(args)
    assert cache.is_file() and set(results) == {0, 2}
    assert results[2]["inputs"] == 3 * results[0]["inputs"]
    for entry in results.values():
        assert entry["tuning"]["episodes"] == entry["held_out"]["episodes"] == 1
    assert main(args)[0]["threshold"] == results[0]["threshold"]  # the cached episodes give the same fit
    assert "held out" in capsys.readouterr().out


def test_skills_error_probe_reports_each_task_and_phase_of_a_mixed_checkpoint(tmp_path, capsys):
    from policy_fixtures import make_policy_checkpoint

    from research.skills_error_probe import main

    checkpoint = make_policy_checkpoint(tmp_path, task="mixed", fusion="region_map", reference_frame=True,
                                        peak_window=1.5, command_film=True)
    report = main([str(checkpoint), "--episodes", "4", "--seed", "3", "--json", str(tmp_path / "probe.json")])
    assert report["episodes"] == 4 and sum(report["episodes_per_task"].values()) == 4
    assert set(report["tasks"]) <= {"reach", "push"} and report["tasks"]
    for entry in report["tasks"].values():
        assert abs(sum(p["share"] for p in entry["phases"].values()) - 1) < 1e-9
        assert entry["action_mse"] >= 0 and 0 <= entry["grounding_error"] < 3
        assert set(entry["phases"]) <= {"travel", "descend", "rise", "push"}
    assert "success:" in capsys.readouterr().out
    assert (tmp_path / "probe.json").is_file()


def test_skill_reader_probe_scores_every_reading_on_every_split(tmp_path, capsys):
    from research.skill_reader_probe import SOURCES, SPLITS, main, split_fillers
    from vla_ros.envs.instructions import load_instructions, word_tokens
    from vla_ros.policy.skill_reader import training_commands

    fit_fillers, unseen = split_fillers(load_instructions(), seed=0)
    assert fit_fillers and unseen and not set(fit_fillers) & set(unseen)
    fitted = training_commands(load_instructions(), seed=0, filled_variants=1, fillers=fit_fillers)[0]
    assert not any(word_tokens(c) & set(unseen) for c in fitted)  # unseen_verbs' verbs never reach the fit
    report = main(["--per-frame", "1", "--filled-variants", "1", "--json", str(tmp_path / "probe.json")])
    for source in SOURCES:
        assert set(report["accuracy"][source]) == set(SPLITS)
        for entry in report["accuracy"][source].values():
            assert 0 <= entry["accuracy"] <= 1 and entry["commands"] > 0
    # the reader's own input names the skill of every training command (its fit's commands are other draws)
    assert report["accuracy"]["sentence"]["train"]["accuracy"] > 0.95
    assert report["accuracy"]["tokens"]["train"]["accuracy"] > 0.95
    assert "heldout_phrasings" in capsys.readouterr().out
    assert (tmp_path / "probe.json").is_file()


def test_push_memory_variants_parse_and_unknown_ones_are_refused():
    from research.push_memory_probe import Variant

    assert Variant.parse("none") == Variant("none")
    assert Variant.parse("history2_chunk8x4") == Variant("history2_chunk8x4", history=2, chunk=8, execute=4)
    for bad in ("", "history", "chunk4x8", "memory3"):
        with pytest.raises(ValueError):
            Variant.parse(bad)


def test_push_memory_expert_chunk_leaves_the_simulator_where_it_was():
    from research.push_memory_probe import PushScenes

    scenes = PushScenes()
    _, info = scenes.reset(7_000_000)
    qpos, steps = scenes.data.qpos.copy(), scenes.env._steps
    chunk = scenes.expert_chunk(info, 5)
    assert chunk.shape == (5, scenes.env.action_space.shape[0]) and np.abs(chunk).max() <= 1
    np.testing.assert_array_equal(scenes.data.qpos, qpos)
    assert scenes.env._steps == steps
    np.testing.assert_allclose(chunk[0], scenes.expert.act(info))  # the chunk starts with the expert's action now


def test_push_memory_probe_trains_and_scores_each_variant(tmp_path, capsys):
    from research.push_memory_probe import main

    report = main(["--variants", "none", "history2_chunk3x2", "--bc-episodes", "2", "--dagger-rounds", "1",
                   "--dagger-episodes", "1", "--eval-episodes", "2", "--epochs", "1",
                   "--json", str(tmp_path / "r.json")])
    assert set(report["variants"]) == {"none", "history2_chunk3x2"}
    for result in report["variants"].values():
        assert result["eval_episodes"] == 2 and 0 <= result["eval_success"] <= 1
        assert len(result["rounds"]) == 1 and result["frames"] > result["bc_frames"]
    assert (tmp_path / "r.json").exists() and "history2_chunk3x2" in capsys.readouterr().out


def test_push_memory_probe_fits_a_critic_under_the_policys_imitation_regime():
    from research.push_memory_probe import main

    args = ["--variants", "chunk3x2", "--bc-episodes", "2", "--dagger-rounds", "1", "--dagger-episodes", "1",
            "--eval-episodes", "1", "--epochs", "30", "--layout", "policy_proprio"]
    every_step = main(args)["variants"]["chunk3x2"]
    plain = main(args + ["--label-decisions"])["variants"]["chunk3x2"]
    imitation = main(args + ["--label-decisions", "--value-weight", "0.5", "--grad-clip", "1.0",
                             "--fresh-optimizer"])["variants"]["chunk3x2"]
    separate = main(args + ["--label-decisions", "--value-weight", "0.5", "--grad-clip", "1.0",
                            "--separate-clip"])["variants"]["chunk3x2"]
    # labelling decisions only keeps one state in two (a chunk of 3 runs 2 steps): the same scenes, fewer frames
    assert plain["bc_frames"] < every_step["bc_frames"] and plain["bc_frames"] == imitation["bc_frames"]
    # without a value weight the critic is never fitted: with one, its error on the same returns falls
    assert imitation["rounds"][0]["value_mse"] < plain["rounds"][0]["value_mse"]
    assert separate["rounds"][0]["value_mse"] < plain["rounds"][0]["value_mse"]


def test_push_memory_probe_film_layout_reads_the_direction_only_through_its_film():
    import torch

    from research.push_memory_probe import DIRECTION_ORDER, _build_net

    torch.manual_seed(0)
    net = _build_net("policy_film", input_dim=10, proprio_dim=2, history=2, out_dim=3)
    assert net.fusion[0].in_features == 2 * (10 - len(DIRECTION_ORDER))  # the direction is no fusion input
    x = torch.randn(5, 20)
    other = x.clone()
    other[:, -len(DIRECTION_ORDER):] = torch.randn(5, len(DIRECTION_ORDER))  # the newest frame's direction
    assert torch.equal(net(x)[0], net(other)[0])  # zero-initialised FiLM: no conditioning yet
    torch.nn.init.normal_(net.film.weight)
    assert not torch.allclose(net(x)[0], net(other)[0])
    assert net(x)[0].shape == (5, 3) and net(x)[1].shape == (5,)


def test_push_memory_probe_reads_estimates_from_a_reference_frame_policy(reference_policy, capsys):
    from research.push_memory_probe import PushScenes, main

    scenes = PushScenes(estimates_from=str(reference_policy))
    inputs, _ = scenes.reset(7_000_000)
    proprio = 2 * scenes.normalise.num_joints
    estimates = inputs[proprio:proprio + 4]  # the fusion's estimate now and in the first frame: (x, y) each
    assert np.all(np.abs(estimates) <= 1.0) and scenes._reference_patches is not None
    report = main(["--variants", "none", "--bc-episodes", "1", "--dagger-rounds", "0", "--eval-episodes", "1",
                   "--epochs", "1", "--estimates-from", str(reference_policy), "--prior-weight", "1.0"])
    assert report["variants"]["none"]["eval_episodes"] == 1 and "none" in capsys.readouterr().out


def test_push_estimate_errors_reports_each_distance_band_and_prior_weight(reference_policy, tmp_path, capsys):
    from research.push_estimate_errors import BANDS, main

    report = main([str(reference_policy), "--episodes", "1", "--prior-weights", "0", "1",
                   "--json", str(tmp_path / "e.json")])
    rows = report["rows"]
    assert len(rows) == 2 * len(BANDS) and {r["prior_weight"] for r in rows} == {0.0, 1.0}
    assert sum(r["frames"] for r in rows if r["prior_weight"] == 0.0) > 0
    assert (tmp_path / "e.json").exists() and "share_off_by_0.2" in capsys.readouterr().out


def test_push_estimate_errors_reads_another_clips_map_through_the_checkpoints_fusion(reference_policy, tmp_path):
    from research.push_estimate_errors import main
    from research.push_memory_probe import PushScenes
    from vla_ros.grounding import create_clip, save_clip_checkpoint

    other = tmp_path / "other_clip"  # the same architecture, other weights
    loaded = create_clip(seed=1)
    save_clip_checkpoint(loaded.model, other, loaded.model_cfg, loaded.preprocess_cfg)
    own = main([str(reference_policy), "--episodes", "1", "--prior-weights", "0"])
    same = main([str(reference_policy), "--episodes", "1", "--prior-weights", "0", "--clip",
                 str(reference_policy.parent / "clip")])
    swapped = main([str(reference_policy), "--episodes", "1", "--prior-weights", "0", "--clip", str(other)])
    assert same["rows"] == own["rows"] and swapped["clip"] == str(other)
    assert [r["median_error"] for r in swapped["rows"]] != [r["median_error"] for r in own["rows"]]
    with pytest.raises(ValueError, match="give both"):
        PushScenes(clip=str(other))


def test_push_estimate_errors_runs_trackers_and_previous_frame_priors(reference_policy, capsys):
    from research.push_estimate_errors import main, parse_tracker

    assert parse_tracker("1:2:4:prior") == {"sigma": 1.0, "weight": 2.0, "every": 4, "prior": True,
                                            "name": "track 1:2:4:prior"}
    report = main([str(reference_policy), "--episodes", "1", "--prior-weights", "0", "--track", "1:1:4",
                   "--previous", "1:4"])
    settings = {r["prior_weight"] for r in report["rows"]}
    assert settings == {0.0, "track 1:1:4", "previous 1:4"}
    assert all(r["median_error"] >= 0 for r in report["rows"] if r["frames"]) and "track" in capsys.readouterr().out


def test_push_failures_sorts_every_episode_into_one_outcome(reference_policy, tmp_path, capsys):
    from research.push_failures import OUTCOMES, classify, main

    assert classify(False, False, 0.005, False) == "untouched" and classify(False, False, 0.05, True) == "off_direction"
    assert classify(True, False, 0.09, False) == "success" and classify(False, False, 0.05, False) == "short"
    for actor in ([], ["--expert"]):
        report = main([str(reference_policy), "--episodes", "2", *actor, "--json", str(tmp_path / "f.json")])
        assert sum(r["episodes"] for r in report["rows"]) == 2
        assert {r["outcome"] for r in report["rows"]} <= set(OUTCOMES)
        assert all(e["steps"] > 0 and e["closest_approach_m"] >= 0 for e in report["per_episode"])
    assert report["actor"] == "expert" and (tmp_path / "f.json").is_file()
    assert "median_along_m" in capsys.readouterr().out


def test_push_failures_oracles_give_the_fusion_the_true_positions_of_both_frames(tmp_path):
    import torch
    from policy_fixtures import make_policy_checkpoint

    from research.push_failures import main, oracle_locator, oracle_reference_maps
    from vla_ros.policy.policy import Policy

    checkpoint = make_policy_checkpoint(tmp_path, task="push", fusion="region_map", reference_frame=True,
                                        peak_window=1.5, map_weights=False, object_locator=True)
    fusion = Policy.load(checkpoint).network.features_extractor.fusion
    fusion.object_locator, fusion.maps = oracle_locator(), oracle_reference_maps(fusion)
    fusion.object_locator.xy, fusion.maps.start_xy = torch.tensor([0.3, -0.2]), [-0.4, 0.1]
    patches = torch.randn(1, fusion.num_patches, fusion.embed_dim)
    text = torch.randn(1, fusion.embed_dim)
    fused = fusion.fuse(torch.randn(1, fusion.embed_dim), patches, text, torch.randn_like(patches))
    assert fused.reference_xy[0].tolist() == pytest.approx([-0.4, 0.1], abs=0.02)  # the start, not the map
    assert fused.xy[0].tolist() == pytest.approx([0.3, -0.2], abs=0.02)  # the current position
    report = main([str(checkpoint), "--episodes", "1", "--oracle-estimate", "--oracle-reference"])
    assert report["oracle_reference"] and sum(r["episodes"] for r in report["rows"]) == 1
    with pytest.raises(SystemExit):
        main([str(checkpoint), "--episodes", "1", "--oracle-reference"])


def test_push_prior_estimates_scores_every_prior_on_the_policys_own_decisions(reference_policy, capsys):
    from research.push_prior_estimates import STATES, main

    report = main([str(reference_policy), "--episodes", "1", "--prior-weights", "2", "--spreads", "1"])
    assert {r["prior"] for r in report["rows"]} == {"none", "map x2", "spread 1 x2"}
    assert len(report["rows"]) == 3 * len(STATES) and sum(r["decisions"] for r in report["rows"]) > 0
    assert "spread 1 x2" in capsys.readouterr().out


def test_temporal_ensemble_averages_every_plan_covering_a_frame_oldest_first():
    from research.push_chunk_ensemble import TemporalEnsemble

    ensemble = TemporalEnsemble(predicted=4, action_dim=1, every=2, decay=np.log(2.0))
    assert ensemble.decides
    ensemble.add(np.array([0.1, 0.2, 0.3, 0.4]))
    assert ensemble.action() == pytest.approx([0.1]) and not ensemble.decides
    assert ensemble.action() == pytest.approx([0.2]) and ensemble.decides
    ensemble.add(np.array([0.9, 0.9, 0.9, 0.9]))  # frame 2: the old plan (weight 1) and the new one (weight 1/2)
    assert ensemble.action() == pytest.approx([(0.3 + 0.45) / 1.5])
    with pytest.raises(ValueError, match="every"):
        TemporalEnsemble(predicted=4, action_dim=1, every=5, decay=0.0)


def test_push_chunk_ensemble_runs_a_chunked_policy_and_refuses_a_single_step_one(tmp_path, capsys):
    from policy_fixtures import make_policy_checkpoint

    from research.push_chunk_ensemble import main

    chunked = make_policy_checkpoint(tmp_path / "chunked", task="push", fusion="region_map", reference_frame=True,
                                     action_chunk=4, chunk_execute=2)
    report = main([str(chunked), "--episodes", "1", "--every", "2"])
    assert sum(r["episodes"] for r in report["rows"]) == 1 and "outcome" in capsys.readouterr().out
    single = make_policy_checkpoint(tmp_path / "single", task="push", fusion="region_map", reference_frame=True)
    with pytest.raises(SystemExit, match="not a chunked policy"):
        main([str(single), "--episodes", "1"])


def test_push_expert_phases_reports_phases_after_contact_and_the_noisy_expert(reference_policy, tmp_path, capsys):
    from research.push_expert_phases import PHASES, main

    report = main([str(reference_policy), "--episodes", "2", "--takeover", "3", "--noise", "0", "0.5",
                   "--noise-episodes", "2", "--json", str(tmp_path / "p.json")])
    assert sum(r["episodes"] for r in report["phase_rows"]) == 2
    assert all(f"{phase}_share" in row for row in report["phase_rows"] for phase in PHASES)
    handover = report["takeover"]
    assert handover["taken_over"] + handover["finished_by_policy"] <= 2 and handover["finished_by_expert"] >= 0
    assert [r["noise"] for r in report["noise_rows"]] == [0.0, 0.5]
    assert all(0.0 <= r["success"] <= 1.0 and r["median_steps"] > 0 for r in report["noise_rows"])
    assert (tmp_path / "p.json").is_file() and "noise" in capsys.readouterr().out


def test_push_outcome_overlap_counts_shared_and_exclusive_successes(tmp_path, capsys):
    import json

    from research.push_outcome_overlap import main

    def report(name, successes):
        path = tmp_path / f"push_failures_{name}.json"
        path.write_text(json.dumps({"per_episode": [{"seed": s, "outcome": "success" if ok else "short"}
                                                    for s, ok in enumerate(successes)]}))
        return str(path)

    a, b = report("a", [1, 1, 0, 0]), report("b", [1, 0, 1, 0])
    rows = main([a, b, "--json", str(tmp_path / "o.json")])
    assert rows == [{"a": "a", "b": "b", "scenes": 4, "success_a": 2, "success_b": 2, "both": 1, "only_a": 1,
                     "only_b": 1, "both_if_independent": 1.0, "union": 3}]
    assert "both_if_independent" in capsys.readouterr().out and (tmp_path / "o.json").exists()
    with pytest.raises(ValueError, match="different scenes"):
        main([a, report("c", [1, 0, 1])])


def test_done_task_heads_scores_joint_and_per_task_heads_on_held_out_episodes(tmp_path, capsys):
    """On cached episodes (the collection is vla-ros train-done's, tested with it): a separable signal is found."""
    from research.done_task_heads import main

    rng = np.random.default_rng(0)
    parts = {}
    for prefix, episodes in (("train", 40), ("val", 40)):
        rows = {"features": [], "labels": [], "episode": [], "step": [], "task": []}
        for episode in range(episodes):
            task = episode % 2
            success_from = int(rng.integers(3, 8))
            for step in range(12):
                label = step >= success_from
                rows["features"].append([float(label) + rng.normal(0, 0.05), float(task)])
                rows["labels"].append(label)
                rows["episode"].append(episode)
                rows["step"].append(step)
                rows["task"].append(task)
        parts.update({f"{prefix}_{k}": np.asarray(v, np.float32 if k == "features" else None)
                      for k, v in rows.items()})
    cache = tmp_path / "done.npz"
    np.savez(cache, **parts)
    report = main(["unused", "--cache", str(cache), "--head-seeds", "0", "--json", str(tmp_path / "d.json")])
    assert {(r["variant"], r["task"]) for r in report["rows"]} == {(v, t) for v in ("joint", "per_task")
                                                                   for t in ("reach", "push")}
    assert all(r["held_out_precision"] >= 0.9 and r["held_out_recall"] >= 0.9 for r in report["rows"])
    assert "held_out_recall" in capsys.readouterr().out and (tmp_path / "d.json").exists()


def test_done_geometry_probe_finds_a_signal_that_only_the_privileged_geometry_carries(tmp_path, capsys):
    """On cached episodes whose label is the fingertip's distance to the object: the geometry variant finds it,
    the policy's inputs (noise here) do not; the collection's privileged rows are tested with train-done's."""
    from research.done_geometry_probe import main

    rng = np.random.default_rng(0)
    parts = {}
    for prefix, episodes in (("train", 60), ("val", 60)):
        rows = {"features": [], "labels": [], "episode": [], "step": [], "task": [], "privileged": []}
        for episode in range(episodes):
            task = episode % 2
            target = np.array([0.5, 0.0, 0.03]) + rng.normal(0, 0.05, 3)
            for step in range(12):
                fingertip = target + np.array([0.2 * (1 - step / 8), 0.0, 0.02]) + rng.normal(0, 0.003, 3)
                label = bool(np.linalg.norm(fingertip - target) < 0.05)
                skills = np.eye(5)[0 if task == 0 else 1]
                rows["features"].append(np.concatenate([rng.normal(0, 1, 3), skills]))
                rows["labels"].append(label)
                rows["episode"].append(episode)
                rows["step"].append(step)
                rows["task"].append(task)
                rows["privileged"].append(np.concatenate([fingertip, target, target, [1.0, 0.0, 0.0]]))
        parts.update({f"{prefix}_{k}": np.asarray(v, np.float32 if k in ("features", "privileged") else None)
                      for k, v in rows.items()})
    cache = tmp_path / "done.npz"
    np.savez(cache, **parts)
    report = main(["unused", "--cache", str(cache), "--head-seeds", "0", "--variants", "moved", "geometry",
                   "--json", str(tmp_path / "g.json")])
    by = {(r["variant"], r["task"]): r for r in report["rows"]}
    assert set(by) == {(v, t) for v in ("moved", "geometry") for t in ("reach", "push")}
    assert all(by[("geometry", t)]["held_out_recall"] >= 0.9 for t in ("reach", "push"))
    assert all(by[("geometry", t)]["held_out_precision"] >= 0.9 for t in ("reach", "push"))
    assert "held_out_recall" in capsys.readouterr().out and (tmp_path / "g.json").exists()


def test_the_done_rule_probes_plane_homography_inverts_the_cameras_projection():
    from research.done_rule_probe import plane_homography, to_plane
    from vla_ros.policy.fingertip_locator import camera_projection

    project = camera_projection()
    homography = plane_homography(project, 0.027)
    xy = np.random.default_rng(0).uniform([0.2, -0.3], [0.7, 0.3], size=(50, 2))
    image = project(np.concatenate([xy, np.full((50, 1), 0.027)], axis=1))
    assert np.abs(to_plane(homography, image.astype(np.float64)) - xy).max() < 2e-4  # float32 image positions


def test_first_rows_finds_each_episodes_first_step_in_any_order():
    from research.done_rule_probe import first_rows

    episode, step = np.array([7, 3, 7, 3, 9]), np.array([5, 1, 2, 0, 4])
    assert first_rows(episode, step).tolist() == [2, 3, 2, 3, 4]


def test_engaged_since_latches_within_each_episode_in_step_order():
    from research.done_rule_probe import engaged_since

    data = {"episode": np.array([2, 1, 2, 1, 2, 1]), "step": np.array([0, 0, 1, 1, 2, 2])}
    engaged_now = np.array([0, 0, 1, 0, 0, 1], bool)  # episode 2 engages at step 1, episode 1 at step 2
    assert engaged_since(data, engaged_now).tolist() == [False, False, True, False, True, True]


def test_done_rule_probe_finds_the_success_geometry_in_exact_estimates(tmp_path, capsys):
    """Cached episodes whose estimates are the objects' exact projections: every rule reaches the bars."""
    from research.done_rule_probe import main
    from vla_ros.policy.fingertip_locator import camera_projection

    project = camera_projection()
    rng = np.random.default_rng(0)
    rows = {"features": [], "labels": [], "episode": [], "step": [], "task": [], "privileged": []}
    for episode in range(80):
        task = episode % 2
        start = np.array([0.45, 0.0, 0.027]) + np.array([0.1, 0.1, 0.0]) * rng.uniform(-1, 1, 3)
        direction = np.array([0.0, 1.0, 0.0]) if episode % 4 < 2 else np.array([-1.0, 0.0, 0.0])
        for step in range(12):
            target = start + direction * (0.012 * step if task else 0.0)
            fingertip = target + (np.array([0.0, 0.0, 0.03 + 0.25 * max(0.0, 1 - step / 8)]) if not task
                                  else np.concatenate([-direction[:2] * (0.04 if step < 6 else 0.0), [0.12]]))
            label = bool(np.linalg.norm(fingertip - target) <= 0.05) if not task else \
                bool((target - start) @ direction >= 0.08)
            now, first = project(np.stack([target, start]))
            rows["features"].append(np.concatenate([now, first, now - first, np.zeros(2), np.eye(5)[task]]))
            rows["labels"].append(label)
            rows["episode"].append(episode)
            rows["step"].append(step)
            rows["task"].append(task)
            rows["privileged"].append(np.concatenate([fingertip, target, start, direction]))
    cache = tmp_path / "done.npz"
    np.savez(cache, **{f"val_{k}": np.asarray(v, np.float32 if k in ("features", "privileged") else None)
                       for k, v in rows.items()}, train_episode=np.zeros(0))
    report = main(["unused", "--inputs", "estimates", "--proprio-width", "2", "--cache", str(cache),
                   "--json", str(tmp_path / "r.json")])
    by = {r["rule"]: r for r in report["rows"]}
    assert set(by) == {"reach", "reach_located", "reach_true", "push", "push_located", "push_clear", "push_fingertip",
                       "push_fingertip_true", "push_true"}
    assert all(r["held_out_precision"] >= 0.95 and r["held_out_recall"] >= 0.9 for r in by.values()), by
    ends = report["episode_ends"]
    assert ends["reach"] == {"episodes": 40, "reached_success": 40, "ended_in_success": 40,
                             "median_final_m": pytest.approx(0.03, abs=1e-6)}
    assert ends["push"]["ended_in_success"] == 40 and ends["push"]["median_final_m"] == pytest.approx(0.132, abs=1e-6)
    assert "held_out_recall" in capsys.readouterr().out and (tmp_path / "r.json").exists()


def test_fit_seed_probe_refits_a_runs_demonstrations_keeping_what_the_run_froze(tmp_path, capsys):
    """A real tiny imitation run (object locator refitted, skill reader), then two fresh fits of its saved
    demonstrations: each loads as a Policy, keeps the run's locator and reader, and draws its own weights."""
    import json

    import torch

    from research.fit_seed_probe import main as probe
    from vla_ros.cli import main as vla_ros
    from vla_ros.paths import share_path
    from vla_ros.policy.checkpoint import load_network

    run = tmp_path / "run"
    assert vla_ros(["train", "--task", "mixed", "--clip", str(share_path("models", "clip")), "--fusion", "region_map",
                    "--reference-frame", "--no-map-weights", "--skill-reader", "--fusion-proprio",
                    "--object-locator", "--object-locator-refit", "--object-locator-epochs", "1",
                    "--bc-lr-schedule", "cosine",
                    "--bc-episodes", "2", "--dagger-rounds", "1", "--dagger-episodes", "1", "--bc-epochs", "1",
                    "--ppo-steps", "0", "--eval-episodes", "1", "--num-envs", "1", "--vec-env", "dummy",
                    "--fusion-dim", "32", "--hidden-dim", "32", "--out", str(run)]) == 0
    assert probe([str(run), "--fit-seeds", "3", "4", "--epochs", "1", "--json", str(tmp_path / "fits.json")]) == 0
    report = json.loads((tmp_path / "fits.json").read_text())
    assert report["rounds"] == 2 and [f["fit_seed"] for f in report["fits"]] == [3, 4]
    assert json.loads((run / "state.json").read_text())["config"]["bc_lr_schedule"] == "cosine"
    assert "2 rounds" in capsys.readouterr().out
    trained, _ = load_network(run / "final")
    fits = [load_network(f["checkpoint"])[0] for f in report["fits"]]  # the CLIP path resolves from the new folder
    for fit in fits:
        assert fit.features_extractor.fusion.object_locator is not None
        for (name, kept), (_, run_value) in zip(fit.named_parameters(), trained.named_parameters()):
            if "object_locator" in name:
                assert torch.equal(kept, run_value), name
        for (name, kept), (_, run_value) in zip(fit.named_buffers(), trained.named_buffers()):
            assert torch.equal(kept, run_value), name  # the skill reader's weights among them
    actor = [dict(f.named_parameters())["action_net.weight"] for f in (trained, *fits)]
    assert not torch.equal(actor[0], actor[1]) and not torch.equal(actor[1], actor[2])


def test_token_reader_swap_replaces_only_the_reader(tmp_path, capsys):
    """A mean-reader checkpoint (the shipped policy's network with a reader added) gets a token reader fitted in."""
    import json

    from research.token_reader_swap import main
    from vla_ros.paths import share_path
    from vla_ros.policy.checkpoint import build_network, save_checkpoint
    from vla_ros.policy.policy import Policy

    shipped = share_path("models", "policy")
    config = json.loads((shipped / "config.json").read_text())
    config.pop("format")
    config["network"]["skill_reader_width"] = 384
    config["clip"]["path"] = str((shipped / config["clip"]["path"]).resolve())
    config["training"] = {"config": {"seed": 3}}
    torch.manual_seed(0)
    network = build_network(config)
    with torch.no_grad():
        network.features_extractor.fusion.skill_weight.normal_()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    save_checkpoint(tmp_path / "mean", network, config)
    report = main([str(tmp_path / "mean"), str(tmp_path / "tokens")])
    assert report["seed"] == 3 and report["token_reader"]["accuracy"] > 0.99
    swapped = Policy.load(tmp_path / "tokens")
    assert swapped.config["network"]["skill_reader_tokens"] and swapped.command_skill_reader is not None
    after = swapped.network.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # the reader's buffers (under the extractor and its actor / critic aliases), nothing else
    assert {"features_extractor.fusion.skill_weight", "features_extractor.fusion.skill_bias"} <= changed
    assert all(k.endswith(("fusion.skill_weight", "fusion.skill_bias")) for k in changed)
    assert swapped.command_skill_reader.logits(["push the red cube to the left"]).argmax().item() == 1
    assert "token_reader" in capsys.readouterr().out


def test_reach_estimate_probe_measures_estimate_errors_and_where_misses_end():
    """Synthetic reach rows: exact estimates in one episode, a first-frame map 5 cm off in another that misses."""
    from research.reach_estimate_probe import estimate_errors, shape_at_height
    from vla_ros.policy.fingertip_locator import camera_projection

    project = camera_projection()
    rows = {"features": [], "labels": [], "episode": [], "step": [], "privileged": []}
    target = np.array([0.45, 0.05, 0.027])
    for episode, (map_offset, end) in enumerate(((0.0, 0.03), (0.05, 0.08))):
        for step in range(10):
            fingertip = target + [end * step / 9 if episode else 0.0, 0.0, 0.25 - (0.25 - end) * step / 9]
            located, first = project(np.stack([target, target + [map_offset, 0.0, 0.0]]))
            rows["features"].append(np.concatenate([located, first, np.zeros(3)]))
            rows["labels"].append(bool(np.linalg.norm(fingertip - target) <= 0.05))
            rows["episode"].append(episode)
            rows["step"].append(step)
            rows["privileged"].append(np.concatenate([fingertip, target, target, np.zeros(3)]))
    data = {k: np.asarray(v) for k, v in rows.items()}
    report = estimate_errors(data, project)
    first = report["estimates"]["first_frame"]
    assert first["observations"] == 2 and first["locator_median_m"] < 1e-3
    assert first["first_frame_map_off_share"] == 0.5  # the second episode's map is 5 cm off (> 3 cm)
    assert report["episodes"] == 2 and [m["episode"] for m in report["misses"]] == [1]
    assert report["by_shape"] == {"cube": {"episodes": 2, "reached": 1}} and report["misses"][0]["shape"] == "cube"
    assert [shape_at_height(h) for h in (0.027, 0.0301, 0.035, 0.05)] == ["cube", "ball", "cylinder", "?"]
    miss = report["misses"][0]
    assert miss["apart_m"] == pytest.approx(0.08, abs=1e-3) and miss["height_above_object_m"] == pytest.approx(0.08)
    assert miss["first_frame_map_error_m"] == pytest.approx(0.05, abs=1e-3) and miss["object_moved_m"] == 0.0
