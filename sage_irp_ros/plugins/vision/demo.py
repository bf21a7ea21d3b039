"""The vision plugin's hooks for ``make demo`` and the orchestrator benchmark (no ROS).

Named by the vision entry of :mod:`sage_irp_ros.registry`:

- :func:`score`: mIoU of the recorded ``/vision/mask`` against the bag's truth class maps (all
  scene frames, the easy and the hard half, per class);
- :func:`plot_steps`: steps per camera frame (scenes of rising difficulty, then the photos);
- :func:`plots`: the extra picture of the demo, ``overlays.png`` (the demo calls a ``plots``
  function of the ``plot_steps`` module when there is one, see :mod:`sage_irp_ros.demo.plots`);
- :func:`workload`: held-out scenes for ``bench/orchestrator_bench.py``.

Messages are read through their fields only (``header.stamp``, ``height``, ``width``,
``step``, ``encoding``, ``data``), so any object with those fields will do.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import numpy as np

from sage_irp_ros.plugins.vision.palette import PALETTE

MASK_TOPIC = '/vision/mask'
OVERLAY_TOPIC = '/vision/overlay'

_CHANNELS = {'mono8': 1, 'rgb8': 3}


def stamp_ns(header) -> int:
    """Return a header's stamp in nanoseconds."""
    return header.stamp.sec * 10 ** 9 + header.stamp.nanosec


def image_array(msg) -> np.ndarray:
    """Decode a mono8 (``(H, W)``) or rgb8 (``(H, W, 3)``) image message's pixels (a copy).

    Rows may be padded (``step`` larger than ``width`` x channels).
    """
    enc = str(msg.encoding).lower()
    if enc not in _CHANNELS:
        raise ValueError(f'expected a mono8 or rgb8 image, got {msg.encoding!r}')
    ch = _CHANNELS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    try:
        buf = np.frombuffer(msg.data, dtype=np.uint8)
    except TypeError:  # a list of ints
        buf = np.asarray(msg.data, dtype=np.uint8)
    if step < w * ch or buf.size < step * (h - 1) + w * ch:
        raise ValueError(f'{enc} image {w}x{h} with step {step}: only {buf.size} bytes')
    if buf.size < step * h:  # tolerate a missing pad on the last row
        buf = np.concatenate([buf, np.zeros(step * h - buf.size, np.uint8)])
    rows = buf[:step * h].reshape(h, step)[:, :w * ch]
    return np.ascontiguousarray(rows if ch == 1 else rows.reshape(h, w, ch))


def score(recorded: Dict[str, list], truth: dict) -> dict:
    """Score the recorded masks: mIoU over the scene frames (matched by header stamp).

    ``truth['frames']`` lists the camera frames (``stamp_ns``, ``difficulty``), and
    ``truth['class_maps']`` maps a scene frame's stamp to its class map (photos have none).
    Each frame counts once (its first mask). Frames of difficulty < 0.5 are the easy half.
    """
    from sage_irp_ros.plugins.vision.evaluate import IoUAccumulator
    frames = {f['stamp_ns']: f for f in truth['frames']}
    n_classes = len(truth['classes'])
    acc = IoUAccumulator(n_classes)
    acc_easy, acc_hard = IoUAccumulator(n_classes), IoUAccumulator(n_classes)
    answered = set()
    for _, m in recorded.get(MASK_TOPIC, []):
        t = stamp_ns(m.header)
        if t not in frames or t in answered:
            continue
        answered.add(t)
        if t in truth['class_maps']:
            gt = truth['class_maps'][t]
            mask = image_array(m)  # mono8 class ids
            acc.add(mask, gt)
            (acc_easy if frames[t]['difficulty'] < 0.5 else acc_hard).add(mask, gt)
    n_scenes = sum(1 for t in answered if t in truth['class_maps'])
    return {'answered': len(answered), 'quality': {
        'metric': 'mIoU', 'value': round(acc.miou(), 4), 'n': n_scenes,
        'easy_half': round(acc_easy.miou(), 4), 'hard_half': round(acc_hard.miou(), 4),
        'per_class': [None if v is None else round(v, 4) for v in acc.per_class()]}}


def plot_steps(ax, records: List[dict], truth: dict) -> None:
    """Draw steps per camera frame (blue: scenes, difficulty 0 -> 1; orange: photos)."""
    frame_of = {f['stamp_ns']: f for f in truth['frames']}
    xs, ys, cs = [], [], []
    for r in records:
        # The input stamp travels as float seconds: round it to the bag's whole milliseconds.
        t = int(round((r.get('metadata') or {}).get('input_stamp', 0) * 1e9 / 1e6)) * 10**6
        f = frame_of.get(t)
        if f is None:
            continue
        xs.append(f['index'])
        ys.append(r['steps'])
        cs.append('tab:blue' if f['kind'] == 'scene' else 'tab:orange')
    ax.scatter(xs, ys, c=cs, s=14)
    ax.set(title='vision: steps per frame (blue: scenes, difficulty 0 -> 1; orange: photos)',
           xlabel='frame', ylabel='steps')


def plots(out_dir: str, recorded: Dict[str, list], truth: dict,
          save: Callable[[object, str], None]) -> None:
    """Draw ``overlays.png``: the overlay of 4 scenes of rising difficulty and the photos.

    The truth class map is drawn under each scene. ``save(fig, name)`` writes a figure into
    ``out_dir`` (and closes it); nothing is drawn when no overlay was recorded.
    """
    import matplotlib.pyplot as plt
    overlays = {stamp_ns(m.header): m for _, m in recorded.get(OVERLAY_TOPIC, [])}
    scenes = [f for f in truth['frames'] if f['kind'] == 'scene']
    picks = [f for f in truth['frames'] if f['kind'] == 'photo']
    if scenes:
        picks = [scenes[i] for i in np.linspace(0, len(scenes) - 1, 4).astype(int)] + picks
    picks = [f for f in picks if f['stamp_ns'] in overlays]
    if not picks:
        return
    fig, axes = plt.subplots(2, len(picks), figsize=(2.2 * len(picks), 4.6), squeeze=False)
    for j, f in enumerate(picks):
        axes[0, j].imshow(image_array(overlays[f['stamp_ns']]))
        title = f'd={f["difficulty"]:.2f}' if f['kind'] == 'scene' else f['name']
        axes[0, j].set_title(f'#{f["index"]} {title}', fontsize=8)
        gt = truth['class_maps'].get(f['stamp_ns'])
        if gt is not None:
            axes[1, j].imshow(PALETTE[gt % len(PALETTE)])
            axes[1, j].set_title('truth', fontsize=8)
        for ax in axes[:, j]:
            ax.axis('off')
    save(fig, 'overlays.png')


def workload(cycles: int) -> Tuple[object, object, list, Callable]:
    """Return the orchestrator benchmark's vision workload: one held-out scene per cycle.

    Scenes alternate easy and hard; the metric is mIoU over every frame. Returns ``(plugin,
    halt config, [(image, class map)], metric(results, truths) -> float)``.
    """
    from sage_irp_ros.plugins.vision.evaluate import IoUAccumulator
    from sage_irp_ros.plugins.vision.plugin import load_default
    from sage_irp_ros.plugins.vision.scenes import held_out
    vision = load_default()
    imgs_e, gts_e = held_out('easy', (cycles + 1) // 2, vision.cfg.task)
    imgs_h, gts_h = held_out('hard', (cycles + 1) // 2, vision.cfg.task)
    items = []
    for i in range(cycles):
        imgs, gts = (imgs_e, gts_e) if i % 2 == 0 else (imgs_h, gts_h)
        items.append((imgs[i // 2], gts[i // 2]))

    def metric(results, truths) -> float:
        acc = IoUAccumulator(len(vision.classes))
        for r, gt in zip(results, truths, strict=True):
            acc.add(r.output, gt)
        return acc.miou()

    return vision, vision.halt_config(), items, metric
