"""Record the scripted expert as an MP4 or GIF, with the command written on every frame.

``python -m vla_ros.envs.video --task reach --out expert.mp4 [--episodes 3] [--size 224]``
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

TEXT_SCALE = 2  # frames are enlarged by this factor so the overlaid text stays legible


def annotate(frame: np.ndarray, text: str, status: str | None = None, scale: int = TEXT_SCALE) -> np.ndarray:
    """Return an enlarged copy of an RGB frame with ``text`` (wrapped) on top and ``status`` below."""
    image = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    height, width = image.shape[:2]
    font, font_scale, thickness, white = cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1, (255, 255, 255)
    chars_per_line = max(10, int(width / 12))
    lines = textwrap.wrap(text, chars_per_line) or [""]
    band = 10 + 22 * len(lines)
    image[:band] = (image[:band] * 0.35).astype(np.uint8)  # dark band behind the text
    for row, line in enumerate(lines):
        cv2.putText(image, line, (6, 22 + 22 * row), font, font_scale, white, thickness, cv2.LINE_AA)
    if status:
        cv2.putText(image, status, (6, height - 8), font, font_scale, (255, 255, 0), thickness, cv2.LINE_AA)
    return image


def write_video(frames: Iterable[np.ndarray], path: str | Path, fps: int = 20) -> Path:
    """Write RGB frames to ``path``: ``.mp4`` through imageio-ffmpeg, ``.gif`` through imageio."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        writer = imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=16, quality=7)
    elif suffix == ".gif":
        writer = imageio.get_writer(path, mode="I", duration=1.0 / fps, loop=0)
    else:
        raise ValueError(f"unsupported video format {suffix!r}; use .mp4 or .gif")
    with writer:
        for frame in frames:
            writer.append_data(frame)
    return path


def expert_frames(task: str = "reach", episodes: int = 2, seed: int = 0, image_size: int = 224,
                  **env_kwargs) -> list[np.ndarray]:
    """Run the scripted expert for ``episodes`` episodes and return the annotated frames."""
    import gymnasium as gym

    from vla_ros.envs import ENV_IDS
    from vla_ros.envs.expert import ScriptedExpert

    env = gym.make(ENV_IDS[task], image_size=image_size, **env_kwargs)
    expert = ScriptedExpert(env)
    frames = []
    try:
        for episode in range(episodes):
            obs, info = env.reset(seed=seed + episode)
            expert.reset()
            frames.append(annotate(obs["image"], info["command"], f"episode {episode + 1}"))
            done = False
            while not done:
                obs, _, terminated, truncated, info = env.step(expert.act(info))
                done = terminated or truncated
                status = "success" if info["is_success"] else f"episode {episode + 1}"
                frames.append(annotate(obs["image"], info["command"], status))
            frames.extend([frames[-1]] * 10)  # hold the last frame for half a second
    finally:
        env.close()
    return frames


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: record the expert to an MP4 or GIF."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("reach", "push"), default="reach")
    parser.add_argument("--out", default="expert.mp4", help="output .mp4 or .gif")
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=224, help="camera image size (64..224)")
    parser.add_argument("--num-objects", type=int, default=3)
    parser.add_argument("--perturbation", choices=("distractors", "jitter", "corrupted"), default=None)
    args = parser.parse_args(argv)
    frames = expert_frames(args.task, args.episodes, args.seed, args.size, num_objects=args.num_objects,
                           perturbation=args.perturbation)
    path = write_video(frames, args.out)
    print(f"wrote {len(frames)} frames to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
