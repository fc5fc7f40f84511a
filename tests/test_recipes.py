"""Recipes: ``--config FILE`` for train and train-clip, and the recipe beside every shipped model rebuilds it."""

import json

import pytest

from vla_ros.cli import build_parser
from vla_ros.commands.dataclass_args import dataclass_from_args, load_recipe
from vla_ros.grounding.training import TrainClipConfig
from vla_ros.paths import share_path
from vla_ros.policy.train import TrainConfig


def _config(cls, argv):
    args = build_parser().parse_args(argv)
    return dataclass_from_args(cls, args, skip=("command",))


def test_flags_override_the_recipe_which_overrides_the_defaults(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("fusion: region_map\nreference-frame: true\nppo_steps: 1234\nnet_arch: [64, 32]\n")
    cfg = _config(TrainConfig, ["train", "--config", str(recipe), "--ppo-steps", "99"])
    assert cfg.fusion == "region_map" and cfg.reference_frame is True and cfg.net_arch == (64, 32)
    assert cfg.ppo_steps == 99  # the command line wins
    assert cfg.batch_size == TrainConfig().batch_size  # neither: the default
    cfg = _config(TrainConfig, ["train", "--config", str(recipe), "--no-reference-frame"])
    assert cfg.reference_frame is False
    assert _config(TrainConfig, ["train"]) == TrainConfig()


@pytest.mark.parametrize("text, match", [
    ("fusoin: late\n", "unknown field 'fusoin'"),
    ("ppo_steps: lots\n", "ppo_steps must be int"),
    ("reference_frame: 1\n", "reference_frame must be true or false"),
    ("- a\n- b\n", "mapping"),
    ("fusion: [\n", "not valid YAML"),
])
def test_a_bad_recipe_is_a_clear_error(tmp_path, text, match):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_recipe(TrainConfig, recipe, skip=("command",))
    with pytest.raises(SystemExit, match=match):
        from vla_ros.commands import train

        train.run(build_parser().parse_args(["train", "--config", str(recipe)]))


def test_train_clip_reads_a_recipe(tmp_path):
    recipe = tmp_path / "clip.yaml"
    recipe.write_text("text_tower: all-MiniLM-L6-v2\nbroad_vocabulary: true\nsteps: 10\nlr: 1\n")
    cfg = _config(TrainClipConfig, ["train-clip", "--config", str(recipe), "--steps", "3"])
    assert cfg.text_tower == "all-MiniLM-L6-v2" and cfg.broad_vocabulary and cfg.steps == 3 and cfg.lr == 1.0


def _recorded_clip_config(folder):
    return json.loads((folder / "open_clip_config.json").read_text())["vla_ros"]["config"]


def _recorded_policy_config(folder):
    return json.loads((folder / "config.json").read_text())["training"]["config"]


def _shipped_models():
    """Every shipped model folder: (path relative to the share folder, config class, recorded-config reader)."""
    found = []
    for folder in sorted(share_path("models").rglob("*")):
        name = str(folder.relative_to(share_path())).replace("\\", "/")
        if (folder / "config.json").is_file() and (folder / "policy.safetensors").is_file():
            found.append((name, TrainConfig, _recorded_policy_config))
        elif (folder / "open_clip_config.json").is_file():
            found.append((name, TrainClipConfig, _recorded_clip_config))
    return found


SHIPPED = _shipped_models()


@pytest.mark.parametrize("folder, cls, recorded", SHIPPED, ids=[s[0] for s in SHIPPED])
def test_each_shipped_model_has_the_recipe_that_made_it(folder, cls, recorded):
    path = share_path(*folder.split("/"))
    recipe = load_recipe(cls, path / "recipe.yaml", skip=("command",))
    rebuilt = cls(**recipe)
    trained_with = recorded(path)
    for name, value in trained_with.items():
        if name in ("out", "command", "clip", "init_from", "eval_episodes", "eval_every", "checkpoint_every",
                    "torch_threads", "threads"):
            continue  # where it ran and how often it reported, not what it learned
        mine = getattr(rebuilt, name)
        assert (list(mine) if isinstance(mine, tuple) else mine) == value, f"{folder}: {name}"
    if cls is TrainConfig:  # the policy's CLIP is the folder its recipe names (which holds the weights it read)
        config = json.loads((path / "config.json").read_text())
        assert (share_path() / rebuilt.clip).resolve() == (path / config["clip"]["path"]).resolve()


def test_the_shipped_clip_recipe_trains_end_to_end_with_a_reduced_budget(tmp_path):
    """The recipe models/clip/MODEL_CARD.md names, with only its sizes overridden on the command line."""
    from vla_ros.cli import main

    out = tmp_path / "clip"
    assert main(["train-clip", "--config", str(share_path("models", "clip", "recipe.yaml")), "--out", str(out),
                 "--steps", "2", "--batch-size", "8", "--train-scenes", "16", "--named-colour-scenes", "8",
                 "--eval-scenes", "6", "--eval-every", "2", "--checkpoint-every", "2", "--warmup-steps", "1"]) == 0
    recorded = _recorded_clip_config(out / "model")
    assert recorded["text_tower"] == "all-MiniLM-L6-v2" and recorded["steps"] == 2


def test_the_shipped_policy_recipe_trains_end_to_end_with_a_reduced_budget(tmp_path):
    """The recipe models/policy/MODEL_CARD.md names (on the shipped CLIP), with only its budget overridden."""
    from vla_ros.cli import main

    out = tmp_path / "policy"
    assert main(["train", "--config", str(share_path("models", "policy", "recipe.yaml")), "--out", str(out),
                 "--clip", str(share_path("models", "policy", "clip")), "--num-envs", "2", "--vec-env", "dummy",
                 "--bc-episodes", "2", "--dagger-rounds", "1", "--dagger-episodes", "2", "--bc-epochs", "1",
                 "--ppo-steps", "64", "--n-steps", "32", "--batch-size", "32", "--n-epochs", "1",
                 "--eval-every", "10000", "--eval-episodes", "2", "--checkpoint-every", "64"]) == 0
    recorded = _recorded_policy_config(out / "final")
    assert recorded["fusion"] == "region_map" and recorded["patch_stitch"] == 2 and recorded["ppo_steps"] == 64


def test_the_skills_research_recipe_reads_as_a_mixed_film_run():
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "research" / "recipes" / "skills_film.yaml"
    cfg = _config(TrainConfig, ["train", "--config", str(recipe)])
    assert cfg.task == "mixed" and cfg.command_film is True and cfg.fusion == "region_map"
    assert load_recipe(TrainConfig, recipe, skip=("command",))["ppo_steps"] == 120_000


def _research_recipe(name: str) -> dict:
    """``research/recipes/<name>.yaml`` as the TrainConfig it gives ``vla-ros train``, as a dict."""
    from dataclasses import asdict
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "research" / "recipes" / f"{name}.yaml"
    return asdict(_config(TrainConfig, ["train", "--config", str(recipe)]))


def _changed(before: dict, after: dict) -> set[str]:
    """The settings two recipes differ in (the recorded command line aside)."""
    return {k for k in before if before[k] != after[k]} - {"command"}


def test_the_skill_reader_research_recipe_differs_from_the_film_one_in_its_conditioning_only():
    film, reader = _research_recipe("skills_film"), _research_recipe("skills_reader")
    assert _changed(film, reader) == {"command_film", "skill_reader", "ppo_steps"}
    assert reader["skill_reader"] is True and reader["command_film"] is False and reader["task"] == "mixed"


def test_the_joint_state_recipe_differs_from_the_skill_reader_one_in_the_fusion_inputs_and_ppo_length_only():
    reader, proprio = _research_recipe("skills_reader"), _research_recipe("skills_proprio")
    assert _changed(reader, proprio) == {"fusion_proprio", "reference_prior", "ppo_steps"}
    assert proprio["fusion_proprio"] is True and proprio["reference_prior"] is True


def test_the_prior_ablation_recipe_differs_from_the_joint_state_one_in_fusion_proprio_only():
    proprio, prior = _research_recipe("skills_proprio"), _research_recipe("skills_prior")
    assert _changed(proprio, prior) == {"fusion_proprio"}
    assert prior["fusion_proprio"] is False and prior["reference_prior"] is True


def test_the_chunk_recipe_differs_from_the_joint_state_one_in_the_chunk_and_ppo_length_only():
    proprio, chunk = _research_recipe("skills_proprio"), _research_recipe("skills_chunk")
    assert _changed(proprio, chunk) == {"action_chunk", "chunk_execute", "ppo_steps"}
    assert (chunk["action_chunk"], chunk["chunk_execute"], chunk["ppo_steps"]) == (8, 4, 0)


def test_the_long_chunk_recipe_differs_from_the_chunk_one_in_the_chunk_only():
    chunk, long = _research_recipe("skills_chunk"), _research_recipe("skills_chunk16")
    assert _changed(chunk, long) == {"action_chunk", "chunk_execute"}
    assert (long["action_chunk"], long["chunk_execute"]) == (16, 8)


def test_the_current_estimate_recipe_differs_from_the_chunk_one_in_current_estimate_only():
    chunk, current = _research_recipe("skills_chunk"), _research_recipe("skills_current")
    assert _changed(chunk, current) == {"current_estimate"}
    assert current["current_estimate"] is True and current["reference_prior"] is True


def test_the_spread_prior_recipe_differs_from_the_chunk_one_in_prior_spread_only():
    chunk, spread = _research_recipe("skills_chunk"), _research_recipe("skills_spread")
    assert _changed(chunk, spread) == {"prior_spread"}
    assert spread["prior_spread"] == 1.0 and spread["reference_prior"] is True


def test_the_regularised_ppo_recipe_differs_from_the_current_estimate_one_in_its_ppo_only():
    current, ppo = _research_recipe("skills_current"), _research_recipe("skills_current_ppo")
    assert _changed(current, ppo) == {"ppo_steps", "ppo_imitation_weight"}
    assert (ppo["ppo_steps"], ppo["ppo_imitation_weight"], ppo["ppo_imitation_batches"]) == (30000, 1.0, 8)


def test_the_chunked_regularised_ppo_recipe_differs_from_the_chunk_one_in_its_ppo_only():
    chunk, ppo = _research_recipe("skills_chunk"), _research_recipe("skills_chunk_ppo")
    assert _changed(chunk, ppo) == {"ppo_steps", "ppo_imitation_weight"}


def test_the_spread_prior_ppo_recipe_differs_from_the_spread_one_in_its_ppo_only():
    spread, ppo = _research_recipe("skills_spread"), _research_recipe("skills_spread_ppo")
    assert _changed(spread, ppo) == {"ppo_steps", "ppo_imitation_weight", "ppo_selection"}
    assert (ppo["ppo_steps"], ppo["ppo_imitation_weight"], ppo["ppo_selection"]) == (30000, 3.0, "lowest_task")


def test_the_learner_dagger_recipe_differs_from_the_chunk_one_in_dagger_beta_only():
    chunk, learner = _research_recipe("skills_chunk"), _research_recipe("skills_learner_dagger")
    assert _changed(chunk, learner) == {"dagger_beta"}
    assert learner["dagger_beta"] == 0.0


def test_the_contact_clip_recipe_differs_from_the_shipped_clip_one_in_its_contact_scenes_only():
    from pathlib import Path

    shipped = load_recipe(TrainClipConfig, share_path("models", "clip", "recipe.yaml"), skip=("command",))
    contact = load_recipe(TrainClipConfig, Path(__file__).resolve().parents[1] / "research" / "recipes" /
                          "clip_contact.yaml", skip=("command",))
    assert {k for k in set(shipped) | set(contact) if shipped.get(k) != contact.get(k)} == {"contact_scenes"}
    assert contact["contact_scenes"] == 8000


def test_the_contact_recipe_differs_from_the_backoff_one_in_its_clip_only():
    backoff, contact = _research_recipe("skills_backoff"), _research_recipe("skills_contact")
    assert _changed(backoff, contact) == {"clip"}
    assert contact["clip"] == "runs/clip_contact/model"


def test_the_contact_current_recipe_differs_from_the_contact_one_in_current_estimate_only():
    contact, current = _research_recipe("skills_contact"), _research_recipe("skills_contact_current")
    assert _changed(contact, current) == {"current_estimate"}
    assert current["current_estimate"] is True and current["reference_prior"] is True


def test_the_contact_second_seed_recipe_differs_from_the_contact_one_in_its_seed_only():
    contact, seed1 = _research_recipe("skills_contact"), _research_recipe("skills_contact_seed1")
    assert _changed(contact, seed1) == {"seed"} and seed1["seed"] == 1


def test_the_takeover_recipe_adds_two_takeover_rounds_to_the_backoff_one_and_nothing_else():
    before, after = _research_recipe("skills_backoff"), _research_recipe("skills_takeover")
    assert _changed(before, after) == {"dagger_rounds", "dagger_takeover_rounds", "dagger_takeover_after"}
    assert (after["dagger_rounds"], after["dagger_takeover_rounds"]) == (before["dagger_rounds"] + 2, 2)


def test_the_repeated_takeover_recipe_differs_from_the_takeover_one_in_the_repeat_only():
    once, repeated = _research_recipe("skills_takeover"), _research_recipe("skills_takeover_x5")
    assert _changed(once, repeated) == {"dagger_takeover_repeat"} and repeated["dagger_takeover_repeat"] == 5


def test_the_dart_recipe_differs_from_the_backoff_one_in_the_action_noise_only():
    backoff, dart = _research_recipe("skills_backoff"), _research_recipe("skills_dart")
    assert _changed(backoff, dart) == {"bc_action_noise"} and dart["bc_action_noise"] == 0.3


def test_the_locator_recipe_swaps_the_backoff_ones_reference_prior_for_an_object_locator():
    backoff, locator = _research_recipe("skills_backoff"), _research_recipe("skills_locator")
    assert _changed(backoff, locator) == {"reference_prior", "object_locator"}
    assert locator["object_locator"] is True and locator["reference_prior"] is False


def test_the_value_detached_recipe_differs_from_the_backoff_one_in_the_value_detachment_only():
    backoff, detached = _research_recipe("skills_backoff"), _research_recipe("skills_value_detached")
    assert _changed(backoff, detached) == {"bc_value_detached"} and detached["bc_value_detached"] is True


def test_the_push_only_recipe_is_the_backoff_one_on_push_with_as_many_pushes():
    backoff, push = _research_recipe("skills_backoff"), _research_recipe("skills_push_only")
    assert _changed(backoff, push) == {"task", "bc_episodes", "dagger_episodes"}
    assert push["task"] == "push" and 2 * push["bc_episodes"] == backoff["bc_episodes"]
    assert 2 * push["dagger_episodes"] == backoff["dagger_episodes"]


def test_the_clip_apart_recipe_changes_the_backoff_ones_imitation_regime_only():
    backoff, apart = _research_recipe("skills_backoff"), _research_recipe("skills_clip_apart")
    assert _changed(backoff, apart) == {"bc_clip_apart", "bc_expert_every_step"}
    assert apart["bc_clip_apart"] is True and apart["bc_expert_every_step"] is True


def test_the_every_step_recipe_labels_every_round_instead_of_the_expert_round_only():
    apart, every = _research_recipe("skills_clip_apart"), _research_recipe("skills_every_step")
    assert _changed(apart, every) == {"bc_expert_every_step", "bc_label_every_step"}
    assert every["bc_label_every_step"] is True and every["bc_expert_every_step"] is False


def test_the_every_step_locator_recipe_is_the_locator_one_labelled_every_step():
    locator, every = _research_recipe("skills_locator"), _research_recipe("skills_every_step_locator")
    assert _changed(locator, every) == {"bc_label_every_step"} and every["bc_label_every_step"] is True


def test_the_locator_refit_recipe_refits_the_every_step_locator_ones_locator_only():
    every, refit = _research_recipe("skills_every_step_locator"), _research_recipe("skills_locator_refit")
    assert _changed(every, refit) == {"object_locator_refit"} and refit["object_locator_refit"] is True


def test_the_settle_recipe_is_the_locator_refit_one_settling_past_success():
    refit, settle = _research_recipe("skills_locator_refit"), _research_recipe("skills_settle")
    assert _changed(refit, settle) == {"bc_settle_steps"} and settle["bc_settle_steps"] == 8


def test_the_dagger500_recipe_differs_from_the_every_step_locator_one_in_its_dagger_episodes_only():
    base, more = _research_recipe("skills_every_step_locator"), _research_recipe("skills_dagger500")
    assert _changed(base, more) == {"dagger_episodes"}
    assert (base["dagger_episodes"], more["dagger_episodes"]) == (250, 500)


def test_the_settle_dagger500_recipe_differs_from_the_settle_one_in_its_dagger_episodes_only():
    settle, more = _research_recipe("skills_settle"), _research_recipe("skills_settle_dagger500")
    assert _changed(settle, more) == {"dagger_episodes"}
    assert more["dagger_episodes"] == 500 and more["bc_settle_steps"] == 8 and more["object_locator_refit"]


@pytest.mark.parametrize("base, filled", [("skills_settle", "skills_settle_filled"),
                                          ("skills_locator_refit", "skills_refit_filled")])
def test_a_filled_reader_recipe_differs_from_its_base_in_the_readers_fit_only(base, filled):
    before, after = _research_recipe(base), _research_recipe(filled)
    assert _changed(before, after) == {"skill_reader_filled"} and after["skill_reader_filled"] == 12


def test_the_annealed_recipe_differs_from_the_refit_one_in_its_fits_length_and_schedule_only():
    refit, annealed = _research_recipe("skills_locator_refit"), _research_recipe("skills_refit_annealed")
    assert _changed(refit, annealed) == {"bc_epochs", "bc_lr_schedule"}
    assert (annealed["bc_epochs"], annealed["bc_lr_schedule"]) == (60, "cosine")


def test_the_token_reader_recipe_differs_from_the_annealed_one_in_its_reader_only():
    annealed, tokens = _research_recipe("skills_refit_annealed"), _research_recipe("skills_token_reader")
    assert _changed(annealed, tokens) == {"skill_reader_tokens"} and tokens["skill_reader_tokens"] is True


def test_the_token_settle_recipe_differs_from_the_token_reader_one_in_settling_only():
    tokens, settle = _research_recipe("skills_token_reader"), _research_recipe("skills_token_settle")
    assert _changed(tokens, settle) == {"bc_settle_steps"} and settle["bc_settle_steps"] == 8


def test_the_token_hard_recipe_differs_from_the_token_reader_one_in_the_reading_only():
    tokens, hard = _research_recipe("skills_token_reader"), _research_recipe("skills_token_hard")
    assert _changed(tokens, hard) == {"skill_reader_hard"} and hard["skill_reader_hard"] is True


def test_the_token_hard_ppo_recipe_differs_from_the_token_hard_one_in_its_ppo_phase_only():
    hard, ppo = _research_recipe("skills_token_hard"), _research_recipe("skills_token_hard_ppo")
    assert _changed(hard, ppo) == {"ppo_steps", "ppo_imitation_weight", "ppo_selection"}
    assert (ppo["ppo_steps"], ppo["ppo_imitation_weight"], ppo["ppo_selection"]) == (30000, 3.0, "lowest_task")


def test_the_token_cone_recipe_differs_from_the_token_hard_one_in_its_reach_expert_only(tmp_path):
    from vla_ros.policy.train import TrainingRun

    hard, cone = _research_recipe("skills_token_hard"), _research_recipe("skills_token_cone")
    assert _changed(hard, cone) == {"expert_reach_approach"} and cone["expert_reach_approach"] == "cone"
    assert TrainConfig().expert_reach_approach == "hover"  # every earlier recipe's expert
    with pytest.raises(ValueError, match="expert_reach_approach"):
        TrainingRun(TrainConfig(expert_reach_approach="spiral", out=str(tmp_path)))


def test_the_token_hard_settle_recipe_differs_from_the_token_hard_one_in_its_settling_only():
    hard, settle = _research_recipe("skills_token_hard"), _research_recipe("skills_token_hard_settle")
    assert _changed(hard, settle) == {"bc_settle_steps"} and settle["bc_settle_steps"] == 8
