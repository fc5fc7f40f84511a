"""ClipEncoder on real tiny open_clip models: local loading round trips, batching, cache, errors."""

import json

import numpy as np
import open_clip
import pytest
import torch

from vla_ros.grounding import (
    TINY_CLIP_NAME,
    ClipEncoder,
    create_clip,
    load_clip,
    save_clip_checkpoint,
    sha256_file,
    tiny_clip_config,
)
from vla_ros.grounding.checkpoint import CONFIG_FILE, WEIGHTS_FILE


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    """A randomly initialised tiny CLIP saved as an open_clip local-dir checkpoint."""
    loaded = create_clip(TINY_CLIP_NAME, seed=0)
    out = tmp_path_factory.mktemp("clip")
    save_clip_checkpoint(loaded.model, out, loaded.model_cfg, loaded.preprocess_cfg,
                         metadata={"note": "test"})
    return out, loaded.model


@pytest.fixture(scope="module")
def encoder(saved_dir):
    return ClipEncoder.from_pretrained(saved_dir[0])


def frames(n, size=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_local_dir_round_trip_matches_original_model_exactly(saved_dir, encoder):
    folder, original = saved_dir
    assert (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()
    assert json.loads((folder / CONFIG_FILE).read_text())["model_cfg"] == tiny_clip_config()
    x = encoder.preprocess(frames(3))
    tokens = open_clip.get_tokenizer(TINY_CLIP_NAME)(["a red cube", "the blue ball"])
    # frozen like the encoder's copy: nn.MultiheadAttention takes its fused fast path only then
    original.eval().requires_grad_(False)
    with torch.no_grad():
        assert torch.equal(original.encode_image(x, normalize=True),
                           encoder.model.encode_image(x, normalize=True))
        assert torch.equal(original.encode_text(tokens, normalize=True),
                           encoder.encode_text(["a red cube", "the blue ball"]))
    assert encoder.weights_sha256 == sha256_file(folder / WEIGHTS_FILE)
    assert encoder.metadata == {"note": "test"}


def test_plain_open_clip_loads_the_folder(saved_dir, encoder):
    folder, _ = saved_dir
    model, _, _ = open_clip.create_model_and_transforms("local-dir:" + str(folder))
    x = encoder.preprocess(frames(2))
    with torch.no_grad():
        assert torch.equal(model.eval().encode_image(x), encoder.model.encode_image(x))


def test_model_name_with_local_weights_file(saved_dir, encoder):
    folder, _ = saved_dir
    by_name = ClipEncoder.from_pretrained(TINY_CLIP_NAME, pretrained=folder / WEIGHTS_FILE)
    batch = frames(2)
    assert torch.equal(by_name.encode_images(batch).global_embedding,
                       encoder.encode_images(batch).global_embedding)


def test_fp16_storage_loads_back_to_fp32(tmp_path, saved_dir):
    _, original = saved_dir
    loaded = create_clip(TINY_CLIP_NAME, seed=0)
    save_clip_checkpoint(loaded.model, tmp_path, loaded.model_cfg, loaded.preprocess_cfg, dtype=torch.float16)
    reloaded = load_clip(tmp_path)
    weight = reloaded.model.visual.conv1.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, loaded.model.visual.conv1.weight.half().float())


def test_image_features_shapes_and_normalisation(encoder):
    feats = encoder.encode_images(frames(5))
    assert encoder.image_size == 64 and encoder.embed_dim == 128 and encoder.num_patches == 64
    assert feats.global_embedding.shape == (5, 128) and feats.patches.shape == (5, 64, 128)
    assert feats.grid_size == (8, 8)
    torch.testing.assert_close(feats.global_embedding.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(feats.patches.norm(dim=-1), torch.ones(5, 64))


def test_global_embedding_matches_open_clip(encoder):
    batch = frames(4)
    with torch.no_grad():
        reference = encoder.model.encode_image(encoder.preprocess(batch), normalize=True)
    torch.testing.assert_close(encoder.encode_images(batch).global_embedding, reference)


def test_batching_matches_single_frames(encoder):
    batch = frames(4)
    together = encoder.encode_images(batch)
    for i in range(4):
        alone = encoder.encode_images(batch[i])
        torch.testing.assert_close(alone.global_embedding[0], together.global_embedding[i],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(alone.patches[0], together.patches[i], atol=1e-5, rtol=1e-5)


def test_opencv_preprocessing_matches_open_clip_transform_for_native_size(encoder):
    from PIL import Image

    _, _, transform = open_clip.create_model_and_transforms(TINY_CLIP_NAME)
    frame = frames(1)[0]
    reference = transform(Image.fromarray(frame)).unsqueeze(0)
    torch.testing.assert_close(encoder.preprocess(frame), reference, atol=1e-5, rtol=1e-5)


def test_non_square_frames_are_resized_and_centre_cropped(encoder):
    frame = np.zeros((120, 160, 3), dtype=np.uint8)
    frame[:, :10] = 255  # a white band on the left that the centre crop removes
    x = encoder.preprocess(frame)
    assert x.shape == (1, 3, 64, 64)
    geo = encoder.frame_geometry(120, 160)
    assert geo.to_model(80, 60) == pytest.approx((32.0, 32.0), abs=0.5)
    assert torch.allclose(x[0, :, :, 0], x[0, :, :, 32])  # band cropped away: left column is table-dark


def test_text_cache_hits_and_misses(encoder):
    encoder.clear_text_cache()
    first = encoder.encode_text(["touch the red cube", "go to the blue ball", "touch the red cube"])
    assert (encoder.cache_misses, encoder.cache_hits) == (3, 0)
    second = encoder.encode_text(["touch the red cube"])
    assert encoder.cache_hits == 1
    assert torch.equal(first[0], second[0]) and torch.equal(first[0], first[2])
    assert first.shape == (3, 128)
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(3))


def test_text_cache_is_bounded(saved_dir):
    small = ClipEncoder.from_pretrained(saved_dir[0], text_cache_size=2)
    out = small.encode_text(["a", "b", "c"])
    assert len(small._text_cache) == 2 and out.shape == (3, 128)
    torch.testing.assert_close(out[0], small.encode_text(["a"])[0])


@pytest.mark.parametrize("bad, error", [
    (np.zeros((64, 64, 3), dtype=np.float32), TypeError),
    (np.zeros((64, 64), dtype=np.uint8), ValueError),
    (np.zeros((64, 64, 4), dtype=np.uint8), ValueError),
    (np.zeros((2, 3, 64, 64), dtype=np.uint8), ValueError),
    (np.zeros((0, 64, 64, 3), dtype=np.uint8), ValueError),
    (torch.zeros(64, 64, 3, dtype=torch.uint8), TypeError),
])
def test_bad_frames_raise(encoder, bad, error):
    with pytest.raises(error):
        encoder.encode_images(bad)


def test_bad_text_raises(encoder):
    with pytest.raises(ValueError, match="empty"):
        encoder.encode_text(["   "])
    with pytest.raises(ValueError, match="empty"):
        encoder.encode_text([])
    with pytest.raises(ValueError, match="context of 32"):
        encoder.encode_text(["touch the red cube " * 10])
    with pytest.raises(TypeError):
        encoder.encode_text("a single string")
    with pytest.raises(TypeError):
        encoder.encode_text([3])


def test_missing_files_and_hub_names_raise(tmp_path, saved_dir):
    with pytest.raises(FileNotFoundError):
        ClipEncoder.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE):
        ClipEncoder.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        ClipEncoder.from_pretrained(TINY_CLIP_NAME, pretrained=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="hub"):
        ClipEncoder.from_pretrained("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    with pytest.raises(ValueError, match="hub"):
        ClipEncoder.from_pretrained("ViT-B-32", pretrained="openai")
    with pytest.raises(ValueError, match="pretrained="):
        ClipEncoder.from_pretrained("ViT-B-32")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        ClipEncoder.from_pretrained("not-a-model", pretrained=saved_dir[0] / WEIGHTS_FILE)
    with pytest.raises(ValueError, match="precision"):
        ClipEncoder.from_pretrained(saved_dir[0], precision="int3")


def test_fp16_runs_and_stays_close_to_fp32(saved_dir, encoder):
    half = ClipEncoder.from_pretrained(saved_dir[0], precision="fp16")
    batch = frames(2)
    a, b = half.encode_images(batch), encoder.encode_images(batch)
    assert a.global_embedding.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a.global_embedding, b.global_embedding).min() > 0.99
    text = half.encode_text(["touch the red cube"])
    reference = encoder.encode_text(["touch the red cube"])
    assert torch.nn.functional.cosine_similarity(text, reference).item() > 0.99


def test_128px_variant_keeps_the_token_grid_and_maps_frame_pixels(tmp_path):
    from vla_ros.grounding.config import TINY_CLIP_128_NAME

    cfg = tiny_clip_config(TINY_CLIP_128_NAME)
    assert (cfg["vision_cfg"]["image_size"], cfg["vision_cfg"]["patch_size"]) == (128, 16)
    assert tiny_clip_config()["vision_cfg"]["image_size"] == 64  # the base config is not modified
    loaded = create_clip(TINY_CLIP_128_NAME, seed=0)
    save_clip_checkpoint(loaded.model, tmp_path, loaded.model_cfg, loaded.preprocess_cfg)
    encoder = ClipEncoder.from_pretrained(tmp_path)
    assert encoder.image_size == 128 and tuple(encoder.grid_size) == (8, 8)
    features = encoder.encode_images(frames(2, size=128))
    assert features.patches.shape == (2, 64, encoder.embed_dim)
    # a 64 px frame is upsampled to the model input: pixel (u, v) lands at (2u, 2v)
    assert encoder.frame_geometry(64, 64).to_model(10.0, 20.0) == pytest.approx((20.0, 40.0))
    with pytest.raises(ValueError, match="no built-in config"):
        tiny_clip_config("vla-tiny-clip-256")
