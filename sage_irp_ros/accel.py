"""Torch helpers for plugins on CUDA: captured step graphs and half precision.

ROS-free and outside the core (the core imports no torch). A plugin uses them; the loop never
sees them.

At batch 1 a refinement step of a small network is a few dozen kernels of a few microseconds
each, so its time on a GPU is the CPU launching them, not the GPU running them. A CUDA graph
records the kernels once and replays them with one launch. :class:`GraphedFunction` does that
for a pure tensor function of static shapes: one graph per input signature (shapes, dtypes,
device), captured on first use and cached; inputs are copied into the graph's static buffers
and the outputs cloned out (a state keeps its tensor after the next replay overwrites the
buffers). Where a graph cannot be used (a CPU tensor, capture failing, too many shapes) it calls
the function eagerly, and says why in :attr:`GraphedFunction.fallback`.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

#: Precisions a plugin may be asked for.
PRECISIONS = ('fp32', 'fp16')


def autocast(device: torch.device, precision: str):
    """Return the context in which a model runs at ``precision`` on ``device``.

    fp16 is CUDA autocast (matrix products and convolutions in half, reductions and softmax in
    float32, as torch's autocast lists them); fp32 is a no-op context.
    """
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    if precision == 'fp16':
        if torch.device(device).type != 'cuda':
            raise ValueError("precision 'fp16' needs a CUDA device")
        return torch.autocast('cuda', dtype=torch.float16)
    return contextlib.nullcontext()


def _signature(args: Sequence[torch.Tensor]) -> Tuple:
    return tuple((tuple(a.shape), a.dtype, a.device) for a in args)


class _Graph:
    def __init__(self, graph, inputs, outputs):
        self.graph, self.inputs, self.outputs = graph, inputs, outputs
        self.sources: Tuple = (None,) * len(inputs)  # the tensors last copied in (held)
        self.lock = threading.Lock()


class GraphedFunction:
    """Replay ``fn(*tensors) -> tuple of tensors`` from a CUDA graph per input signature.

    ``fn`` must be a pure function of its tensor arguments (no host syncs, no data-dependent
    shapes or control flow, no Python state that changes between calls): what it does at
    capture is what every replay does. ``max_graphs`` bounds the cache (each graph holds its
    static buffers); a new signature beyond it runs eagerly. Thread safe: each graph's buffers
    are guarded by a lock from copy-in to clone-out. ``enabled=False`` always runs eagerly.
    For inference only: graphs are captured and replayed in inference mode (no autograd), so
    their outputs are inference tensors. An argument that is the very tensor object of the
    previous replay is not copied again (a run's per-input tensors, the same every step): the
    arguments must not be changed in place between calls.
    """

    def __init__(self, fn: Callable[..., Tuple[torch.Tensor, ...]], enabled: bool = True,
                 max_graphs: int = 16, warmup: int = 2):
        """Wrap ``fn``; graphs are captured lazily, on the first call of each signature."""
        self.fn = fn
        self.enabled = bool(enabled)
        self.max_graphs = int(max_graphs)
        self.warmup = int(warmup)
        self._graphs: Dict[Tuple, Optional[_Graph]] = {}
        self._lock = threading.Lock()
        self._pool = None
        #: Why the last call ran eagerly (None when it replayed a graph, or never ran).
        self.fallback: Optional[str] = None
        self.replays = 0
        self.eager_calls = 0

    @property
    def graphs(self) -> int:
        """Number of captured graphs."""
        return sum(g is not None for g in self._graphs.values())

    def _eager(self, args, why: str):
        self.fallback = why
        self.eager_calls += 1
        return self.fn(*args)

    @torch.inference_mode()
    def _capture(self, args) -> _Graph:
        static = [a.detach().clone() for a in args]
        side = torch.cuda.Stream(device=static[0].device)
        side.wait_stream(torch.cuda.current_stream(static[0].device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):  # lazy initialisation (cuDNN plans) outside the graph
                self.fn(*static)
        torch.cuda.current_stream(static[0].device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode='thread_local'):
            out = self.fn(*static)
        if isinstance(out, torch.Tensor):
            raise TypeError('the graphed function must return a tuple of tensors')
        return _Graph(graph, static, tuple(out))

    def __call__(self, *args: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Run ``fn(*args)``: replayed from its graph where one can be used, else eagerly."""
        if not self.enabled:
            return self._eager(args, 'graphs disabled')
        if not args or any(not isinstance(a, torch.Tensor) or a.device.type != 'cuda'
                           for a in args):
            return self._eager(args, 'not all inputs are CUDA tensors')
        key = _signature(args)
        g = self._graphs.get(key, False)
        if g is False:
            with self._lock:
                g = self._graphs.get(key, False)
                if g is False:
                    if self.graphs >= self.max_graphs:
                        return self._eager(args, f'more than {self.max_graphs} input shapes')
                    try:
                        g = self._capture(args)
                    except Exception as exc:  # noqa: BLE001 - any capture failure: run eagerly
                        g = None
                        self.fallback = f'capture failed: {type(exc).__name__}: {exc}'
                    self._graphs[key] = g
        if g is None:
            return self._eager(args, self.fallback or 'capture failed for this shape')
        with g.lock, torch.inference_mode():
            for dst, src, last in zip(g.inputs, args, g.sources, strict=True):
                if src is not last:
                    dst.copy_(src)
            g.sources = args
            g.graph.replay()
            out = tuple(o.clone() for o in g.outputs)
        self.fallback = None
        self.replays += 1
        return out

    def bare_replay(self, *args: torch.Tensor):
        """Return a callable that replays the graph of ``args``' signature and nothing else.

        For benchmarks: the time of the kernels alone, without copies, clones or any caller's
        logic. Captures the graph if needed; None when no graph can be used for ``args``.
        """
        self(*args)
        g = self._graphs.get(_signature(args))
        return None if g is None else g.graph.replay


__all__ = ['PRECISIONS', 'GraphedFunction', 'autocast']
