"""Whether a small learned head finds the pushed object where the arm covers it better than the CLIP map does.

Usage: ``python -m research.occlusion_locator_probe CHECKPOINT [--train-episodes 60] [--test-episodes 30]
[--cache FILE.npz] [--epochs 30] [--json FILE]``

The push policy's estimate of the commanded object comes from a fixed readout of the frozen CLIP's region-text
map (``region_map``); next to the arm it jumps to the arm or another object in one frame in four
(``research/push_estimate_errors.py``), and learners given exact positions push 86-96% where the policy pushes
about 50% (``research/push_memory_probe.py``). This probe asks whether a head trained on the simulator's true
object position (supervised, not through the policy's loss) reads those frames better.

Data: the scripted expert pushes (training split; train episodes from seed 7,600,000, test episodes from
7,500,000, the estimate-error probe's scenes). Each step keeps the checkpoint's CLIP patch tokens, the command's
text embedding, the true projected position of the commanded object and of the fingertip, the fingertip's height,
the horizontal fingertip-object distance and how much of the object is visible (its segmentation pixels over
those in the episode's first frame).

The head (:class:`PatchScorer`) scores every patch from its token, its product with the command, the map's
logit there in this frame and the first frame, and where the patch lies relative to the fingertip and to the
first frame's estimate; a softmax over patches is fitted by cross-entropy to a Gaussian around the true position
and read out as the map is (the peak window). Reported per band of fingertip-object distance and of visibility:
median error in image half-widths and the share of frames off by more than 0.2 (a jump), for the map alone, the
map with the first frame's map as a prior at weight 2 (as trained policies learn it), and the head.
``--no-fingertip`` drops the fingertip inputs (what the image and the first frame alone give).
"""

from __future__ import annotations

import argparse

import numpy as np

from research.push_estimate_errors import BANDS, JUMP

VISIBILITY = ((0.0, 0.25), (0.25, 0.75), (0.75, np.inf))  # share of the first frame's object pixels seen


def collect(checkpoint: str, seeds: range) -> dict[str, np.ndarray]:
    """Expert push episodes on ``seeds``: per step the CLIP inputs, the truths and the object's visibility."""
    import mujoco

    from research.push_memory_probe import PushScenes

    scenes = PushScenes(estimates_from=checkpoint)
    env = scenes.env
    rows: dict[str, list] = {k: [] for k in ("patches", "text", "episode", "xy", "fingertip", "height",
                                               "distance", "visible", "step")}
    references = []
    segmenter = None
    for episode, seed in enumerate(seeds):
        _, info = scenes.reset(seed)
        first_pixels, done, step = None, False, 0
        while not done:
            if segmenter is None:
                segmenter = mujoco.Renderer(env.model, env.image_size, env.image_size)
                segmenter.enable_segmentation_rendering()
            segmenter.update_scene(env.data, camera=env.scene.camera_id, scene_option=env._scene_option)
            ids = segmenter.render()
            slot = env.target_index
            geoms = set(int(g) for g in env.scene.object_geom_ids[slot])
            pixels = int(((ids[..., 1] == mujoco.mjtObj.mjOBJ_GEOM) & np.isin(ids[..., 0], list(geoms))).sum())
            if first_pixels is None:
                first_pixels = max(pixels, 1)
            ee = info["ee_position"]
            tip = env.object_pixels(ee[None].astype(np.float64))[0]
            if step == 0:
                references.append(scenes._reference_patches[0].numpy().astype(np.float16))
            privileged = info["privileged"]
            rows["patches"].append(scenes.last_patches[0].numpy().astype(np.float16))
            rows["text"].append(scenes.last_text[0].numpy())
            rows["episode"].append(episode)
            rows["xy"].append(scenes._target_xy())
            rows["fingertip"].append((tip / env.image_size * 2 - 1).astype(np.float32))
            rows["height"].append(float(ee[2]))
            rows["distance"].append(float(np.linalg.norm(privileged[0:2] - privileged[3:5])))
            rows["visible"].append(pixels / first_pixels)
            rows["step"].append(step)
            step += 1
            _, info, done, _ = scenes.step(scenes.expert.act(info))
    data = {k: np.asarray(v) for k, v in rows.items()}
    data["references"] = np.stack(references)
    return data


def build_scorer(embed_dim: int, fingertip: bool, hidden: int = 128):
    """The per-patch scoring MLP (module doc)."""
    import torch
    from torch import nn

    class PatchScorer(nn.Module):
        def __init__(self):
            super().__init__()
            self.fingertip = fingertip
            extra = 2 + 2 + (5 if fingertip else 0)
            self.norm = nn.LayerNorm(embed_dim)
            self.mlp = nn.Sequential(nn.Linear(2 * embed_dim + extra, hidden), nn.GELU(),
                                     nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

        def forward(self, patches, text, current, reference, coordinates, reference_xy, tip, height):
            tokens = self.norm(patches)
            product = tokens * torch.nn.functional.normalize(text, dim=-1)[:, None]
            count = patches.shape[1]
            parts = [tokens, product, current[..., None], reference[..., None],
                     (coordinates[None] - reference_xy[:, None])]
            if self.fingertip:
                parts += [coordinates[None] - tip[:, None], height[:, None, None].expand(-1, count, 1) * 10.0,
                          tip[:, None].expand(-1, count, 2)]
            return self.mlp(torch.cat(parts, dim=-1))[..., 0]

    return PatchScorer()


def main(argv=None) -> dict:
    """Collect (or load) the frames, fit the head, print the table and return the report."""
    import torch

    from vla_ros.grounding.object_locator import gaussian_targets
    from vla_ros.policy.policy import Policy
    from vla_ros.reporting import format_table, write_json

    parser = argparse.ArgumentParser(prog="python -m research.occlusion_locator_probe",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a reference-frame region_map policy checkpoint (its CLIP and map)")
    parser.add_argument("--train-episodes", type=int, default=60)
    parser.add_argument("--test-episodes", type=int, default=30)
    parser.add_argument("--cache", help="an .npz of collected frames: read if it exists, else written")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--no-fingertip", action="store_true", help="the head without the fingertip's inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    import os

    if args.cache and os.path.exists(args.cache):
        loaded = np.load(args.cache)
        train, test = ({k[len(p):]: loaded[k] for k in loaded.files if k.startswith(p)} for p in ("train_", "test_"))
    else:
        train = collect(args.checkpoint, range(7_600_000, 7_600_000 + args.train_episodes))
        test = collect(args.checkpoint, range(7_500_000, 7_500_000 + args.test_episodes))
        if args.cache:
            np.savez(args.cache, **{f"train_{k}": v for k, v in train.items()},
                     **{f"test_{k}": v for k, v in test.items()})
    fusion = Policy.load(args.checkpoint).network.features_extractor.fusion
    coordinates = fusion.coordinates

    def tensors(data, index):
        patches = torch.as_tensor(data["patches"][index]).float()
        reference = torch.as_tensor(data["references"][data["episode"][index]]).float()
        text = torch.as_tensor(data["text"][index]).float()
        with torch.no_grad():
            current_logits, reference_logits = fusion.logits(patches, text), fusion.logits(reference, text)
            reference_xy = fusion.readout_estimate(reference_logits)
        return dict(patches=patches, text=text, current=current_logits, reference=reference_logits,
                    coordinates=coordinates, reference_xy=reference_xy,
                    tip=torch.as_tensor(data["fingertip"][index]).float(),
                    height=torch.as_tensor(data["height"][index]).float())

    scorer = build_scorer(int(train["text"].shape[1]), fingertip=not args.no_fingertip)
    optimiser = torch.optim.AdamW(scorer.parameters(), lr=1e-3, weight_decay=1e-4)
    grid = int(round(coordinates.shape[0] ** 0.5))
    frames = len(train["xy"])
    for epoch in range(args.epochs):
        order = np.random.default_rng(args.seed + epoch).permutation(frames)
        total = 0.0
        for start in range(0, frames, 64):
            index = order[start:start + 64]
            inputs = tensors(train, index)
            true = torch.as_tensor(train["xy"][index]).float()
            target = gaussian_targets(coordinates, true, grid)
            logits = scorer(**inputs)
            loss = -(target * torch.log_softmax(logits, -1)).sum(-1).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(index)
        print(f"epoch {epoch + 1}: cross-entropy {total / frames:.4f}", flush=True)

    scorer.eval()
    estimates = {"map": [], "map + first frame x2": [], "head": []}
    for start in range(0, len(test["xy"]), 256):
        index = np.arange(start, min(start + 256, len(test["xy"])))
        inputs = tensors(test, index)
        with torch.no_grad():
            estimates["map"].append(fusion.readout_estimate(inputs["current"]).numpy())
            estimates["map + first frame x2"].append(
                fusion.readout_estimate(inputs["current"] + 2.0 * inputs["reference"]).numpy())
            estimates["head"].append(fusion.readout_estimate(scorer(**inputs)).numpy())
    true = test["xy"]
    errors = {name: np.linalg.norm(np.concatenate(parts) - true, axis=1) for name, parts in estimates.items()}
    rows = []
    for label, values, bands in (("fingertip to object (m)", test["distance"], BANDS),
                                 ("object visible", test["visible"], VISIBILITY)):
        for low, high in bands:
            keep = (values >= low) & (values < high)
            band = f"{low:.2f}-{high:.2f}" if np.isfinite(high) else f">={low:.2f}"
            for name, err in errors.items():
                picked = err[keep]
                rows.append({"band": f"{label} {band}", "estimate": name, "frames": int(keep.sum()),
                             "median_error": float(np.median(picked)) if keep.any() else float("nan"),
                             "share_off_by_0.2": float(np.mean(picked > JUMP)) if keep.any() else float("nan")})
    print(format_table(rows, list(rows[0])))
    report = {"checkpoint": str(args.checkpoint), "train_frames": int(frames), "test_frames": int(len(true)),
              "train_episodes": int(train["episode"].max() + 1), "test_episodes": int(test["episode"].max() + 1),
              "fingertip_inputs": not args.no_fingertip, "epochs": args.epochs, "rows": rows}
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
