#!/usr/bin/env python3
"""Make the bundled sample bag ``data/sample_bag/`` and its ground truth (deterministic).

Run from the repository root (after ``make setup``; needs the Debian packages ``flite``,
``wordnet-base`` and ``fortunes``)::

    AMENT_PREFIX_PATH=$PWD/.venv .venv/bin/python tools/make_sample_bag.py [--force]

Writes

- ``data/sample_bag/``: a rosbag2 bag (metadata version 9, mcap storage) of 6.4 s:

  * ``/camera/image_raw`` (``sensor_msgs/msg/Image``, rgb8 128x128, 10 Hz, sensor-data QoS):
    60 procedural scenes of the committed vision model's task (``scenes.make_scene``, task
    from ``weights/vision_irp.json``) whose difficulty ramps from 0 to 1, upscaled 2x from
    64x64 (nearest), then 4 photos from
    ``skimage.data`` (astronaut, coffee, chelsea, rocket) resized to 128x128;
  * ``/speech/text`` (``std_msgs/msg/String``, reliable): 20 held-out sentences of the language
    corpus with 30 % of their words span-masked (``[MASK]`` per lost word), one every 0.32 s;
  * ``/audio/raw`` (``std_msgs/msg/Int16MultiArray``, best effort): microphone audio, 16 kHz
    mono PCM16, 100 ms (1600 samples) per message: the first utterances' original text
    spoken by Debian ``flite`` (voice slt), then silence.

  ``--replace-camera`` rewrites only the camera frames and their truth (after the vision
  model is retrained for another task), copying every other message unchanged.

- ``data/sample_bag_truth.json``: per frame its stamp and source (scene seed and difficulty,
  or photo name), per utterance its stamp, masked text, original tokens and masked positions,
  and the audio's format and transcript with start times;
- ``data/sample_bag_truth.npz``: ``stamps_ns`` (int64, per scene frame) and ``class_maps``
  ((60, 128, 128) uint8, class id per pixel at the frame's size).

Every value is a pure function of this script (seeds, the corpus and flite), so re-running
it gives the same messages.

**Control topics** (the control plugin, issue #13), with ``--control`` (a full regeneration
that includes them) or ``--add-control`` (added to the existing bag: every existing message is
copied with its raw CDR bytes, timestamp and connection QoS into a new bag, then the control
topics are added; no existing message changes):

  * ``/map`` (``nav_msgs/msg/OccupancyGrid``, reliable, transient local: latched) at the start:
    a 6 x 6 m rooms map (``maps.rooms``, 120 x 120 cells at 5 cm, seed of the ``test`` split)
    with a closed 1 m box in it;
  * ``/start_pose`` (``geometry_msgs/msg/PoseStamped``, reliable) 10 ms later;
  * ``/goal_pose`` (``geometry_msgs/msg/PoseStamped``, reliable): 5 goals, one a second from
    1 s: three reachable, one inside the closed box (unreachable), one inside a wall;

  their truth is ``control`` in ``sample_bag_truth.json`` (the map's occupancy, the start, the
  goals with the status each should get and A*'s length) and ``control_goals`` (the goals).
  They are off by default: ``test/test_replay_regression.py`` expects exactly the three topics
  above, and the demo's accounting counts every received message (a kept map or start pose
  never triggers a run), so both need updating before the bag carries them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import wave

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rclpy.serialization import serialize_message  # noqa: E402
from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header, Int16MultiArray, MultiArrayDimension, String  # noqa: E402

from sage_irp_ros.plugins.language.corpus import detokenize, load_sentences  # noqa: E402
from sage_irp_ros.plugins.language.evaluate import mask_sentence  # noqa: E402
from sage_irp_ros.plugins.vision.scenes import make_scene  # noqa: E402
from sage_irp_ros.tools.bagio import bag_qos, make_typestore  # noqa: E402

T0_NS = 1_700_000_000 * 10 ** 9     # stamp of the bag's start (fixed: deterministic)
FRAME_PERIOD_NS = 100_000_000       # 10 Hz camera
N_SCENES = 60
SCENE_SEED0 = 7_000_000             # outside training, validation and held-out seed ranges
UPSCALE = 2                         # 64x64 scenes -> 128x128 frames
PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket')
N_UTTERANCES = 20
UTTERANCE_PERIOD_NS = 320_000_000
UTTERANCE_OFFSET_NS = 50_000_000
MASK_RATE = 0.3
SAMPLE_RATE = 16_000
CHUNK = 1600                        # samples per audio message (100 ms)
FLITE_VOICE = 'slt'                 # 16 kHz voice
FRAME_ID = 'camera_optical_frame'

TOPIC_IMAGE = '/camera/image_raw'
TOPIC_TEXT = '/speech/text'
TOPIC_AUDIO = '/audio/raw'


def _stamp(ns: int):
    from builtin_interfaces.msg import Time
    return Time(sec=ns // 10 ** 9, nanosec=ns % 10 ** 9)


def vision_task():
    """Return ``(task, classes)`` of the committed vision model (its weights' record).

    The bag's scenes are of the task the model was trained for.
    """
    path = os.path.join(ROOT, 'sage_irp_ros', 'plugins', 'vision', 'weights', 'vision_irp.json')
    with open(path, encoding='utf-8') as f:
        cfg = json.load(f)['config']
    return cfg.get('task', 'shapes'), tuple(cfg['classes'])


def frames(task: str = 'shapes'):
    """Yield ``(image (128,128,3) uint8, class map or None, info dict)`` for every frame."""
    for i in range(N_SCENES):
        d = i / (N_SCENES - 1)
        img, cls, _ = make_scene(SCENE_SEED0 + i, d, task=task)
        big = np.kron(img, np.ones((UPSCALE, UPSCALE, 1), np.uint8))
        big_cls = np.kron(cls, np.ones((UPSCALE, UPSCALE), np.uint8))
        yield big, big_cls, {'kind': 'scene', 'seed': SCENE_SEED0 + i, 'task': task,
                             'difficulty': round(d, 6)}
    from skimage import data
    from skimage.transform import resize
    size = 64 * UPSCALE
    for name in PHOTOS:
        photo = getattr(data, name)()
        h, w = photo.shape[:2]
        s = min(h, w)  # centre square crop, then resize
        crop = photo[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s, :3]
        small = resize(crop, (size, size), order=1, anti_aliasing=True, preserve_range=True)
        yield np.clip(small + 0.5, 0, 255).astype(np.uint8), None, {'kind': 'photo',
                                                                    'name': name}


def camera_messages(task: str):
    """Camera frames of ``task``: ``(messages, frame info, class maps, scene stamps)``."""
    messages, frame_info, class_maps, scene_stamps = [], [], [], []
    for i, (img, cls, info) in enumerate(frames(task)):
        t = T0_NS + i * FRAME_PERIOD_NS
        msg = Image(header=Header(stamp=_stamp(t), frame_id=FRAME_ID), height=img.shape[0],
                    width=img.shape[1], encoding='rgb8', is_bigendian=0, step=img.shape[1] * 3,
                    data=img.tobytes())
        messages.append((t, TOPIC_IMAGE, serialize_message(msg)))
        frame_info.append(dict(info, index=i, stamp_ns=t))
        if cls is not None:
            class_maps.append(cls)
            scene_stamps.append(t)
    return messages, frame_info, class_maps, scene_stamps


def utterances():
    """Return the 20 ``(masked text, original tokens, masked positions)`` utterances."""
    held = load_sentences()['held_out']
    chosen = [t for t in held if 6 <= len(t) <= 14][:N_UTTERANCES]
    if len(chosen) < N_UTTERANCES:
        raise SystemExit('not enough held-out sentences: is the language corpus installed?')
    out = []
    for toks in chosen:
        text, pos = mask_sentence(toks, MASK_RATE)
        out.append((text, list(toks), pos))
    return out


def speech(texts, seconds: float):
    """Speak ``texts`` with flite into one 16 kHz int16 track of ``seconds``; transcript."""
    if shutil.which('flite') is None:
        raise SystemExit('flite is not installed (Debian package flite; make setup installs it)')
    total = int(seconds * SAMPLE_RATE)
    track = np.zeros(total, np.int16)
    transcript = []
    pos = int(0.2 * SAMPLE_RATE)
    with tempfile.TemporaryDirectory() as tmp:
        for text in texts:
            path = os.path.join(tmp, 'say.wav')
            subprocess.run(['flite', '-voice', FLITE_VOICE, '-t', text, '-o', path],
                           check=True, stdout=subprocess.DEVNULL)
            with wave.open(path) as w:
                if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SAMPLE_RATE, 1, 2):
                    raise SystemExit(f'flite voice {FLITE_VOICE} is not 16 kHz mono PCM16')
                clip = np.frombuffer(w.readframes(w.getnframes()), '<i2')
            if pos + len(clip) > total:
                break
            track[pos:pos + len(clip)] = clip
            transcript.append({'text': text, 'start_s': round(pos / SAMPLE_RATE, 4),
                               'end_s': round((pos + len(clip)) / SAMPLE_RATE, 4)})
            pos += len(clip) + int(0.3 * SAMPLE_RATE)
    return track, transcript


def main(argv=None) -> int:
    """Write the bag and its ground truth."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=os.path.join(ROOT, 'data'), help='output folder')
    ap.add_argument('--force', action='store_true', help='replace an existing bag')
    ap.add_argument('--control', action='store_true',
                    help='also write the control topics (/map, /start_pose, /goal_pose)')
    ap.add_argument('--add-control', action='store_true',
                    help='only add the control topics to the existing bag (copied unchanged)')
    ap.add_argument('--replace-camera', action='store_true',
                    help="only rewrite the camera frames (and their truth) for the committed "
                         "vision model's task; every other message is copied unchanged")
    args = ap.parse_args(argv)
    if args.add_control:
        return add_control(args.out)
    if args.replace_camera:
        return replace_camera(args.out)
    bag = os.path.join(args.out, 'sample_bag')
    if os.path.exists(bag):
        if not args.force:
            print(f'{bag} exists; --force replaces it', file=sys.stderr)
            return 1
        shutil.rmtree(bag)
    os.makedirs(args.out, exist_ok=True)

    store = make_typestore()
    task, classes = vision_task()
    messages, frame_info, class_maps, scene_stamps = camera_messages(task)
    duration_ns = len(frame_info) * FRAME_PERIOD_NS

    utt_info = []
    for k, (text, toks, pos) in enumerate(utterances()):
        t = T0_NS + UTTERANCE_OFFSET_NS + k * UTTERANCE_PERIOD_NS
        messages.append((t, TOPIC_TEXT, serialize_message(String(data=text))))
        utt_info.append({'index': k, 'stamp_ns': t, 'masked_text': text, 'tokens': toks,
                         'masked_positions': pos, 'original_text': detokenize(toks)})

    track, transcript = speech([u['original_text'] for u in utt_info], duration_ns * 1e-9)
    layout_dim = MultiArrayDimension(label='samples', size=CHUNK, stride=CHUNK)
    for c in range(len(track) // CHUNK):
        t = T0_NS + c * CHUNK * 10 ** 9 // SAMPLE_RATE
        msg = Int16MultiArray(data=track[c * CHUNK:(c + 1) * CHUNK].tolist())
        msg.layout.dim = [layout_dim]
        messages.append((t, TOPIC_AUDIO, serialize_message(msg)))

    qos = {TOPIC_IMAGE: bag_qos(False, 5), TOPIC_TEXT: bag_qos(True, 10),
           TOPIC_AUDIO: bag_qos(False, 10)}
    types = {TOPIC_IMAGE: 'sensor_msgs/msg/Image', TOPIC_TEXT: 'std_msgs/msg/String',
             TOPIC_AUDIO: 'std_msgs/msg/Int16MultiArray'}
    control = None
    if args.control:
        control, cmsgs = control_messages()
        messages += cmsgs
        qos.update(CONTROL_QOS)
        types.update(CONTROL_TYPES)
    messages.sort(key=lambda m: (m[0], m[1]))
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        writer.set_custom_data('sage_irp_ros.sample_bag',
                               'made by tools/make_sample_bag.py; truth: '
                               'sample_bag_truth.json/.npz; /audio/raw: 16 kHz mono PCM16, '
                               f'{CHUNK} samples per message')
        conns = {topic: writer.add_connection(topic, types[topic], typestore=store,
                                              offered_qos_profiles=[qos[topic]])
                 for topic in types}
        for t, topic, data in messages:
            writer.write(conns[topic], t, data)

    truth = {
        'made_by': 'tools/make_sample_bag.py',
        'bag': 'sample_bag',
        'start_ns': T0_NS,
        'duration_s': duration_ns * 1e-9,
        'topics': dict(types),
        'classes': list(classes),
        'frames': frame_info,
        'utterances': utt_info,
        'mask_rate': MASK_RATE,
        'audio': {'topic': TOPIC_AUDIO, 'sample_rate': SAMPLE_RATE, 'channels': 1,
                  'format': 'int16 little-endian PCM in Int16MultiArray.data',
                  'samples_per_message': CHUNK, 'voice': f'flite {FLITE_VOICE}',
                  'transcript': transcript},
    }
    if control is not None:
        truth['control'] = control
        truth['control_goals'] = control['goals']
    with open(os.path.join(args.out, 'sample_bag_truth.json'), 'w', encoding='utf-8') as f:
        json.dump(truth, f, indent=1)
        f.write('\n')
    np.savez_compressed(os.path.join(args.out, 'sample_bag_truth.npz'),
                        stamps_ns=np.array(scene_stamps, np.int64),
                        class_maps=np.stack(class_maps))
    size = sum(os.path.getsize(os.path.join(bag, n)) for n in os.listdir(bag))
    print(f'{bag}: {len(messages)} messages ({len(frame_info)} frames, {len(utt_info)} '
          f'utterances, {len(track) // CHUNK} audio chunks, {len(transcript)} spoken), '
          f'{size / 1e6:.2f} MB')
    return 0


# ----------------------------------------------------------------------- control topics

TOPIC_MAP = '/map'
TOPIC_START = '/start_pose'
TOPIC_GOAL = '/goal_pose'
CONTROL_TYPES = {TOPIC_MAP: 'nav_msgs/msg/OccupancyGrid',
                 TOPIC_START: 'geometry_msgs/msg/PoseStamped',
                 TOPIC_GOAL: 'geometry_msgs/msg/PoseStamped'}
CONTROL_QOS = {TOPIC_MAP: bag_qos(True, 1, transient_local=True),
               TOPIC_START: bag_qos(True, 1), TOPIC_GOAL: bag_qos(True, 10)}
MAP_FRAME = 'map'


def control_messages():
    """Return the control topics' truth and ``[(time ns, topic, cdr bytes)]``."""
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import OccupancyGrid

    from sage_irp_ros.plugins.control import maps
    from sage_irp_ros.plugins.control.grid import GridMap, PathLimits
    from sage_irp_ros.plugins.control.plugin import ControlIRP, ControlProblem, PlanningError
    from sage_irp_ros.plugins.control.search import astar, cells_length

    size, res = 120, maps.RESOLUTION
    occ = maps.rooms(size, maps.rng_for('test', 'rooms', size, 1000))
    occ[90:110, 90:110] = True            # a closed 1 m box ...
    occ[93:107, 93:107] = False           # ... with free space inside (unreachable)
    occupancy = np.where(occ, 100, 0).astype(np.int8)
    grid = GridMap.from_occupancy(occupancy, res, frame_id=MAP_FRAME)
    plugin = ControlIRP()
    free = grid.cspace_free(PathLimits().clearance)
    cells = np.argwhere(grid.sdf[1:-1, 1:-1] >= 0.15)
    rng = np.random.default_rng(1300)
    start = grid.center_of(cells[int(rng.integers(len(cells)))])
    picks = []
    while len(picks) < 3:  # reachable goals at least 2 m away
        g = grid.center_of(cells[int(rng.integers(len(cells)))])
        if np.linalg.norm(g - start) >= 2.0 and astar(free, grid.cell_of(start),
                                                      grid.cell_of(g)) is not None:
            picks.append(g)
    picks.append(grid.center_of((100, 100)))                    # inside the closed box
    wall = np.argwhere(occ[5:-5, 5:-5])[0] + 5
    picks.append(grid.center_of(wall))                          # in a wall
    msgs, goals = [], []
    t_map = T0_NS
    m = OccupancyGrid()
    m.header = Header(stamp=_stamp(t_map), frame_id=MAP_FRAME)
    m.info.resolution = res
    m.info.width = m.info.height = size
    m.info.origin.orientation.w = 1.0
    m.data = occupancy.ravel().tolist()
    msgs.append((t_map, TOPIC_MAP, serialize_message(m)))

    def pose(t, xy):
        p = PoseStamped(header=Header(stamp=_stamp(t), frame_id=MAP_FRAME))
        p.pose.position.x, p.pose.position.y = float(xy[0]), float(xy[1])
        p.pose.orientation.w = 1.0
        return p
    msgs.append((T0_NS + 10_000_000, TOPIC_START, serialize_message(pose(T0_NS + 10_000_000,
                                                                         start))))
    for k, g in enumerate(picks):
        t = T0_NS + (k + 1) * 1_000_000_000
        msgs.append((t, TOPIC_GOAL, serialize_message(pose(t, g))))
        try:
            plugin.check(ControlProblem(grid, tuple(start), tuple(g)))
            path = astar(free, grid.cell_of(start), grid.cell_of(g))
            expect = 'feasible' if path is not None else 'unreachable'
            length = cells_length(path) * res if path is not None else None
        except PlanningError as exc:
            expect, length = exc.status, None
        goals.append({'index': k, 'stamp_ns': t, 'x': float(g[0]), 'y': float(g[1]),
                      'expect': expect, 'astar_length': length})
    truth = {'map': {'topic': TOPIC_MAP, 'frame_id': MAP_FRAME, 'resolution': res,
                     'origin': [0.0, 0.0], 'width': size, 'height': size,
                     'occupancy': occupancy.tolist()},
             'start': {'topic': TOPIC_START, 'stamp_ns': T0_NS + 10_000_000,
                       'x': float(start[0]), 'y': float(start[1])},
             'goal_topic': TOPIC_GOAL, 'goals': goals}
    return truth, msgs


def _rewrite_bag(out: str, note: str, replace=None, add=None) -> None:
    """Copy ``out/sample_bag`` message for message into a new bag, then swap it in.

    Every message is copied with its raw CDR bytes, timestamp and connection QoS, except the
    topics of ``replace`` (``{topic: [(time ns, topic, cdr bytes)]}``: their messages are
    replaced, on the same connection); ``add`` (``{topic: (msgtype, qos, messages)}``) adds new
    topics. ``note`` goes into the bag's custom data.
    """
    from rosbags.rosbag2 import Reader
    replace, add = replace or {}, add or {}
    bag = os.path.join(out, 'sample_bag')
    store = make_typestore()
    tmp = tempfile.mkdtemp(prefix='sample_bag_', dir=out)
    new = os.path.join(tmp, 'sample_bag')
    with Reader(bag) as reader, Writer(new, version=9,
                                       storage_plugin=StoragePlugin.MCAP) as writer:
        writer.set_custom_data('sage_irp_ros.sample_bag',
                               f'made by tools/make_sample_bag.py ({note}); truth: '
                               'sample_bag_truth.json/.npz')
        conns, by_topic = {}, {}
        for c in reader.connections:
            conns[c.id] = by_topic[c.topic] = writer.add_connection(
                c.topic, c.msgtype, typestore=store,
                offered_qos_profiles=c.ext.offered_qos_profiles)
        missing = set(replace) - set(by_topic)
        if missing:
            raise SystemExit(f'{bag} has no {sorted(missing)}')
        for topic, (msgtype, qos, _) in add.items():
            by_topic[topic] = writer.add_connection(topic, msgtype, typestore=store,
                                                    offered_qos_profiles=[qos])
        merged = [(t, conns[c.id], bytes(data)) for c, t, data in reader.messages()
                  if c.topic not in replace]
        for msgs in list(replace.values()) + [m for _, _, m in add.values()]:
            merged += [(t, by_topic[topic], data) for t, topic, data in msgs]
        merged.sort(key=lambda m: m[0])
        for t, conn, data in merged:
            writer.write(conn, t, data)
    shutil.rmtree(bag)
    shutil.move(new, bag)
    shutil.rmtree(tmp)


def _truth_path(out: str) -> str:
    return os.path.join(out, 'sample_bag_truth.json')


def _save_truth(out: str, truth: dict) -> None:
    with open(_truth_path(out), 'w', encoding='utf-8') as f:
        json.dump(truth, f, indent=1)
        f.write('\n')


def add_control(out: str) -> int:
    """Copy ``out/sample_bag`` unchanged into a new bag with the control topics added."""
    with open(_truth_path(out), encoding='utf-8') as f:
        truth = json.load(f)
    bag = os.path.join(out, 'sample_bag')
    if 'control' in truth:
        print(f'{bag} already has the control topics', file=sys.stderr)
        return 1
    control, cmsgs = control_messages()
    _rewrite_bag(out, '--add-control', add={
        topic: (CONTROL_TYPES[topic], CONTROL_QOS[topic], [m for m in cmsgs if m[1] == topic])
        for topic in CONTROL_TYPES})
    truth['topics'].update(CONTROL_TYPES)
    truth['control'] = control
    truth['control_goals'] = control['goals']
    _save_truth(out, truth)
    print(f'{bag}: added {len(cmsgs)} control messages '
          f'({[g["expect"] for g in control["goals"]]})')
    return 0


def replace_camera(out: str) -> int:
    """Rewrite ``out/sample_bag``'s camera frames for the committed vision model's task.

    Same stamps and count; every other message is copied with its raw bytes, timestamp and
    connection QoS. The truth's ``classes``, ``frames`` and the class maps are rewritten.
    """
    with open(_truth_path(out), encoding='utf-8') as f:
        truth = json.load(f)
    task, classes = vision_task()
    cam, frame_info, class_maps, scene_stamps = camera_messages(task)
    _rewrite_bag(out, f'camera frames: --replace-camera, task {task}',
                 replace={TOPIC_IMAGE: cam})
    truth['classes'] = list(classes)
    truth['frames'] = frame_info
    _save_truth(out, truth)
    np.savez_compressed(os.path.join(out, 'sample_bag_truth.npz'),
                        stamps_ns=np.array(scene_stamps, np.int64),
                        class_maps=np.stack(class_maps))
    print(f'{os.path.join(out, "sample_bag")}: {len(cam)} camera frames rewritten for task '
          f'{task!r} ({classes})')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
