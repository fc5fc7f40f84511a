"""Gymnasium envs of the language-commanded tabletop arm (MuJoCo).

Importing this package registers ``vla_ros/Reach-v0`` (50 steps), ``vla_ros/Push-v0`` (100 steps) and
``vla_ros/ReachPush-v0`` (either, drawn per episode; a reach episode still ends at 50 steps), and picks the
offscreen GL backend (``MUJOCO_GL=egl`` unless set; ``osmesa`` works too).
"""

import os

import gymnasium as gym

os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

ENTRY_POINT = "vla_ros.envs.tabletop:TabletopEnv"
ENV_IDS = {"reach": "vla_ros/Reach-v0", "push": "vla_ros/Push-v0", "mixed": "vla_ros/ReachPush-v0"}
MAX_EPISODE_STEPS = {"reach": 50, "push": 100, "mixed": 100}

for _task, _env_id in ENV_IDS.items():
    if _env_id not in gym.registry:
        gym.register(_env_id, entry_point=ENTRY_POINT, max_episode_steps=MAX_EPISODE_STEPS[_task],
                     kwargs={"task": _task})

__all__ = ["ENV_IDS", "MAX_EPISODE_STEPS"]
