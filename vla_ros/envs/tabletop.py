"""The language-commanded tabletop env: reach for or push a named object on a table."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco  # vla_ros.envs (imported first, as the parent package) has chosen MUJOCO_GL
import numpy as np
from gymnasium import spaces

from vla_ros.envs import MAX_EPISODE_STEPS as EPISODE_STEPS
from vla_ros.envs.instructions import DIRECTIONS, GEOMETRIES, SPLITS, TASKS, WORD_SPLITS, load_instructions
from vla_ros.envs.scene import (
    HIDDEN_GROUP,
    OBJECT_CONAFFINITY,
    OBJECT_CONTYPE,
    OBJECT_HALF_SIZE,
    TABLE_CENTRE_XY,
    TABLE_HALF_EXTENT,
    TABLE_TOP_Z,
    build_scene,
    object_inertia,
    project_points,
)
from vla_ros.keys import COMMAND_MAX_BYTES, OBS_COMMAND, OBS_IMAGE, OBS_PROPRIO, encode_command
from vla_ros.robot_config import RobotConfig, load_robot
from vla_ros.robot_description import RobotDescription, load_robot_description

CONTROL_DT = 0.05  # s: 20 Hz policy rate, shared with the ROS node
VIEW_WIDTH, VIEW_HEIGHT = 640, 480  # viewing-camera frames (videos only)
PERTURBATIONS = (None, "distractors", "jitter", "corrupted")
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 64, 224
EXTRA_DISTRACTORS = 2
MAX_OBJECTS = 7  # objects that fit the workspace at MIN_OBJECT_SPACING (distractors included)
# Per robot, in its robot file (sim/robots/<name>.yaml): the box objects are placed in (workspace), the arm's
# start pose (home_qpos, plus HOME_NOISE) and the reach success distance.
MIXED = "mixed"  # the task of an env that runs reach and push episodes, drawn per episode
TASK_MODES = (*TASKS, MIXED)
MIN_OBJECT_SPACING = 0.095  # m between object centres
HOME_NOISE = 0.05  # rad
PUSH_SUCCESS_DISTANCE = 0.08  # m the target moves along the commanded direction
OFF_TABLE_DROP = 0.05  # m below its resting height: the object left the table
DIRECTION_VECTORS = {"left": (0.0, 1.0), "right": (0.0, -1.0), "forward": (1.0, 0.0), "back": (-1.0, 0.0)}
VELOCITY_BOUND = 4.0  # proprio velocities are clipped to this multiple of the URDF velocity limit
_JITTER_CAMERA_POS = 0.02  # m
_JITTER_CAMERA_ANGLE = np.deg2rad(2.0)
_JITTER_LIGHT = 0.3  # relative change of light intensity


class TabletopEnv(gym.Env):
    """A 5-DOF arm and ``num_objects`` coloured objects on a table, commanded in natural language.

    Tasks (``task=``): ``reach`` touch the named object; ``push`` push it left/right/forward/back;
    ``mixed`` either, drawn per episode (``info["task"]`` says which; a ``command`` reset option decides it
    from the words: a direction makes it a push). A mixed env ends a reach episode at reach's own time limit.
    Directions are in the robot's frame, which is also the camera image's: forward = +x = up in the
    image, left = +y = left in the image.

    ## Action space

    ``Box(-1, 1, (n,), float32)``: joint position deltas. The commanded target is
    ``q_target = clip(q_measured + a * max_delta, lower, upper)``, ``max_delta = velocity * control_dt``,
    tracked by position actuators during ``control_dt`` = 0.05 s (10 physics steps of 5 ms).

    | index | joint          | URDF limits (rad) | max delta (rad/step) |
    |-------|----------------|-------------------|----------------------|
    | 0     | base_yaw       | +-2.6             | 0.075                |
    | 1     | shoulder_pitch | +-1.7             | 0.075                |
    | 2     | elbow_pitch    | +-2.7             | 0.09                 |
    | 3     | wrist_pitch    | +-2.1             | 0.1                  |
    | 4     | wrist_roll     | +-2.9             | 0.125                |

    ## Observation space (``Dict``)

    | key       | space                          | content                                             |
    |-----------|--------------------------------|-----------------------------------------------------|
    | image     | uint8 (S, S, 3)                | RGB from ``workspace_camera``, S = ``image_size``   |
    | command   | uint8 (128,)                   | UTF-8 command bytes (``vla_ros.keys``)              |
    | proprio   | float32 (2n,)                  | joint positions (rad) then velocities (rad/s)       |

    ## Rewards

    reach: ``-d(fingertip, target)`` per step, +1 on success. push: ``-0.5 d(fingertip, target)
    + 5 * progress`` (progress = displacement along the direction, at most the success distance),
    +1 on success, -1 if the target leaves the table. Success (unless ``terminate_on_success=False``: learning
    and scoring a done signal, which must say when to stop) and falling off terminate.

    ## Success (``info["is_success"]``)

    reach: fingertip centre within 5 cm of the target's centre. push: target moved >= 8 cm along the
    commanded direction and still on the table. Under ``perturbation="corrupted"`` the command names an
    object not on the table (or is a random string) while a hidden target on the table is scored,
    so a policy that follows the words scores about chance (1/N).

    ## Arguments

    ``task``, ``num_objects`` (default 3, distractors add 2), ``image_size`` (64..224),
    ``split`` (``train`` | ``heldout_combos`` | ``heldout_phrasings`` | ``validation_words`` |
    ``heldout_words``: training combos named with that word split's colour words, shape words or both,
    ``info["word_kind"]`` says which), ``perturbation``
    (``None`` | ``distractors`` | ``jitter`` | ``corrupted``), ``templates_path`` (instruction YAML),
    ``colours`` (restrict the palette), ``render_mode`` (``rgb_array``: the observation image),
    ``render_observation`` (False: the image is all zeros, for state-only use and benchmarks),
    ``robot`` (a robot file's name in ``sim/robots`` or its path; default ``vla_arm``), ``urdf_path`` (another
    URDF for the default robot's file), ``terminate_on_success`` (False: an episode runs on after success, to its
    time limit).

    ``reset(seed=, options=)`` options: ``command`` (str: replaces the sampled command; the object and
    direction it names become the target where they are on the table), ``split``, ``target``
    ({"colour", "shape"} the target must have), ``direction``, ``task`` (must equal the env's task).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(round(1 / CONTROL_DT))}

    def __init__(
        self,
        task: str = "reach",
        num_objects: int = 3,
        image_size: int = 64,
        split: str = "train",
        perturbation: str | None = None,
        templates_path: str | Path | None = None,
        colours: list[str] | tuple[str, ...] | None = None,
        render_mode: str | None = None,
        render_observation: bool = True,
        urdf_path: str | Path | None = None,
        terminate_on_success: bool = True,
        robot: str | Path | None = None,
    ):
        if task not in TASK_MODES:
            raise ValueError(f"unknown task {task!r}; expected one of {TASK_MODES}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if perturbation not in PERTURBATIONS:
            raise ValueError(f"unknown perturbation {perturbation!r}; expected one of {PERTURBATIONS}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"unknown render_mode {render_mode!r}; expected None or 'rgb_array'")
        if (isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer))
                or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE):
            raise ValueError(
                f"image_size must be an int in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {image_size!r}")
        if isinstance(num_objects, bool) or not isinstance(num_objects, (int, np.integer)) or num_objects < 1:
            raise ValueError(f"num_objects must be a positive int, got {num_objects!r}")
        total = int(num_objects) + (EXTRA_DISTRACTORS if perturbation == "distractors" else 0)
        if total > MAX_OBJECTS:
            raise ValueError(f"{total} objects do not fit the workspace ({MAX_OBJECTS} at most at "
                             f"{MIN_OBJECT_SPACING} m spacing, distractors included); lower num_objects")

        self.task = task
        self.episode_task = task if task != MIXED else TASKS[0]  # the current episode's task
        self._steps = 0
        self.split = split
        self.perturbation = perturbation
        self.image_size = int(image_size)
        self.num_objects = int(num_objects)
        self.num_scene_objects = total
        self.render_mode = render_mode
        self.render_observation = bool(render_observation)
        self.terminate_on_success = bool(terminate_on_success)
        self.instructions = load_instructions(templates_path)
        if colours is None:
            colours = tuple(self.instructions.colours)
        unknown = [c for c in colours if c not in self.instructions.colours]
        if unknown:
            raise ValueError(f"unknown colour(s) {unknown}; known: {sorted(self.instructions.colours)}")
        self.colours = tuple(colours)
        for needed_split in {split, "train"}:
            self._check_enough_combos(needed_split)

        self.robot_config: RobotConfig = load_robot(robot)
        if urdf_path is not None:
            if robot is not None:
                raise ValueError("give either robot (a robot file) or urdf_path, not both")
            self.robot_config = dataclasses.replace(
                self.robot_config, description=load_robot_description(urdf_path, self.robot_config.description
                                                                      .end_effector_link))
        self.robot: RobotDescription = self.robot_config.description
        self.control_dt = CONTROL_DT
        self.max_delta = self.robot_config.max_delta(CONTROL_DT)
        self.scene = build_scene(self.robot, total, config=self.robot_config)
        self.model = self.scene.model
        self.data = mujoco.MjData(self.model)
        self.n_substeps = int(round(CONTROL_DT / self.model.opt.timestep))
        self._renderer: mujoco.Renderer | None = None
        self._view_renderer: mujoco.Renderer | None = None  # the viewing camera's, made on first use
        self._scene_option = _scene_option()
        self._nominal_view = self._view_parameters()

        n = self.robot.num_joints
        velocity_bound = (VELOCITY_BOUND * self.robot.velocity).astype(np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (n,), np.float32)
        self.observation_space = spaces.Dict({
            OBS_IMAGE: spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8),
            OBS_COMMAND: spaces.Box(0, 255, (COMMAND_MAX_BYTES,), np.uint8),
            OBS_PROPRIO: spaces.Box(np.concatenate([self.robot.lower, -velocity_bound]).astype(np.float32),
                                    np.concatenate([self.robot.upper, velocity_bound]).astype(np.float32),
                                    dtype=np.float32),
        })
        self.privileged_size = 12 + 3 * total
        self._blank_image = np.zeros((self.image_size, self.image_size, 3), np.uint8)
        self._image = self._blank_image
        self.scene_objects: list[dict[str, Any]] = []
        self.command = ""
        self.corruption: str | None = None
        self.word_kind: str | None = None
        self.target_index = 0
        self.direction: str | None = None
        self._direction_vector = np.zeros(3)
        self._target_start = np.zeros(3)
        self._command_bytes = encode_command("")

    # ------------------------------------------------------------------ configuration helpers
    def _combos(self, split: str, heldout: bool) -> list[tuple[str, str]]:
        heldout_combos = self.instructions.heldout_combos
        return [c for c in self.instructions.all_combos
                if c[0] in self.colours and (c in heldout_combos) == heldout]

    def _check_enough_combos(self, split: str) -> None:
        train = self._combos(split, heldout=False)
        if split == "heldout_combos" and not self._combos(split, heldout=True):
            raise ValueError("split 'heldout_combos' needs held-out combos among the allowed colours")
        needed = self.num_scene_objects - (1 if split == "heldout_combos" else 0)
        if len(train) < needed:
            raise ValueError(f"{self.num_scene_objects} objects need {needed} distinct training colour-shape "
                             f"combos; only {len(train)} exist for colours {list(self.colours)}")

    def _view_parameters(self) -> dict[str, np.ndarray]:
        cam = self.scene.camera_id
        return {"cam_pos": self.model.cam_pos[cam].copy(), "cam_quat": self.model.cam_quat[cam].copy(),
                "light_diffuse": self.model.light_diffuse.copy(),
                "head_ambient": np.array(self.model.vis.headlight.ambient),
                "head_diffuse": np.array(self.model.vis.headlight.diffuse)}

    # ------------------------------------------------------------------ reset
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Sample a new scene, target and command; return ``(observation, info)``."""
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"command", "split", "target", "direction", "task"}
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}")
        allowed = (None, self.task) + (TASKS if self.task == MIXED else ())
        if options.get("task") not in allowed:
            raise ValueError(f"this env runs task {self.task!r}; make the env id of {options['task']!r} instead")
        split = options.get("split") or self.split
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split != self.split:
            self._check_enough_combos(split)
        rng = self.np_random
        self._steps = 0
        self.episode_task = self._episode_task(options, rng)

        combos = self._sample_combos(split, options.get("target"))
        positions = self._sample_positions()
        self.scene_objects = [{"colour": c, "shape": s, "geometry": self.instructions.shapes[s]}
                              for c, s in combos]
        self.target_index = 0
        self.direction = None
        if self.episode_task == "push":
            self.direction = options.get("direction") or DIRECTIONS[rng.integers(len(DIRECTIONS))]
            if self.direction not in DIRECTIONS:
                raise ValueError(f"unknown direction {self.direction!r}; expected one of {DIRECTIONS}")
        self.command, self.corruption = self._sample_command(split)
        if options.get("command") is not None:
            self.command, self.corruption, self.word_kind = options["command"], None, None
            self._ground_command(self.command)
        self._command_bytes = encode_command(self.command)
        dx, dy = DIRECTION_VECTORS[self.direction] if self.direction else (0.0, 0.0)
        self._direction_vector = np.array([dx, dy, 0.0])

        self._configure_objects(positions, rng)
        mujoco.mj_resetData(self.model, self.data)
        home = self.robot_config.home_qpos
        qpos = np.clip(home + rng.uniform(-HOME_NOISE, HOME_NOISE, home.shape), self.robot.lower, self.robot.upper)
        self.data.qpos[self.scene.arm_qpos_adr] = qpos
        self.data.ctrl[:self.robot.num_joints] = qpos  # arm actuators come first
        if self.scene.gripper_qpos_adr >= 0:  # the gripper is held where the robot file says
            self.data.qpos[self.scene.gripper_qpos_adr] = self.robot_config.gripper_hold
            self.data.ctrl[self.robot.num_joints] = self.robot_config.gripper_hold
        for slot, obj in enumerate(self.scene_objects):
            adr = self.scene.object_qpos_adr[slot]
            yaw = rng.uniform(-np.pi, np.pi)
            self.data.qpos[adr:adr + 3] = obj["rest_position"]
            self.data.qpos[adr + 3:adr + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        self._apply_view_jitter(rng)
        mujoco.mj_forward(self.model, self.data)
        self._target_start = self._object_positions()[self.target_index].copy()
        self._render_observation()
        return self._observation(), self._info(self._evaluate()[0])

    def _episode_task(self, options: dict, rng: np.random.Generator) -> str:
        """The task of the next episode: the env's, or for a mixed env the option's, the command's or a draw."""
        if self.task != MIXED:
            return self.task
        if options.get("task") is not None:
            return options["task"]
        if options.get("command") is not None:
            return "push" if self.instructions.parse(options["command"])[2] is not None else "reach"
        return TASKS[int(rng.integers(len(TASKS)))]

    def _sample_combos(self, split: str, target: dict | None) -> list[tuple[str, str]]:
        rng = self.np_random
        train = self._combos(split, heldout=False)
        if target is not None:
            colour, shape = target.get("colour"), target.get("shape")
            if colour not in self.instructions.colours:
                raise ValueError(f"unknown colour {colour!r}; known: {sorted(self.instructions.colours)}")
            if shape not in self.instructions.shapes:
                raise ValueError(f"unknown shape {shape!r}; known: {sorted(self.instructions.shapes)}")
            target_combo = (colour, shape)
        elif split == "heldout_combos":
            heldout = self._combos(split, heldout=True)
            target_combo = heldout[rng.integers(len(heldout))]
        else:
            target_combo = train[rng.integers(len(train))]
        others = [c for c in train if c != target_combo]
        picks = rng.choice(len(others), size=self.num_scene_objects - 1, replace=False)
        return [target_combo] + [others[i] for i in picks]

    def _sample_positions(self) -> np.ndarray:
        """Random non-overlapping object positions in the workspace (sequential rejection sampling)."""
        rng = self.np_random
        for _ in range(100):
            placed: list[np.ndarray] = []
            for _ in range(200 * self.num_scene_objects):
                candidate = rng.uniform(self.robot_config.workspace_low, self.robot_config.workspace_high)
                if all(np.linalg.norm(candidate - p) >= MIN_OBJECT_SPACING for p in placed):
                    placed.append(candidate)
                    if len(placed) == self.num_scene_objects:
                        return np.array(placed)
        raise RuntimeError(f"could not place {self.num_scene_objects} objects; lower num_objects")

    def _sample_command(self, split: str) -> tuple[str, str | None]:
        rng = self.np_random
        self.word_kind = None
        if split in WORD_SPLITS and self.perturbation != "corrupted":
            if split not in self.instructions.word_splits:
                raise ValueError(f"split {split!r} needs a word_splits.{split} section in {self.instructions.path}")
            target = self.scene_objects[self.target_index]
            command, self.word_kind = self.instructions.word_split_command(
                split, self.episode_task, target["colour"], target["shape"], self.direction, rng)
            return command, None
        phrasing = "heldout" if split == "heldout_phrasings" else "train"
        templates = self.instructions.templates[self.episode_task][phrasing]
        template = templates[rng.integers(len(templates))]
        if self.perturbation == "corrupted":
            # The scored target stays a random object on the table; the command names something else.
            self.target_index = int(rng.integers(self.num_scene_objects))
            on_table = {(o["colour"], o["shape"]) for o in self.scene_objects}
            absent = [c for c in self.instructions.all_combos if c not in on_table]
            if absent and rng.random() < 0.5:
                colour, shape = absent[rng.integers(len(absent))]
                return self.instructions.format(template, colour, shape, self.direction, rng), "absent_object"
            return _random_words(rng), "random_string"
        target = self.scene_objects[self.target_index]
        command = self.instructions.format(template, target["colour"], target["shape"], self.direction, rng)
        return command, None

    def _ground_command(self, command: str) -> None:
        """Make the object (and direction) an external command names the target, where possible."""
        colour, shape, direction = self.instructions.parse(command)
        matches = [i for i, o in enumerate(self.scene_objects)
                   if (colour is None or o["colour"] == colour) and (shape is None or o["shape"] == shape)]
        if (colour or shape) and matches:
            self.target_index = matches[0]
        if self.episode_task == "push" and direction is not None:
            self.direction = direction

    def _configure_objects(self, positions: np.ndarray, rng: np.random.Generator) -> None:
        """Switch each slot to its object's geometry and colour (no recompilation)."""
        model = self.model
        for slot, (obj, xy) in enumerate(zip(self.scene_objects, positions)):
            for geometry, geom_id in zip(GEOMETRIES, self.scene.object_geom_ids[slot]):
                active = geometry == obj["geometry"]
                model.geom_contype[geom_id] = OBJECT_CONTYPE if active else 0
                model.geom_conaffinity[geom_id] = OBJECT_CONAFFINITY if active else 0
                model.geom_group[geom_id] = 0 if active else HIDDEN_GROUP
                if active:
                    model.geom_rgba[geom_id] = self.instructions.colours[obj["colour"]]
            body = self.scene.object_body_ids[slot]
            model.body_inertia[body] = object_inertia(obj["geometry"])
            rest_height = TABLE_TOP_Z + OBJECT_HALF_SIZE[obj["geometry"]][1]
            obj["rest_position"] = np.array([xy[0], xy[1], rest_height])

    def _apply_view_jitter(self, rng: np.random.Generator) -> None:
        nominal, cam, model = self._nominal_view, self.scene.camera_id, self.model
        model.cam_pos[cam] = nominal["cam_pos"]
        model.cam_quat[cam] = nominal["cam_quat"]
        model.light_diffuse[:] = nominal["light_diffuse"]
        model.vis.headlight.ambient[:] = nominal["head_ambient"]
        model.vis.headlight.diffuse[:] = nominal["head_diffuse"]
        if self.perturbation != "jitter":
            return
        model.cam_pos[cam] = nominal["cam_pos"] + rng.uniform(-_JITTER_CAMERA_POS, _JITTER_CAMERA_POS, 3)
        axis = rng.normal(size=3)
        rotation = np.zeros(4)
        mujoco.mju_axisAngle2Quat(rotation, axis / np.linalg.norm(axis), rng.uniform(0, _JITTER_CAMERA_ANGLE))
        quat = np.zeros(4)
        mujoco.mju_mulQuat(quat, rotation, nominal["cam_quat"])
        model.cam_quat[cam] = quat
        low, high = 1 - _JITTER_LIGHT, 1 + _JITTER_LIGHT
        model.light_diffuse[:] = nominal["light_diffuse"] * rng.uniform(low, high)
        model.vis.headlight.ambient[:] = nominal["head_ambient"] * rng.uniform(low, high)
        model.vis.headlight.diffuse[:] = nominal["head_diffuse"] * rng.uniform(low, high)

    def paint_objects(self, rgba) -> dict[str, np.ndarray]:
        """Recolour the objects on the table (one RGBA in 0..1 per object, scene order) and re-render.

        For rendering training data in colours outside the palette; the objects' ``colour`` in ``info``
        keeps naming their palette colour. Returns the new observation.
        """
        rgba = np.asarray(rgba, dtype=np.float64)
        if rgba.shape != (len(self.scene_objects), 4) or not np.all((rgba >= 0) & (rgba <= 1)):
            raise ValueError(f"rgba must be ({len(self.scene_objects)}, 4) values in 0..1, got shape {rgba.shape}")
        for slot, (obj, colour) in enumerate(zip(self.scene_objects, rgba)):
            geom_id = self.scene.object_geom_ids[slot][GEOMETRIES.index(obj["geometry"])]
            self.model.geom_rgba[geom_id] = colour
        self._render_observation()
        return self._observation()

    # ------------------------------------------------------------------ step
    def step(self, action):
        """Apply joint position deltas for one control period; return the Gymnasium 5-tuple."""
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        q = self.data.qpos[self.scene.arm_qpos_adr]
        self.data.ctrl[:self.robot.num_joints] = np.clip(q + action * self.max_delta, self.robot.lower,
                                                         self.robot.upper)
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        # Body poses of the new qpos: mj_step leaves them one substep old.
        mujoco.mj_kinematics(self.model, self.data)
        self._render_observation()
        success, fell, reward = self._evaluate()
        terminated = bool((success and self.terminate_on_success) or fell)
        self._steps += 1
        # a mixed env's time limit is push's; a reach episode in it ends at reach's own
        truncated = self.task == MIXED and self._steps >= EPISODE_STEPS[self.episode_task] and not terminated
        return self._observation(), reward, terminated, truncated, self._info(success)

    def snapshot(self) -> tuple:
        """The state a :meth:`step` changes (all of ``data``, step count, frame), for :meth:`restore`.

        A labeller can then roll the scripted expert a few steps ahead (action chunks) and come back. The whole
        ``MjData`` is kept, derived quantities included, so what reads it afterwards (the expert's Jacobians)
        sees exactly what it would have without the excursion.
        """
        data = mujoco.MjData(self.model)
        mujoco.mj_copyData(data, self.model, self.data)
        return data, self._steps, self._image, self.render_observation

    def restore(self, snapshot: tuple) -> None:
        """Return to a :meth:`snapshot` of this episode."""
        data, self._steps, self._image, self.render_observation = snapshot
        mujoco.mj_copyData(self.data, self.model, data)

    def _object_positions(self) -> np.ndarray:
        return self.data.xpos[self.scene.object_body_ids]

    def _evaluate(self) -> tuple[bool, bool, float]:
        """Return (success, target fell off the table, reward) for the current state."""
        ee = self.data.xpos[self.scene.ee_body_id]
        target = self.data.xpos[self.scene.object_body_ids[self.target_index]]
        distance = float(np.linalg.norm(ee - target))
        if self.episode_task == "reach":
            success = distance <= self.robot_config.reach_success_distance
            return success, False, -distance + float(success)
        progress = float(np.dot(target - self._target_start, self._direction_vector))
        fell = bool(target[2] < self._target_start[2] - OFF_TABLE_DROP
                    or np.any(np.abs(target[:2] - TABLE_CENTRE_XY) > TABLE_HALF_EXTENT))
        success = progress >= PUSH_SUCCESS_DISTANCE and not fell
        reward = -0.5 * distance + 5.0 * min(progress, PUSH_SUCCESS_DISTANCE) + float(success) - float(fell)
        return success, fell, reward

    # ------------------------------------------------------------------ observation and info
    def _render_observation(self) -> None:
        if not self.render_observation:
            self._image = self._blank_image
            return
        if self._renderer is None:
            _import_triton_before_gl()
            self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
            flags = self._renderer.scene.flags
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                         mujoco.mjtRndFlag.mjRND_SKYBOX):
                flags[flag] = 0
        self._renderer.update_scene(self.data, camera=self.scene.camera_id, scene_option=self._scene_option)
        self._image = self._renderer.render()

    def _observation(self) -> dict[str, np.ndarray]:
        space = self.observation_space[OBS_PROPRIO]
        proprio = np.concatenate([self.data.qpos[self.scene.arm_qpos_adr],
                                  self.data.qvel[self.scene.arm_dof_adr]])
        return {
            OBS_IMAGE: self._image.copy(),
            OBS_COMMAND: self._command_bytes.copy(),
            OBS_PROPRIO: np.clip(proprio, space.low, space.high).astype(np.float32),
        }

    def object_pixels(self, positions: np.ndarray | None = None) -> np.ndarray:
        """Pixel coordinates (k, 2) as (column, row) of world points in the camera image (current size)."""
        cam = self.scene.camera_id
        if positions is None:
            positions = self._object_positions()
        return project_points(positions, self.data.cam_xpos[cam], self.data.cam_xmat[cam],
                              float(self.model.cam_fovy[cam]), self.image_size, self.image_size)

    def _info(self, success: bool) -> dict[str, Any]:
        positions = self._object_positions()
        pixels = self.object_pixels(positions)
        ee = self.data.xpos[self.scene.ee_body_id]
        target = self.scene_objects[self.target_index]
        privileged = np.concatenate([ee, positions[self.target_index], self._target_start,
                                     self._direction_vector, positions.ravel()]).astype(np.float32)
        return {
            "command": self.command,
            "is_success": bool(success),
            "task": self.episode_task,
            "direction": self.direction,
            "corruption": self.corruption,
            "word_kind": self.word_kind,
            "target": {"colour": target["colour"], "shape": target["shape"], "index": self.target_index},
            "objects": [{"colour": o["colour"], "shape": o["shape"], "position": positions[i].copy(),
                         "pixel": pixels[i].copy()} for i, o in enumerate(self.scene_objects)],
            "ee_position": ee.copy(),
            "privileged": privileged,
        }

    # ------------------------------------------------------------------ rendering, closing, pickling
    def render(self):
        """Return the current camera frame (the observation image) when ``render_mode="rgb_array"``."""
        if self.render_mode != "rgb_array":
            return None
        if not self.render_observation:
            self.render_observation = True
            self._render_observation()
            self.render_observation = False
        return self._image.copy()

    def render_view(self, width: int = VIEW_WIDTH, height: int = VIEW_HEIGHT) -> np.ndarray:
        """The current scene from the viewing camera, (height, width, 3) uint8 RGB: for videos only.

        A three-quarter view of the arm and the table; the policy never sees it. Its renderer
        is made on the first call, so runs that record no video never pay for it.
        """
        if self.scene.viewing_camera_id < 0:
            raise ValueError("this scene has no viewing camera (sim/scenes/tabletop.xml: viewing_camera)")
        limit = (int(self.model.vis.global_.offwidth), int(self.model.vis.global_.offheight))
        if not (16 <= width <= limit[0] and 16 <= height <= limit[1]):
            raise ValueError(f"view size {width}x{height} must be within 16x16..{limit[0]}x{limit[1]} "
                             "(the scene's offscreen buffer)")
        renderer = self._view_renderer
        if renderer is None or (renderer.width, renderer.height) != (width, height):
            if renderer is not None:
                renderer.close()
            _import_triton_before_gl()
            renderer = self._view_renderer = mujoco.Renderer(self.model, height, width)
        renderer.update_scene(self.data, camera=self.scene.viewing_camera_id, scene_option=self._scene_option)
        return renderer.render()

    def close(self):
        """Free the offscreen renderers (their GL contexts)."""
        for name in ("_renderer", "_view_renderer"):
            renderer = getattr(self, name, None)
            if renderer is not None:
                renderer.close()
                setattr(self, name, None)

    def __getstate__(self):
        state = self.__dict__.copy()
        # GL contexts and MjvOption do not pickle; both are remade (the renderer on the next frame).
        state["_renderer"] = None
        state["_view_renderer"] = None
        del state["_scene_option"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._scene_option = _scene_option()


def _scene_option() -> mujoco.MjvOption:
    option = mujoco.MjvOption()
    option.geomgroup[HIDDEN_GROUP] = 0  # do not draw the switched-off geometries of object slots
    return option


def _import_triton_before_gl() -> None:
    """Import triton (when installed) before the first GL context of the process.

    Without a GPU, EGL and OSMesa render with Mesa's llvmpipe, which loads its own LLVM; importing
    triton after that (torch does so lazily, e.g. via torchvision, open_clip or torch.compile)
    crashes the process with a segfault. Loaded first, both coexist. Costs ~0.4 s once.
    """
    if "triton" not in sys.modules and importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


def _random_words(rng: np.random.Generator) -> str:
    """A random string of 2-5 made-up lowercase words (a 'corrupted' command)."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(letters[rng.integers(0, 26, rng.integers(2, 9))]) for _ in range(rng.integers(2, 6))]
    return " ".join(words)
