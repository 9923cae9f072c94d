"""CUDA graphs for the CUDA backend's eval forward (`model.cuda_graphs(True)`).

One graph per (dtype, input shape, input strides, device), cached with the prepared program, so
it is dropped with it when any weight or buffer changes.  Capture follows PyTorch's recipe:
warm-up forwards on a side stream first (they compile and load every Triton kernel: the tiles
are a fixed heuristic, so nothing is autotuned or timed, during the capture or ever), then the
capture of one forward from a static input buffer.  A call copies its input into that buffer
and replays the graph.

What the caller must know:
* the output is the graph's static output tensor: the next replay for the same input shape
  overwrites it in place.  Keep a result with `.clone()` (or copy it out) before the next call;
* replays of one graph are not thread-safe (one static input and output per graph);
* the kernels keep no state between forwards: every buffer is fully written before it is read
  (the SE pool sums are per-tile partials, written, not accumulated), so there is nothing to
  re-zero inside the graph.
"""
from __future__ import annotations

from typing import Callable

import torch

WARMUP = 2  # forwards before the capture (the first compiles and loads the kernels)


class CapturedForward:
    """`run(static_input)` captured as a CUDA graph; calling it replays the graph."""

    #: The CUDA API used (a stand-in in the CPU tests of the capture logic).
    cuda = torch.cuda

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor, warmup: int = WARMUP):
        cuda = self.cuda
        self.static_input = torch.empty_strided(example.shape, example.stride(), dtype=example.dtype,
                                                device=example.device)
        self.static_input.copy_(example)
        side = cuda.Stream(device=example.device)
        side.wait_stream(cuda.current_stream(example.device))
        with cuda.stream(side):
            for _ in range(warmup):
                run(self.static_input)
        cuda.current_stream(example.device).wait_stream(side)
        self.graph = cuda.CUDAGraph()
        with cuda.graph(self.graph):
            self.static_output = run(self.static_input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output


def graph_key(x: torch.Tensor, dtype: torch.dtype) -> tuple:
    """What a captured graph is specific to: the kernels' arguments bake in shapes and strides."""
    return dtype, tuple(x.shape), tuple(x.stride()), x.device.type, x.device.index
