"""Grounding metrics of a CLIP on rendered scenes: zero-shot object picking and retrieval R@1."""

from __future__ import annotations

import numpy as np
import torch

from vla_ros.grounding.data import CaptionSampler, SceneDataset
from vla_ros.grounding.encoder import ClipEncoder
from vla_ros.grounding.zero_shot import region_similarities


def zero_shot_accuracy(encoder: ClipEncoder, dataset: SceneDataset, batch_size: int = 256) -> float:
    """Fraction of scenes where the command's embedding is closest to the commanded object's region.

    The candidates are the objects on the table (their pixels from the simulator); the command is
    the env's own command for the scene, encoded as is.
    """
    correct = 0
    for start in range(0, len(dataset), batch_size):
        stop = min(start + batch_size, len(dataset))
        texts = encoder.encode_text([str(c) for c in dataset.commands[start:stop]])
        sims = region_similarities(encoder, dataset.images[start:stop], dataset.pixels[start:stop], texts)
        sims = sims.masked_fill(~torch.from_numpy(dataset.valid[start:stop]), float("-inf"))
        correct += int((sims.argmax(dim=1).numpy() == dataset.target[start:stop]).sum())
    return correct / len(dataset)


def retrieval_r1(encoder: ClipEncoder, dataset: SceneDataset, sampler: CaptionSampler,
                 batch_size: int = 256) -> dict[str, float]:
    """Image-to-text and text-to-image recall@1 over the dataset's scenes.

    Each scene's caption is its deterministic left-to-right object listing ("a red cube, a blue ball
    and a green cylinder"); the candidates are all scenes of the dataset. A scene whose caption is
    identical to another's counts as found when any scene with that caption ranks first.
    """
    captions = [sampler.scene_caption(dataset.colours[i], dataset.shapes[i], dataset.positions[i])
                for i in range(len(dataset))]
    images = torch.cat([encoder.encode_images(dataset.images[s:s + batch_size]).global_embedding
                        for s in range(0, len(dataset), batch_size)])
    texts = torch.cat([encoder.encode_text(captions[s:s + batch_size])
                       for s in range(0, len(dataset), batch_size)])
    sims = images @ texts.T
    same_caption = np.array(captions)[:, None] == np.array(captions)[None, :]
    i2t = same_caption[np.arange(len(dataset)), sims.argmax(dim=1).numpy()].mean()
    t2i = same_caption[sims.argmax(dim=0).numpy(), np.arange(len(dataset))].mean()
    return {"image_to_text": float(i2t), "text_to_image": float(t2i)}
