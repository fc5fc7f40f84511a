"""Fixed proprioception normalisation derived from the URDF limits (stored in checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ProprioNormalizer:
    """Maps joint positions to about [-1, 1] over their range and velocities by their limits."""

    position_center: tuple[float, ...]
    position_half_range: tuple[float, ...]
    velocity_scale: tuple[float, ...]

    @classmethod
    def from_robot(cls, robot) -> "ProprioNormalizer":
        """Build from a ``RobotDescription`` (lower, upper, velocity arrays)."""
        lower, upper = np.asarray(robot.lower, float), np.asarray(robot.upper, float)
        return cls(
            position_center=tuple(((upper + lower) / 2).tolist()),
            position_half_range=tuple(np.maximum((upper - lower) / 2, 1e-6).tolist()),
            velocity_scale=tuple(np.maximum(np.asarray(robot.velocity, float), 1e-6).tolist()),
        )

    @property
    def num_joints(self) -> int:
        """Number of joints."""
        return len(self.position_center)

    def __call__(self, proprio: np.ndarray) -> np.ndarray:
        """Normalise (..., 2n) proprioception: positions then velocities."""
        proprio = np.asarray(proprio, dtype=np.float32)
        n = self.num_joints
        if proprio.shape[-1] != 2 * n:
            raise ValueError(f"proprioception has {proprio.shape[-1]} values; expected {2 * n} "
                             f"({n} joint positions then {n} velocities)")
        pos = (proprio[..., :n] - np.float32(self.position_center)) / np.float32(self.position_half_range)
        vel = proprio[..., n:] / np.float32(self.velocity_scale)
        return np.clip(np.concatenate([pos, vel], axis=-1), -5.0, 5.0).astype(np.float32)

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return {k: list(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict) -> "ProprioNormalizer":
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(float(x) for x in data[k]) for k in
                      ("position_center", "position_half_range", "velocity_scale")})
