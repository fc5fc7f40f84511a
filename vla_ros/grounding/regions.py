"""Region embeddings: pool projected patch tokens around image locations (RegionCLIP-style).

An object's region embedding is the Gaussian-weighted mean of the (normalised) patch tokens around
its pixel, renormalised. Training (contrastive loss against object captions) and zero-shot picking
use this same function, so what was trained is what is evaluated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_centres(grid_size: tuple[int, int], image_size: int, device=None) -> torch.Tensor:
    """Pixel centre (u, v) of each patch of the model input, (P, 2), row-major."""
    grid_h, grid_w = grid_size
    step_v, step_u = image_size / grid_h, image_size / grid_w
    vs, us = torch.meshgrid((torch.arange(grid_h, device=device) + 0.5) * step_v,
                            (torch.arange(grid_w, device=device) + 0.5) * step_u, indexing="ij")
    return torch.stack([us.reshape(-1), vs.reshape(-1)], dim=1).float()


def region_weights(pixels: torch.Tensor, grid_size: tuple[int, int], image_size: int,
                   sigma_patches: float = 0.75) -> torch.Tensor:
    """Gaussian pooling weights, (..., P) summing to 1, for pixels (..., 2) as (u, v) model-input pixels."""
    centres = patch_centres(grid_size, image_size, device=pixels.device)
    sigma = sigma_patches * image_size / grid_size[1]
    dist2 = ((pixels.unsqueeze(-2).float() - centres) ** 2).sum(-1)
    return torch.softmax(-dist2 / (2 * sigma * sigma), dim=-1)


def region_embeddings(patches: torch.Tensor, pixels: torch.Tensor, grid_size: tuple[int, int],
                      image_size: int, sigma_patches: float = 0.75) -> torch.Tensor:
    """Pool patches (B, P, D) at pixels (B, K, 2) into L2-normalised region embeddings (B, K, D)."""
    if patches.ndim != 3 or pixels.ndim != 3 or pixels.shape[-1] != 2 or pixels.shape[0] != patches.shape[0]:
        raise ValueError(f"need patches (B, P, D) and pixels (B, K, 2), got {tuple(patches.shape)} and "
                         f"{tuple(pixels.shape)}")
    weights = region_weights(pixels, grid_size, image_size, sigma_patches).to(patches.dtype)
    return F.normalize(weights @ F.normalize(patches, dim=-1), dim=-1)
