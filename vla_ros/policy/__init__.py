"""PPO policy on fused CLIP features: training, checkpoints, evaluation, the ``Policy`` wrapper."""
