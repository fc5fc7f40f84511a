"""Grounding metrics of a CLIP on rendered scenes: zero-shot object picking and retrieval R@1.

Object picking is measured with the objects' pixels given (:func:`zero_shot_accuracy`) and without
them (:func:`dense_pick_accuracy`, what a policy faces).
"""

from __future__ import annotations

import numpy as np
import torch

from vla_ros.grounding.data import CaptionSampler, SceneDataset
from vla_ros.grounding.encoder import ClipEncoder
from vla_ros.grounding.regions import patch_centres, region_embeddings
from vla_ros.grounding.zero_shot import object_pixels_to_model, region_similarities


def zero_shot_hits(encoder: ClipEncoder, dataset: SceneDataset, batch_size: int = 256) -> np.ndarray:
    """Per scene (N,), whether the command's embedding is closest to the commanded object's region.

    The candidates are the objects on the table (their pixels from the simulator); the command is
    the env's own command for the scene, encoded as is.
    """
    hits = np.zeros(len(dataset), dtype=bool)
    for start in range(0, len(dataset), batch_size):
        stop = min(start + batch_size, len(dataset))
        texts = encoder.encode_text([str(c) for c in dataset.commands[start:stop]])
        sims = region_similarities(encoder, dataset.images[start:stop], dataset.pixels[start:stop], texts)
        sims = sims.masked_fill(~torch.from_numpy(dataset.valid[start:stop]), float("-inf"))
        hits[start:stop] = sims.argmax(dim=1).numpy() == dataset.target[start:stop]
    return hits


def zero_shot_accuracy(encoder: ClipEncoder, dataset: SceneDataset, batch_size: int = 256) -> float:
    """Fraction of scenes where the command's embedding is closest to the commanded object's region."""
    return float(zero_shot_hits(encoder, dataset, batch_size).mean())


def dense_picks(encoder: ClipEncoder, dataset: SceneDataset, batch_size: int = 256) -> np.ndarray:
    """Per scene, the object nearest to the patch-centre region best matching the command, (N,).

    Unlike :func:`zero_shot_accuracy` the objects' pixels are not given: the candidates are the region
    embeddings at every patch centre, which is what a policy sees.
    """
    centres = patch_centres(encoder.grid_size, encoder.image_size)
    picks = np.empty(len(dataset), np.int64)
    for start in range(0, len(dataset), batch_size):
        stop = min(start + batch_size, len(dataset))
        patches = encoder.encode_images(dataset.images[start:stop]).patches
        texts = encoder.encode_text([str(c) for c in dataset.commands[start:stop]])
        regions = region_embeddings(patches, centres.expand(len(patches), -1, -1), encoder.grid_size,
                                    encoder.image_size)
        best = centres[(regions @ texts.unsqueeze(-1)).squeeze(-1).argmax(dim=1)]  # (B, 2) model pixels
        for i, scene in enumerate(range(start, stop)):
            objects = object_pixels_to_model(encoder, dataset.images[scene].shape, dataset.pixels[scene])
            distance = ((objects - best[i]) ** 2).sum(-1).masked_fill(~torch.from_numpy(dataset.valid[scene]),
                                                                       float("inf"))
            picks[scene] = int(distance.argmin())
    return picks


def dense_pick_accuracy(encoder: ClipEncoder, dataset: SceneDataset, batch_size: int = 256) -> float:
    """Fraction of scenes where the region best matching the command lies nearest the commanded object."""
    return float((dense_picks(encoder, dataset, batch_size) == dataset.target).mean())


def pick_error_kinds(dataset: SceneDataset, picks: np.ndarray) -> dict[str, float]:
    """Share of scenes whose wrong pick has the commanded object's colour, its shape, or neither.

    Colour-shape generalisation fails as ``same_colour`` (the seen combo of the named colour wins)
    or ``same_shape``; ``other`` is a grounding miss unrelated to the named attributes.
    """
    rows = np.arange(len(dataset))
    wrong = picks != dataset.target
    same_colour = dataset.colours[rows, picks] == dataset.colours[rows, dataset.target]
    same_shape = dataset.shapes[rows, picks] == dataset.shapes[rows, dataset.target]
    return {"same_colour": float((wrong & same_colour).mean()),
            "same_shape": float((wrong & same_shape).mean()),
            "other": float((wrong & ~same_colour & ~same_shape).mean())}


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
