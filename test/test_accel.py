"""Batched refinement, CUDA step graphs and half precision (sage_irp_ros.accel, refine_batch).

The CPU tests run everywhere. The CUDA tests are skipped on a machine without CUDA, with the
reason; on a GPU they run alone, without the ROS fixtures (``pytest --noconftest
test/test_accel.py``), as the GPU check does (docs/GPU.md).
"""

import math

import numpy as np
import pytest
import torch

from sage_irp_ros.accel import GraphedFunction, autocast
from sage_irp_ros.core.budget import Budget
from sage_irp_ros.core.loop import refine, refine_batch
from sage_irp_ros.core.plugin import HALT_ERROR, HaltConfig

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason='no CUDA device on this machine: the GPU '
                                                 'paths are measured by bench/gpu_bench.py')


def _frames(n, split='hard'):
    from sage_irp_ros.plugins.vision import scenes
    from sage_irp_ros.plugins.vision.plugin import load_default
    task = load_default().cfg.task
    imgs, gts = scenes.held_out(split, n, task)
    return list(imgs), list(gts)


def _same_runs(a, b):
    return [(x.trace.steps, x.trace.halt_reason) for x in a] == \
        [(y.trace.steps, y.trace.halt_reason) for y in b]


# --------------------------------------------------------------------------- CPU

def test_refine_batch_halts_each_input_as_refine_does_and_answers_the_finished_first():
    from sage_irp_ros.plugins.vision.plugin import load_default
    plugin = load_default()
    imgs, _ = _frames(8)
    config = plugin.halt_config()
    single = [refine(plugin, x, None, config=config) for x in imgs]
    order = []
    batched = refine_batch(plugin, imgs, config=config,
                           on_result=lambda i, r: order.append((i, r.trace.steps)))
    assert _same_runs(single, batched)
    assert len({r.trace.steps for r in single}) > 1, 'the inputs should need different steps'
    for s, b in zip(single, batched, strict=True):
        assert np.mean(s.output == b.output) > 0.999
        assert b.trace.energies == pytest.approx(s.trace.energies, abs=1e-4)
        assert len(b.trace.step_ms) == b.trace.steps
    # answered as they finish: in order of their step counts, not of their inputs
    assert [s for _, s in order] == sorted(s for _, s in order)
    assert sorted(i for i, _ in order) == list(range(len(imgs)))


def test_refine_batch_keeps_going_past_a_bad_input_and_a_spent_budget():
    from sage_irp_ros.plugins.vision.plugin import load_default
    plugin = load_default()
    imgs, _ = _frames(3)
    bad = np.zeros((4, 4), np.float32)  # not a uint8 image: init_state raises
    budgets = [Budget(), Budget(), Budget(granted=0.0)]
    out = refine_batch(plugin, [imgs[0], bad, imgs[1]], config=plugin.no_halt_config(3),
                       budgets=budgets)
    assert out[0].trace.steps == 3 and out[0].output is not None
    assert out[1].trace.halt_reason == HALT_ERROR and 'init_state' in out[1].trace.error
    assert out[1].output is None
    assert out[2].trace.halt_reason == 'budget' and out[2].trace.steps == 0
    assert out[2].output is not None  # decoded from its initial state
    with pytest.raises(ValueError, match='contexts, budgets and deadlines'):
        refine_batch(plugin, imgs, budgets=[Budget()])


def test_refine_batch_keeps_each_inputs_deadline_and_a_cancel_stops_them_all():
    import threading

    from sage_irp_ros.plugins.fixture import make_plugin
    plugin = make_plugin()
    xs = [np.sin(np.linspace(0, 6, 64)).astype(np.float32) + np.float32(i) for i in range(3)]
    config = HaltConfig(eps=0.0, K=1, max_steps=6)
    t = [0.0]

    def clock():  # every call advances 1 ms
        t[0] += 1e-3
        return t[0]
    out = refine_batch(plugin, xs, config=config, deadlines=[None, 0.012, None], clock=clock)
    assert out[1].trace.halt_reason == 'timeout' and out[1].trace.steps < 6
    assert [r.trace.halt_reason for r in (out[0], out[2])] == ['max_steps', 'max_steps']
    cancel = threading.Event()
    cancel.set()
    out = refine_batch(plugin, xs, config=config, cancel=cancel)
    assert all(r.trace.halt_reason == 'manual' and r.trace.steps == 0 for r in out)
    unpaid = refine_batch(plugin, xs, config=config, skip_unpaid=True,
                          budgets=[Budget(), Budget(granted=0.0), Budget()])
    assert unpaid[1] is None and unpaid[0].trace.steps == unpaid[2].trace.steps == 6


def test_a_step_that_raises_in_a_batch_ends_every_run_in_it_with_error():
    from sage_irp_ros.plugins.fixture import make_plugin
    plugin = make_plugin()

    class Broken(type(plugin)):
        def step_batch(self, states, schedules):
            raise RuntimeError('device lost')
    broken = Broken.__new__(Broken)
    broken.__dict__.update(plugin.__dict__)
    xs = [np.sin(np.linspace(0, 6, 64)).astype(np.float32) + np.float32(i) for i in range(3)]
    out = refine_batch(broken, xs, config=HaltConfig(eps=0.0, K=1, max_steps=5))
    assert all(r.trace.halt_reason == HALT_ERROR and 'device lost' in r.trace.error
               for r in out)
    assert all(r.output is not None and math.isfinite(r.trace.energy) for r in out)


def test_a_graphed_function_runs_eagerly_off_cuda_and_says_why():
    g = GraphedFunction(lambda a, b: (a + b, a * b))
    x = torch.arange(4.0)
    s, p = g(x, x)
    assert torch.equal(s, 2 * x) and torch.equal(p, x * x)
    assert g.graphs == 0 and g.eager_calls == 1 and 'CUDA' in g.fallback
    assert g.bare_replay(x, x) is None
    off = GraphedFunction(lambda a: (a,), enabled=False)
    off(x)
    assert off.fallback == 'graphs disabled'


def test_fp16_is_refused_off_cuda_by_every_plugin_that_offers_it():
    from sage_irp_ros import registry
    with pytest.raises(ValueError, match='fp16'):
        autocast(torch.device('cpu'), 'fp16')
    with pytest.raises(ValueError, match='precision'):
        autocast(torch.device('cpu'), 'bf16')
    for spec in registry.specs():
        if 'fp16' in spec.precisions:
            with pytest.raises(ValueError, match='fp16'):
                spec.make_plugin(device='cpu', precision='fp16')


# --------------------------------------------------------------------------- CUDA

@needs_cuda
def test_cuda_graphs_replay_what_the_eager_function_computes():
    f = GraphedFunction(lambda a, b: (torch.relu(a @ b), (a - 1).square().sum(0)))
    for n in (8, 8, 16, 8):
        a, b = torch.randn(n, n, device='cuda'), torch.randn(n, n, device='cuda')
        r1, r2 = f(a, b)
        assert torch.allclose(r1, torch.relu(a @ b), atol=1e-5)
        assert torch.allclose(r2, (a - 1).square().sum(0), atol=1e-5)
    assert f.graphs == 2 and f.replays == 4 and f.fallback is None
    kept = f(a, b)[0]
    f(torch.zeros_like(a), b)  # the next replay overwrites the graph's buffers, not ours
    assert torch.allclose(kept, torch.relu(a @ b), atol=1e-5)


@needs_cuda
def test_vision_on_cuda_graphed_equals_eager_and_fp16_halts_as_fp32():
    from sage_irp_ros.plugins.vision.evaluate import miou
    from sage_irp_ros.plugins.vision.plugin import load_default
    imgs, gts = _frames(24)
    runs = {}
    for precision in ('fp32', 'fp16'):
        for graphs in (False, True):
            p = load_default(device='cuda', precision=precision, cuda_graphs=graphs)
            runs[precision, graphs] = [refine(p, x, None, config=p.halt_config()) for x in imgs]
            if graphs:
                assert p.step_graphs.graphs >= 1 and p.step_graphs.fallback is None
    assert _same_runs(runs['fp32', False], runs['fp32', True])
    agree = np.mean([(a.trace.steps, a.trace.halt_reason) == (b.trace.steps, b.trace.halt_reason)
                     for a, b in zip(runs['fp32', True], runs['fp16', True], strict=True)])
    assert agree >= 0.9
    q = {k: miou(np.stack([r.output for r in v]), np.stack(gts), p.cfg.num_classes)
         for k, v in runs.items()}
    assert abs(q['fp16', True] - q['fp32', True]) < 0.01, q


@needs_cuda
def test_refine_batch_on_cuda_matches_batch_one():
    from sage_irp_ros.plugins.vision.plugin import load_default
    p = load_default(device='cuda')
    imgs, _ = _frames(12)
    single = [refine(p, x, None, config=p.halt_config()) for x in imgs]
    batched = refine_batch(p, imgs, config=p.halt_config())
    assert _same_runs(single, batched)
    assert all(np.mean(a.output == b.output) > 0.999
               for a, b in zip(single, batched, strict=True))


@needs_cuda
def test_language_and_audio_run_on_cuda_in_fp16():
    from sage_irp_ros import registry
    for name, x in (('language', 'the cat sat on the [MASK] .'),
                    ('audio', np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32))):
        p = registry.get(name).make_plugin(device='cuda', precision='fp16')
        r = refine(p, x, None, config=p.halt_config())
        assert r.trace.halt_reason != HALT_ERROR, r.trace.error
        assert all(math.isfinite(e) for e in r.trace.energies)
