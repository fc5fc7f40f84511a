"""Batch-1 inference replayed from a CUDA graph (torch backend on a CUDA device).

At batch 1 the tiny CLIP + policy head is a few hundred small kernels; launching them one by one
from Python costs more than running them. :class:`CudaGraphFrame` captures the whole per-frame
computation once (image tower -> normalised features -> fusion -> actor mean) into static buffers
and replays it per frame: one launch, no Python per kernel. The text embedding is an input (commands
are cached), as in the ONNX export.

:func:`~vla_ros.policy.export.frame_forward` is the captured computation, the same one the ONNX
export traces. It is plain torch and equals the eager path of
:meth:`Policy.normalized_action <vla_ros.policy.policy.Policy.normalized_action>`, which the CPU
tests check; only the capture itself needs a GPU.
"""

from __future__ import annotations

import torch

from vla_ros.keys import FEAT_REFERENCE_PATCHES
from vla_ros.policy.export import frame_forward


class CudaGraphFrame:
    """:func:`frame_forward` at batch 1, captured once on a CUDA device and replayed per frame."""

    def __init__(self, visual: torch.nn.Module, network: torch.nn.Module, image_size: int, embed_dim: int,
                 proprio_dim: int, pixel_dtype: torch.dtype, device: torch.device | str, warmup: int = 3):
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            raise RuntimeError(f"CUDA graphs need a CUDA device, got {device}")
        self._visual, self._network = visual, network
        self._pixels = torch.zeros(1, 3, image_size, image_size, device=device, dtype=pixel_dtype)
        self._text = torch.zeros(1, embed_dim, device=device)
        self._proprio = torch.zeros(1, proprio_dim, device=device)
        self.reference_frame = bool(getattr(network.features_extractor, "reference_frame", False))
        self._reference = None
        if self.reference_frame:  # (1, P, D), as the network's observation space has it
            shape = network.observation_space[FEAT_REFERENCE_PATCHES].shape
            self._reference = torch.zeros(1, *shape, device=device)
        # Warm up on a side stream first (cuBLAS handles, lazy init), as torch.cuda.graphs documents.
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(warmup):
                self._run_eager()
        torch.cuda.current_stream(device).wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self._graph):
            self._outputs = self._run_eager()

    def _run_eager(self):
        return frame_forward(self._visual, self._network, self._pixels, self._text, self._proprio, self._reference)

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor, text: torch.Tensor, proprio: torch.Tensor,
                 reference: torch.Tensor | None = None):
        """Copy the inputs (batch 1) into the graph's buffers, replay, return copies of the outputs.

        For reference-frame networks, ``reference`` None means this frame starts the episode: the
        graph replays twice, the second time with the frame's own patches as the reference.
        """
        if pixels.shape != self._pixels.shape:
            raise ValueError(f"CUDA graph captured for pixels {tuple(self._pixels.shape)}, got {tuple(pixels.shape)}")
        self._pixels.copy_(pixels)
        self._text.copy_(text)
        self._proprio.copy_(proprio)
        if self.reference_frame:
            if reference is None:
                self._graph.replay()
                reference = self._outputs[2]
            self._reference.copy_(reference)
        self._graph.replay()
        return tuple(output.clone() for output in self._outputs)
