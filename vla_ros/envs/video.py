"""Record the scripted expert as an MP4 or GIF in the demo's layout (:mod:`vla_ros.envs.video_layout`).

``python -m vla_ros.envs.video --task reach --out expert.mp4 [--episodes 3] [--size 224]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable

import numpy as np


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
    """Run the scripted expert for ``episodes`` episodes and return the composed frames."""
    import gymnasium as gym

    from vla_ros.envs import ENV_IDS
    from vla_ros.envs.expert import ScriptedExpert
    from vla_ros.envs.video_layout import compose_frame, title_card

    env = gym.make(ENV_IDS[task], image_size=image_size, **env_kwargs)
    expert = ScriptedExpert(env)
    frames = []
    try:
        for episode in range(episodes):
            obs, info = env.reset(seed=seed + episode)
            expert.reset()
            first = compose_frame(env.unwrapped.render_view(), obs["image"], info["command"], "start")
            frames += [title_card(info["command"], episode + 1, first.shape[1], first.shape[0],
                                  f"scripted expert, seed {seed + episode}")] * 10 + [first]
            done = False
            while not done:
                obs, _, terminated, truncated, info = env.step(expert.act(info))
                done = terminated or truncated
                status = "success" if info["is_success"] else f"episode {episode + 1}"
                frames.append(compose_frame(env.unwrapped.render_view(), obs["image"], info["command"], status))
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
