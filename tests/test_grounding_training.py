"""CLIP data generation from the simulator and the train-clip loop (tiny sizes, real parts)."""

import json

import numpy as np
import pytest
import torch

from vla_ros.grounding import ClipEncoder, create_clip, save_clip_checkpoint
from vla_ros.grounding.data import CaptionSampler, SceneDataset, generate_scenes
from vla_ros.grounding.training import ClipTrainer, TrainClipConfig


@pytest.fixture(scope="module")
def instructions():
    from vla_ros.envs.instructions import load_instructions

    return load_instructions()


def test_generated_scenes_hold_only_the_split_combos(tmp_path, instructions):
    data = generate_scenes(6, seed=3, split="train", moved_arm_fraction=0.5, distractor_fraction=0.5)
    assert data.images.shape == (6, 64, 64, 3) and data.images.dtype == np.uint8
    assert data.pixels.shape == (6, 5, 2)
    valid = data.valid
    assert valid.sum(axis=1).min() >= 3
    assert ((data.pixels[valid] >= 0) & (data.pixels[valid] < 64)).all()
    combos = {(data.colour_names[c], data.shape_names[s])
              for c, s in zip(data.colours[valid], data.shapes[valid])}
    assert not combos & instructions.heldout_combos
    heldout = generate_scenes(4, seed=3, split="heldout_combos")
    targets = {(heldout.colour_names[heldout.colours[i, t]], heldout.shape_names[heldout.shapes[i, t]])
               for i, t in enumerate(heldout.target)}
    assert targets <= instructions.heldout_combos
    path = tmp_path / "scenes.npz"
    data.save(path)
    again = SceneDataset.load(path)
    assert np.array_equal(again.images, data.images) and list(again.commands) == list(data.commands)


def test_contact_scenes_show_the_fingertip_at_a_moved_object(instructions):
    """Mid-push scenes: the expert pushed, so the commanded object left its start and the fingertip is near it."""
    from vla_ros.envs.tabletop import TabletopEnv

    data = generate_scenes(6, seed=700_000, split="train", contact=True)
    assert data.images.shape == (6, 64, 64, 3) and all(command.split()[0] in
                                                       ("push", "move", "slide", "shove", "nudge", "give")
                                                       for command in data.commands)
    valid = data.valid
    combos = {(data.colour_names[c], data.shape_names[s]) for c, s in zip(data.colours[valid], data.shapes[valid])}
    assert not combos & instructions.heldout_combos
    env = TabletopEnv(task="push", render_observation=False)
    moved = []
    try:
        for i in range(len(data)):  # the same seed's reset puts the target where it started
            _, info = env.reset(seed=700_000 + i)
            start = info["objects"][info["target"]["index"]]["position"]
            moved.append(np.linalg.norm(data.positions[i, data.target[i], :2] - start[:2]))
    finally:
        env.close()
    assert max(moved) > 0.02  # at least one push got under way (steps are drawn from 10-45)
    with pytest.raises(ValueError, match="contact"):
        generate_scenes(1, contact=True, corrupted=True)


def test_captions_describe_the_scene(instructions):
    sampler = CaptionSampler.from_instructions(instructions)
    colours, shapes = np.array([0, 2]), np.array([0, 1])  # red cube, blue ball (file order)
    positions = np.array([[0.3, 0.1, 0.0], [0.3, -0.1, 0.0]])  # red on the robot's (image) left
    assert sampler.scene_caption(colours, shapes, positions) == "a red cube and a blue ball"
    rng = np.random.default_rng(0)
    assert sampler.relation(positions[0], positions[1], rng) == "left of"
    for _ in range(50):
        text, colour, shape = sampler.object_caption(0, 1, rng)
        assert colour in (0, -1) and shape in (1, -1) and (colour, shape) != (-1, -1)
        assert ("red" in text) == (colour == 0)
        for template in instructions.templates["reach"]["heldout"]:
            assert text != template.format(colour="red", shape="ball")


def small_config(out, **overrides):
    values = dict(out=str(out), steps=4, batch_size=8, train_scenes=24, eval_scenes=8, eval_every=2,
                  checkpoint_every=2, warmup_steps=1, threads=1, distractor_fraction=0.0, jitter_fraction=0.0,
                  moved_arm_fraction=0.0)
    values.update(overrides)
    return TrainClipConfig(**values)


def test_training_resumes_exactly_and_exports_a_loadable_model(tmp_path):
    straight = ClipTrainer(small_config(tmp_path / "a"))
    straight.train()

    first = ClipTrainer(small_config(tmp_path / "b"))
    assert first.train(until_step=2) is None  # "interrupted" after step 2
    assert not (tmp_path / "b" / "model").exists()
    resumed = ClipTrainer(small_config(tmp_path / "b"), resume=True)
    assert resumed.step == 2
    resumed.train()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name

    encoder = ClipEncoder.from_pretrained(tmp_path / "a" / "model")
    assert encoder.metadata["steps"] == 4
    assert set(encoder.metadata["metrics"]["zero_shot_accuracy"]) == {"train_combos", "heldout_combos"}
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4]


def test_lora_adaptation_of_a_local_pretrained_model(tmp_path):
    base = create_clip("vla-tiny-clip", seed=5)
    save_clip_checkpoint(base.model, tmp_path / "base", base.model_cfg, base.preprocess_cfg)
    trainer = ClipTrainer(small_config(tmp_path / "run", steps=2, eval_every=2,
                                       init_from=str(tmp_path / "base"),
                                       adapter="lora", lora_rank=2))
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    trainer.train()
    for name, param in trainer.model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
    adapted = ClipEncoder.from_pretrained(tmp_path / "run" / "model")
    original = ClipEncoder.from_pretrained(tmp_path / "base")
    assert set(adapted.model.state_dict()) == set(original.model.state_dict())
    frames = np.zeros((1, 64, 64, 3), np.uint8)
    assert not torch.allclose(adapted.encode_images(frames).global_embedding,
                              original.encode_images(frames).global_embedding, atol=1e-4)


def test_trimmed_text_encoding_matches_open_clip():
    from vla_ros.grounding.training import encode_text_trimmed

    loaded = create_clip("vla-tiny-clip", seed=1)
    tokens = loaded.tokenizer(["touch the red cube", "a ball", "an orange can left of a green block"])
    with torch.no_grad():
        torch.testing.assert_close(encode_text_trimmed(loaded.model, tokens), loaded.model.encode_text(tokens),
                                   atol=1e-5, rtol=1e-5)


def test_named_novel_colours_repaint_each_object_and_name_it(tmp_path):
    import cv2

    from vla_ros.grounding.training import NAMED_NOVEL_HUE_BANDS, NOVEL_COLOUR_NAMES, repaint_each_object

    scenes = generate_scenes(2, seed=7, image_size=64)
    frame, pixels = scenes.images[0], scenes.pixels[0][scenes.valid[0]]
    bands = np.arange(len(pixels)) % len(NAMED_NOVEL_HUE_BANDS)
    repainted = repaint_each_object(frame, pixels, bands, np.random.default_rng(0))
    hsv = cv2.cvtColor(repainted, cv2.COLOR_RGB2HSV)
    for (u, v), band in zip(pixels, bands):  # each object's own pixel takes its own band's hue
        low, high = NAMED_NOVEL_HUE_BANDS[band]
        assert low / 2 - 1 <= hsv[int(v), int(u), 0] <= high / 2 + 1
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV)[..., 1] <= 70  # the table and arm keep their look
    assert np.array_equal(repainted[grey], frame[grey])

    trainer = ClipTrainer(small_config(tmp_path, name_novel_colours=True, novel_colour_fraction=1.0))
    palette = len(trainer.train_data.colour_names)
    assert trainer.sampler.colour_names[palette:] == NOVEL_COLOUR_NAMES
    loss, parts = trainer.batch_loss(np.arange(4))
    assert torch.isfinite(loss) and parts["pick"] > 0


def test_dense_pick_term_rewards_the_named_object_over_another(tmp_path):
    trainer = ClipTrainer(small_config(tmp_path, dense_pick_weight=1.0, novel_colour_fraction=0.0))
    loss, parts = trainer.batch_loss(np.arange(4))
    assert torch.isfinite(loss) and parts["dense"] > 0

    # one scene, two objects, a caption naming object 0: patch tokens equal to the caption's embedding
    # around object 0 must score better than the same tokens around object 1
    grid, size = trainer.grid_size, trainer.preprocessor.size
    pixels = torch.tensor([[[8.0, 8.0], [56.0, 56.0]]])
    text = torch.nn.functional.normalize(torch.randn(1, 16), dim=-1)
    background = torch.nn.functional.normalize(torch.randn(grid[0] * grid[1], 16), dim=-1)

    def loss_with_text_at(u, v):
        tokens = background.clone()
        tokens[int(v // (size / grid[0])) * grid[1] + int(u // (size / grid[1]))] = text[0] * 5
        return trainer._dense_pick_loss(tokens[None], pixels, torch.tensor([[True, False]]), np.array([0]),
                                        text, torch.tensor(10.0))

    assert loss_with_text_at(8, 8) < loss_with_text_at(56, 56)


def test_rgb_to_vsh_matches_opencv_hsv():
    import cv2

    from vla_ros.grounding.preprocess import HUE_ORIGIN_DEG, rgb_to_vsh

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    frame[0, :3] = [(128, 128, 128), (230, 20, 20), (20, 20, 230)]  # grey, red, blue
    vsh = rgb_to_vsh(torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255)[0].permute(1, 2, 0).numpy()
    hsv = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)  # hue 0-255 for 0-360 degrees
    assert np.abs(vsh[..., 0] * 255 - hsv[..., 2]).max() <= 0.5
    assert np.abs(vsh[..., 1] * 255 - hsv[..., 1]).max() <= 0.5
    saturated = vsh[..., 1] >= 0.3  # full hue weight
    hue_deg = (vsh[..., 2] * 360 + HUE_ORIGIN_DEG) % 360
    error = np.abs((hue_deg - hsv[..., 0] * 360 / 256 + 180) % 360 - 180)
    assert saturated.sum() > 100 and error[saturated].max() < 1.5
    assert vsh[0, 0, 2] == 0.0  # grey has no hue
    assert vsh[0, 1, 2] != vsh[0, 2, 2]  # red and blue differ only there...
    assert abs(vsh[0, 1, 1] - vsh[0, 2, 1]) < 1e-6 and abs(vsh[0, 1, 0] - vsh[0, 2, 0]) < 1e-6  # ...not here


def test_a_vsh_clip_records_its_colour_space_and_is_read_that_way(tmp_path):
    from vla_ros.grounding.preprocess import FramePreprocessor

    trainer = ClipTrainer(small_config(tmp_path / "vsh", steps=2, colour_space="vsh"))
    trainer.train()
    encoder = ClipEncoder.from_pretrained(tmp_path / "vsh" / "model")
    assert encoder.metadata["colour_space"] == "vsh" and encoder.preprocessor.colour_space == "vsh"
    frames = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    as_rgb = FramePreprocessor(64)(frames)
    assert not torch.allclose(encoder.preprocessor(frames), as_rgb)
    # the same weights fed RGB compute something else: the colour space is part of the model
    with torch.no_grad():
        pooled_vsh = encoder.model.encode_image(encoder.preprocessor(frames))
        pooled_rgb = encoder.model.encode_image(as_rgb)
    assert not torch.allclose(pooled_vsh, pooled_rgb, atol=1e-4)
    assert torch.allclose(encoder.encode_images(frames).global_embedding,
                          torch.nn.functional.normalize(pooled_vsh, dim=-1), atol=1e-5)
    with pytest.raises(ValueError, match="reads 'vsh' images"):
        ClipTrainer(small_config(tmp_path / "rgb", init_from=str(tmp_path / "vsh" / "model")))
    with pytest.raises(ValueError, match="colour_space"):
        FramePreprocessor(64, colour_space="lab")
