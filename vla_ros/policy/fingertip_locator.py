"""Where the fingertip is in the policy's camera image, from the joint state alone (no rclpy, no rendering).

A done head decides whether the command is fulfilled, and reach's success (the fingertip within 5 cm of the
object) is a relation between the fingertip and the object. The head sees the object as the fusion's image
estimates and the fingertip only as the joint state, so it would have to learn the arm's kinematics and the
camera's projection from a few thousand observations. ``research/done_geometry_probe.py`` (2026-12-06) measured
what giving it the fingertip's image position instead is worth: reach's held-out precision / recall rose from
0.83-0.87 / 0.86-0.90 to 0.92-0.94 / 0.94-0.96 on skills_backoff's episodes.

:class:`FingertipLocator` is a small MLP from the normalised joint state (the policy's proprioception) to the
fingertip's image position in [-1, 1] (column, row, as the fusion's estimates) and its height above the table
in decimetres. :func:`fit_fingertip_locator` fits it on the simulator's fingertip positions projected through the
training camera (:func:`camera_projection`), so it holds for the camera pose the policy was trained with, as the
policy itself does.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

LOCATOR_OUTPUTS = 3
"""image column and row in [-1, 1], and height in decimetres"""
HEIGHT_SCALE = 10.0
"""metres -> the locator's height unit (decimetres: about the range of the image coordinates)"""


class FingertipLocator(torch.nn.Module):
    """normalised joint state (B, P) -> fingertip image position and height (B, 3)."""

    def __init__(self, proprio_dim: int, hidden: int = 64):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(proprio_dim, hidden), torch.nn.Tanh(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
                                       torch.nn.Linear(hidden, LOCATOR_OUTPUTS))

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        """(B, 3): column, row, height / 0.1 m."""
        return self.net(proprio)


def camera_projection(task: str = "mixed", **env_kwargs) -> Callable[[np.ndarray], np.ndarray]:
    """``project(points (N, 3) world) -> (N, 2)`` image positions in [-1, 1] through the env's fixed camera."""
    from vla_ros.envs.scene import project_points
    from vla_ros.policy.envs import make_vec_env

    probe = make_vec_env(task, 1, 0, vec_env="dummy", **env_kwargs)
    try:
        probe.reset()  # the camera's pose is computed by the first forward pass
        env = probe.envs[0].unwrapped
        cam = env.scene.camera_id
        position, rotation = env.data.cam_xpos[cam].copy(), env.data.cam_xmat[cam].copy()
        fovy, size = float(env.model.cam_fovy[cam]), env.image_size
    finally:
        probe.close()

    def project(points: np.ndarray) -> np.ndarray:
        pixels = project_points(np.asarray(points, dtype=np.float64), position, rotation, fovy, size, size)
        return (pixels / size * 2 - 1).astype(np.float32)

    return project


def locator_targets(fingertips: np.ndarray, project: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """(N, 3) training targets of the locator for fingertip world positions (N, 3)."""
    fingertips = np.asarray(fingertips, dtype=np.float64)
    return np.concatenate([project(fingertips), fingertips[:, 2:3] * HEIGHT_SCALE], axis=1).astype(np.float32)


def fit_fingertip_locator(proprio: np.ndarray, targets: np.ndarray, seed: int = 0, steps: int = 3000,
                          hidden: int = 64) -> FingertipLocator:
    """Fit a :class:`FingertipLocator` by mean squared error (full batch, Adam)."""
    torch.manual_seed(seed)
    x = torch.as_tensor(proprio, dtype=torch.float32)
    y = torch.as_tensor(targets, dtype=torch.float32)
    locator = FingertipLocator(x.shape[1], hidden)
    optimiser = torch.optim.Adam(locator.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(locator(x), y)
        loss.backward()
        optimiser.step()
        schedule.step()
    return locator.eval()


@torch.no_grad()
def locator_errors(locator: FingertipLocator, proprio: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Median errors: image position (half-widths) and height (m)."""
    predicted = locator(torch.as_tensor(proprio, dtype=torch.float32)).numpy()
    image = np.linalg.norm(predicted[:, :2] - targets[:, :2], axis=1)
    height = np.abs(predicted[:, 2] - targets[:, 2]) / HEIGHT_SCALE
    return {"image_median": float(np.median(image)), "height_median_m": float(np.median(height))}
