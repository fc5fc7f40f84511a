"""LoRA adaptation of a real open_clip model: starts identical, trains only adapters, merges, saves."""

import torch
from open_clip.loss import ClipLoss

from vla_ros.grounding import ClipEncoder, create_clip, save_clip_checkpoint
from vla_ros.grounding.lora import apply_lora, lora_parameters, merge_lora


def test_lora_starts_identical_trains_only_adapters_and_merges(tmp_path):
    loaded = create_clip("vla-tiny-clip", seed=0)
    model = loaded.model.train()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    images = torch.randn(8, 3, 64, 64)
    tokens = loaded.tokenizer([f"a {c} {s}" for c in ("red", "blue")
                               for s in ("cube", "ball", "can", "block")])
    with torch.no_grad():
        before = model.encode_image(images, normalize=True)

    trainable = apply_lora(model, rank=4)
    assert trainable and all(p.requires_grad for p in trainable)
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in trainable}
    assert len(lora_parameters(model)) == len(trainable)
    with torch.no_grad():  # B starts at zero: the adapted model is the base model
        torch.testing.assert_close(model.encode_image(images, normalize=True), before)

    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    losses = []
    for _ in range(15):
        image_emb = model.encode_image(images, normalize=True)
        text_emb = model.encode_text(tokens, normalize=True)
        loss = loss_fn(image_emb, text_emb, model.logit_scale.exp())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    # base weights untouched (the parametrization keeps them as ".original")
    state = model.state_dict()
    for key, value in base.items():
        original_key = key
        for suffix in ("in_proj_weight", "weight"):
            wrapped = key[: -len(suffix)] + f"parametrizations.{suffix}.original"
            if key.endswith(suffix) and wrapped in state:
                original_key = wrapped
        assert torch.equal(state[original_key], value), key

    model.eval()
    with torch.no_grad():
        adapted = model.encode_image(images, normalize=True)
    merge_lora(model)
    assert not lora_parameters(model)
    assert set(model.state_dict()) == set(base)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images, normalize=True), adapted, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(adapted, before, atol=1e-4)

    save_clip_checkpoint(model, tmp_path, loaded.model_cfg, loaded.preprocess_cfg)
    reloaded = ClipEncoder.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model.encode_image(images, normalize=True), adapted,
                                   atol=1e-5, rtol=1e-5)
