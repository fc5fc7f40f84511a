"""Work spread over Ray actors: sharded evaluation, vectorised envs hosted by actors, and sweeps.

Every module here imports Ray only when called (see :mod:`vla_ros.distributed.ray_support`).
"""
