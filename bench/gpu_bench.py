"""GPU benchmark: every plugin on CUDA, fp32 and fp16, eager and graphed, batch 1 and batched.

    python bench/gpu_bench.py [--quick] [--data DIR] [--out out/bench/gpu.json]
    python bench/gpu_bench.py --export-data DIR      # where the Debian data is installed

Per plugin, on held-out inputs, through the core loop (``refine``) with the plugin's default
halting, batch 1:

- ``step_ms_<precision>_<mode>``: median time of a step as the loop measures it (the step, its
  energy, the host copy the halting check reads); ``mode`` is ``eager`` or ``graph`` (the step
  replayed from a CUDA graph, where the plugin has one);
- ``fp16_over_fp32_step``: fp16 step time over fp32, in the plugin's default mode;
- ``graph_over_bare``: the graphed step in the loop over a bare replay of the same graph (the
  kernels alone, back to back, one sync at the end); ``graph_over_bare_synced`` the same with
  a sync after every replay (what any loop that reads the energy on the host needs);
- ``halt_agreement``: the fraction of inputs whose run halts at the same step for the same
  reason in fp16 as in fp32; ``quality_fp32`` and ``quality_fp16``: the plugin's own quality
  (vision mIoU, language masked-token accuracy, audio true mel distance in dB (lower is
  better), control feasible rate).

Vision also: batched refinement (``refine_batch``, per-input halting, 4 inputs) against batch
1, and the end-to-end camera path in one process (640x480 rgb8 bytes in, a mono8 mask out:
letterbox, refinement, decoding; no DDS): ``vision_e2e_fps_1cam`` (frames one after another) and
``vision_e2e_fps_per_cam_4cams`` (4 cameras' frames refined together, per camera).

Nothing downloads. On a machine without the Debian data (pocketsphinx-testdata, the language
corpus), ``--export-data DIR`` writes the held-out inputs where they are installed and
``--data DIR`` reads them. Figures are meaningful only from a CUDA device; the script refuses
to run without one unless ``--device cpu`` (a check of the script itself, figures not GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from sage_irp_ros.core.loop import refine, refine_batch  # noqa: E402

LANGUAGE_RATE = 0.3
AUDIO_SNR_DB = 5.0


def _median(xs):
    xs = [x for x in xs if x is not None]
    return round(float(statistics.median(xs)), 4) if xs else None


def _sync(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def _runs(plugin, items, config, warmup=3):
    """Refine every item at batch 1; per-item (steps, halt reason), step times, results."""
    for x0 in items[:warmup]:
        refine(plugin, x0, None, config=config)
    out = []
    for x0 in items:
        out.append(refine(plugin, x0, None, config=config))
    step_ms = [ms for r in out for ms in r.trace.step_ms]
    return out, step_ms


def _agreement(a, b):
    same = [(x.trace.steps, x.trace.halt_reason) == (y.trace.steps, y.trace.halt_reason)
            for x, y in zip(a, b, strict=True)]
    return round(sum(same) / max(len(same), 1), 4)


def _bare(plugin, state, device, n=300):
    """Per-replay ms of the step graph of ``state``'s shapes: back to back, and synced."""
    g = plugin.step_graphs
    m = state.meta
    replay = g.bare_replay(state.payload, m['inject'], m['skip'][0], m['skip'][2])
    if replay is None:
        return None, None
    for _ in range(20):
        replay()
    _sync(device)
    t = time.perf_counter()
    for _ in range(n):
        replay()
    _sync(device)
    back_to_back = (time.perf_counter() - t) * 1e3 / n
    t = time.perf_counter()
    for _ in range(n):
        replay()
        _sync(device)
    synced = (time.perf_counter() - t) * 1e3 / n
    return back_to_back, synced


# --------------------------------------------------------------------------- vision

def bench_vision(device, quick):
    from sage_irp_ros.plugins.vision import scenes
    from sage_irp_ros.plugins.vision.evaluate import IoUAccumulator
    from sage_irp_ros.plugins.vision.plugin import load_default
    n = 20 if quick else 100
    probe = load_default(device=device)
    task, ncls = probe.cfg.task, probe.cfg.num_classes
    imgs, gts = [], []
    for split in ('easy', 'hard'):
        i, g = scenes.held_out(split, n, task)
        imgs += list(i)
        gts += list(g)
    cuda = torch.device(device).type == 'cuda'
    res = {'frames': len(imgs), 'input': f'{imgs[0].shape[1]}x{imgs[0].shape[0]}'}
    runs = {}
    for precision in (('fp32', 'fp16') if cuda else ('fp32',)):
        for mode in (('eager', 'graph') if cuda else ('eager',)):
            plugin = load_default(device=device, precision=precision,
                                  cuda_graphs=(mode == 'graph'))
            out, step_ms = _runs(plugin, imgs, plugin.halt_config())
            acc = IoUAccumulator(ncls)
            for r, gt in zip(out, gts, strict=True):
                acc.add(r.output, gt)
            key = f'{precision}_{mode}'
            runs[key] = out
            res[f'step_ms_{key}'] = _median(step_ms)
            res[f'run_ms_{key}'] = _median([r.trace.time_ms for r in out])
            res[f'quality_{key}'] = round(acc.miou(), 4)
            res[f'steps_mean_{key}'] = round(float(np.mean([r.trace.steps for r in out])), 3)
            if mode == 'graph':
                res[f'graph_fallback_{precision}'] = plugin.step_graphs.fallback
                res[f'graphs_captured_{precision}'] = plugin.step_graphs.graphs
                st = plugin.init_state(imgs[0])
                bare, synced = _bare(plugin, st, device)
                res[f'bare_replay_ms_{precision}'] = None if bare is None else round(bare, 4)
                res[f'bare_replay_synced_ms_{precision}'] = (None if synced is None
                                                             else round(synced, 4))
    mode = 'graph' if cuda else 'eager'
    res['default_mode'] = mode
    res['quality_fp32'] = res[f'quality_fp32_{mode}']
    if cuda:
        res['quality_fp16'] = res[f'quality_fp16_{mode}']
        res['fp16_over_fp32_step'] = _ratio(res['step_ms_fp16_graph'], res['step_ms_fp32_graph'])
        res['fp16_over_fp32_step_eager'] = _ratio(res['step_ms_fp16_eager'],
                                                  res['step_ms_fp32_eager'])
        res['graph_over_eager_step'] = _ratio(res['step_ms_fp32_graph'],
                                              res['step_ms_fp32_eager'])
        res['graph_over_bare'] = _ratio(res['step_ms_fp32_graph'], res['bare_replay_ms_fp32'])
        res['graph_over_bare_synced'] = _ratio(res['step_ms_fp32_graph'],
                                               res['bare_replay_synced_ms_fp32'])
        res['halt_agreement'] = _agreement(runs['fp32_graph'], runs['fp16_graph'])
        res['halt_agreement_graph_vs_eager'] = _agreement(runs['fp32_graph'],
                                                          runs['fp32_eager'])
    res.update(bench_vision_batched(device, imgs, gts, ncls, runs[f'fp32_{mode}'], quick))
    res.update(bench_vision_e2e(device, imgs, quick))
    return res


def bench_vision_batched(device, imgs, gts, ncls, single, quick, batch=4):
    """``refine_batch`` over groups of ``batch`` frames against the batch-1 runs."""
    from sage_irp_ros.plugins.vision.evaluate import IoUAccumulator
    from sage_irp_ros.plugins.vision.plugin import load_default
    plugin = load_default(device=device)
    config = plugin.halt_config()
    groups = [imgs[i:i + batch] for i in range(0, len(imgs) - batch + 1, batch)]
    refine_batch(plugin, groups[0], config=config)  # warm-up: graphs of each batch size
    refine_batch(plugin, groups[1], config=config)
    _sync(device)
    t = time.perf_counter()
    out = []
    for g in groups:
        out += refine_batch(plugin, g, config=config)
    _sync(device)
    batched_s = time.perf_counter() - t
    n = len(out)
    t = time.perf_counter()
    for x0 in imgs[:n]:
        refine(plugin, x0, None, config=config)
    _sync(device)
    single_s = time.perf_counter() - t
    acc = IoUAccumulator(ncls)
    for r, gt in zip(out, gts[:n], strict=True):
        acc.add(r.output, gt)
    return {'batched_size': batch,
            'batched_frames_per_s': round(n / batched_s, 1),
            'batch1_frames_per_s': round(n / single_s, 1),
            'batched_over_batch1_throughput': _ratio(single_s, batched_s),
            'batched_quality': round(acc.miou(), 4),
            'batched_halt_agreement': _agreement(out, single[:n])}


def camera_frames(imgs, width=640, height=480):
    """The held-out scenes scaled (nearest) to a camera's size, as rgb8 message bytes.

    Like ``bench/camera_bench.frames``, but of the scenes given (the benchmark's own, both
    splits), not the hard split's first: the H200 figures of docs/GPU.md were measured so.
    """
    ys = np.arange(height) * imgs[0].shape[0] // height
    xs = np.arange(width) * imgs[0].shape[1] // width
    return [np.ascontiguousarray(im[ys][:, xs]).tobytes() for im in imgs]


def bench_vision_e2e(device, imgs, quick, width=640, height=480, cams=4):
    """Frames/s of the camera path in one process: bytes in, mask bytes out (no DDS)."""
    from sage_irp_ros.plugins.vision.plugin import load_default
    plugin = load_default(device=device)
    config = plugin.halt_config()
    frames = camera_frames(imgs[:32], width, height)
    seconds = 2.0 if quick else 5.0

    def decode(buf):
        return np.frombuffer(buf, np.uint8).reshape(height, width, 3)

    for buf in frames[:5]:
        refine(plugin, decode(buf), None, config=config).output.tobytes()
    t, k = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        refine(plugin, decode(frames[k % len(frames)]), None, config=config).output.tobytes()
        k += 1
    fps1 = k / (time.perf_counter() - t)
    sent = []
    for j in range(3):
        refine_batch(plugin, [decode(frames[(j + c) % len(frames)]) for c in range(cams)],
                     config=config, on_result=lambda i, r: sent.append(r.output.tobytes()))
    t, ticks = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        refine_batch(plugin, [decode(frames[(ticks * cams + c) % len(frames)])
                              for c in range(cams)],
                     config=config, on_result=lambda i, r: sent.append(r.output.tobytes()))
        ticks += 1
    per_cam = ticks / (time.perf_counter() - t)
    return {'vision_e2e_fps_1cam': round(fps1, 1), 'vision_e2e_fps_per_cam_4cams':
            round(per_cam, 1), 'vision_e2e_size': f'{width}x{height}',
            'vision_e2e_path': 'in process: rgb8 bytes -> refine (letterbox, encode, steps, '
                               'decode) -> mono8 bytes; no DDS'}


# --------------------------------------------------------------------------- language

def language_sentences(data, quick):
    path = os.path.join(data, 'language_held_out.json') if data else None
    if path and os.path.exists(path):
        sents = json.load(open(path))
    else:
        from sage_irp_ros.plugins.language import corpus
        sents = corpus.load_sentences()['held_out']
    return sents[:100 if quick else 400]


def bench_language(device, data, quick):
    from sage_irp_ros.plugins.language.evaluate import mask_sentence
    from sage_irp_ros.plugins.language.plugin import load_default
    sents = language_sentences(data, quick)
    masked = [mask_sentence(toks, LANGUAGE_RATE) for toks in sents]
    cuda = torch.device(device).type == 'cuda'
    res = {'sentences': len(sents), 'mask_rate': LANGUAGE_RATE,
           'graph': 'not used: one sentence, one shape, and the step reads its fills on the '
                    'host to choose which to keep'}
    runs = {}
    for precision in (('fp32', 'fp16') if cuda else ('fp32',)):
        plugin = load_default(device=device, precision=precision)
        out, step_ms = _runs(plugin, [m[0] for m in masked], plugin.adaptive_halt_config())
        hits = []
        for r, toks, (_, pos) in zip(out, sents, masked, strict=True):
            hits += [a == toks[p] for a, p in zip(plugin.filled_tokens(r.state), pos,
                                                  strict=True)]
        runs[precision] = out
        res[f'step_ms_{precision}_eager'] = _median(step_ms)
        res[f'quality_{precision}'] = round(sum(hits) / max(len(hits), 1), 4)
        res[f'steps_mean_{precision}'] = round(float(np.mean([r.trace.steps for r in out])), 3)
    if cuda:
        res['fp16_over_fp32_step'] = _ratio(res['step_ms_fp16_eager'], res['step_ms_fp32_eager'])
        res['halt_agreement'] = _agreement(runs['fp32'], runs['fp16'])
    res['graph_over_bare'] = None
    return res


# --------------------------------------------------------------------------- audio

def audio_clips(data):
    path = os.path.join(data, 'audio_held_out.npz') if data else None
    if path and os.path.exists(path):
        z = np.load(path)
        return [z[k] for k in sorted(z.files)]
    from bench.audio_bench import held_out_clips
    return [x for _, x, _ in held_out_clips()]


def bench_audio(device, data, quick):
    from bench.audio_bench import held_out_mixtures
    from sage_irp_ros.plugins.audio.plugin import load_default
    from sage_irp_ros.plugins.audio.train import mel_dist_db, stft
    mixtures = list(held_out_mixtures(audio_clips(data), (None, AUDIO_SNR_DB)))
    items = [y for *_, y, _ in mixtures]
    cleans = [s for *_, s in mixtures]
    cuda = torch.device(device).type == 'cuda'
    res = {'utterances': len(items), 'snr_db': [None, AUDIO_SNR_DB],
           'graph': 'not used: one utterance, one length (a graph per length would be captured '
                    'once and replayed never)'}
    runs = {}
    for precision in (('fp32', 'fp16') if cuda else ('fp32',)):
        plugin = load_default(device=device, precision=precision)
        out, step_ms = _runs(plugin, items, plugin.halt_config(), warmup=2)
        dist = []
        for r, c in zip(out, cleans, strict=True):
            est = stft(torch.from_numpy(r.output.samples)[None]).abs()
            ref = stft(torch.from_numpy(c)[None]).abs()
            dist.append(float(mel_dist_db(est, ref).mean()))
        runs[precision] = out
        res[f'step_ms_{precision}_eager'] = _median(step_ms)
        res[f'quality_{precision}'] = round(float(np.mean(dist)), 4)
        res[f'steps_mean_{precision}'] = round(float(np.mean([r.trace.steps for r in out])), 3)
    res['quality'] = 'true mel distance to the clean speech, dB (lower is better)'
    if cuda:
        res['fp16_over_fp32_step'] = _ratio(res['step_ms_fp16_eager'], res['step_ms_fp32_eager'])
        res['halt_agreement'] = _agreement(runs['fp32'], runs['fp16'])
    res['graph_over_bare'] = None
    return res


# --------------------------------------------------------------------------- control

def bench_control(device, quick):
    from sage_irp_ros.plugins.control import maps
    from sage_irp_ros.plugins.control.plugin import ControlIRP, ControlProblem
    probs = maps.problems('held_out', n=2 if quick else 5)
    res = {'problems': len(probs), 'precision': 'fp32 (fp64 on the cpu); fp16 not offered: '
           'path coordinates in metres and a banded solve need the mantissa'}
    runs = {}
    for dev in ('cpu', device) if torch.device(device).type == 'cuda' else ('cpu',):
        plugin = ControlIRP(device=dev)
        items = []
        for p in probs:
            p.grid._cache.clear()
            items.append(ControlProblem(p.grid, tuple(p.start), tuple(p.goal)))
        out, step_ms = _runs(plugin, items, plugin.halt_config(), warmup=1)
        name = 'cuda' if dev != 'cpu' else 'cpu'
        runs[name] = out
        res[f'step_ms_{name}'] = _median(step_ms)
        res[f'quality_{name}'] = round(float(np.mean(
            [bool(r.output.metrics['feasible']) for r in out])), 4)
    if 'cuda' in runs:
        res['cuda_over_cpu_step'] = _ratio(res['step_ms_cuda'], res['step_ms_cpu'])
        res['halt_agreement_cuda_vs_cpu'] = _agreement(runs['cpu'], runs['cuda'])
    # the keys every plugin reports: fp16 is not offered, so its figures are null
    res['quality_fp32'] = res.get('quality_cuda', res['quality_cpu'])
    res['quality_fp16'] = res['halt_agreement'] = None
    res['fp16_over_fp32_step'] = None
    res['graph_over_bare'] = None
    return res


# --------------------------------------------------------------------------- main

def export_data(folder):
    from bench.audio_bench import held_out_clips
    from sage_irp_ros.plugins.language import corpus
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'language_held_out.json'), 'w') as f:
        json.dump(corpus.load_sentences()['held_out'][:400], f)
    clips = held_out_clips()
    np.savez_compressed(os.path.join(folder, 'audio_held_out.npz'),
                        **{f'clip{i:02d}': x for i, (_, x, _) in enumerate(clips)})
    print(f'wrote the held-out inputs to {folder}')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--quick', action='store_true', help='fewer inputs, shorter timings')
    ap.add_argument('--data', default=None, help='held-out inputs written by --export-data')
    ap.add_argument('--export-data', default=None, metavar='DIR')
    ap.add_argument('--plugins', default='vision,language,audio,control')
    ap.add_argument('--out', default=os.path.join(ROOT, 'out', 'bench', 'gpu.json'))
    args = ap.parse_args(argv)
    if args.export_data:
        export_data(args.export_data)
        return 0
    dev = torch.device(args.device)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        print('gpu_bench: no CUDA device here; nothing measured (--device cpu checks the '
              'script itself)', file=sys.stderr)
        return 2
    t0 = time.time()
    report = {'device': args.device, 'torch': torch.__version__, 'cuda': torch.version.cuda,
              'gpu_name': torch.cuda.get_device_name(dev) if dev.type == 'cuda' else None,
              'python': platform.python_version(), 'quick': args.quick,
              'commit': os.environ.get('GIT_COMMIT')}
    benches = {'vision': lambda: bench_vision(args.device, args.quick),
               'language': lambda: bench_language(args.device, args.data, args.quick),
               'audio': lambda: bench_audio(args.device, args.data, args.quick),
               'control': lambda: bench_control(args.device, args.quick)}
    for name in args.plugins.split(','):
        t = time.time()
        try:
            report[name] = benches[name]()
        except Exception as exc:  # noqa: BLE001 - one plugin's failure must not lose the rest
            import traceback
            report[name] = {'error': f'{type(exc).__name__}: {exc}',
                            'traceback': traceback.format_exc()}
        report[name]['seconds'] = round(time.time() - t, 1)
        print(name, json.dumps(report[name], indent=1), flush=True)
    v = report.get('vision', {})
    report['vision_e2e_fps_1cam'] = v.get('vision_e2e_fps_1cam')
    report['vision_e2e_fps_per_cam_4cams'] = v.get('vision_e2e_fps_per_cam_4cams')
    report['seconds'] = round(time.time() - t0, 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=2)
        f.write('\n')
    print(f'wrote {args.out} in {report["seconds"]} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
