"""Evaluation of the memory store and sleep on synthetic recurring places (no ROS, no model).

A robot revisiting places sees each place again with variations. The generator draws
``n_places`` places, each a random unit key vector in ``dim`` dimensions and a random latent
(standard normal, ``latent_shape``), and ``revisits`` noisy visits per place, shuffled in time:
a visit's key is ``normalise(place_key + key_noise * g / sqrt(dim))`` (``g`` standard normal,
so the noise has norm ``key_noise`` on average) and its latent is ``place_latent +
latent_noise * g'``. Queries are new visits drawn the same way with another seed.

Measures
--------
- ``compression_ratio``: the store's bytes in use (pages in use x page size, the file's size
  once compacted) before sleep / after sleep.
- ``recall@1``: fraction of queries whose nearest stored row (``ExperienceStore.nearest``,
  cosine) is a visit of the query's place (for a prototype: its medoid's place);
  ``recall_ratio`` = recall@1 after sleep (prototypes) / recall@1 before (raw rows).
- ``latent_error``: relative RMS error of the hit's latent against the place's true latent,
  before and after.
- ``sleep_seconds_10k``: wall time of ``consolidate`` (snapshot, refinement, the one write
  transaction, compaction) on 10,000 stored experiences (500 places x 20 visits), with the
  refinement's steps and halting reason.
- cases: ``recurring`` (50 places x 20 visits, key noise 0.5; the top-level figures),
  ``recurring_noisy`` (the same with key noise 1.0: a visit's key has cosine ~0.7 with its
  place's), ``recurring_hard`` (keys of 8 dimensions, key noise 0.5: places close enough
  that raw recall@1 is below 1), ``norecur`` (1,000 places visited once: compression should
  stay near 1 and recall unchanged; sleep must not merge distinct places) and
  ``recurring_10k`` (500 x 20, timed).

``python -m sage_irp_ros.plugins.memory.evaluate`` prints the JSON (``--out`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from sage_irp_ros.plugins.memory.sleep import SleepIRP, consolidate
from sage_irp_ros.plugins.memory.store import SOURCE_EXPERIENCE, SOURCES, ExperienceStore

PLUGIN = 'synthetic'


@dataclass
class RecurringPlaces:
    """A synthetic stream of visits to recurring places (see the module docstring).

    ``keys`` (N, dim) float32 unit vectors, ``latents`` (N, *latent_shape) float32,
    ``places`` (N,) int: the place of each visit; ``place_keys``, ``place_latents``: the
    places' true keys and latents; the noise levels and the seed that made it.
    """

    keys: np.ndarray
    latents: np.ndarray
    places: np.ndarray
    place_keys: np.ndarray
    place_latents: np.ndarray
    key_noise: float
    latent_noise: float
    seed: int

    def visits(self, per_place: int, seed: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw ``per_place`` new visits of every place: ``(keys, latents, places)``."""
        rng = np.random.default_rng(seed)
        places = np.repeat(np.arange(len(self.place_keys)), per_place)
        rng.shuffle(places)
        keys, latents = _visit(rng, self.place_keys[places], self.place_latents[places],
                               self.key_noise, self.latent_noise)
        return keys, latents, places


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _visit(rng, place_keys, place_latents, key_noise, latent_noise):
    dim = place_keys.shape[1]
    keys = _unit(place_keys + key_noise * rng.standard_normal(place_keys.shape) / np.sqrt(dim))
    latents = place_latents + latent_noise * rng.standard_normal(place_latents.shape)
    return keys.astype(np.float32), latents.astype(np.float32)


def recurring_places(n_places: int = 50, revisits: int = 20, dim: int = 64,
                     latent_shape: Sequence[int] = (16, 8, 8), key_noise: float = 0.5,
                     latent_noise: float = 0.1, seed: int = 0) -> RecurringPlaces:
    """Draw ``n_places`` places and ``revisits`` noisy visits of each, shuffled in time."""
    rng = np.random.default_rng(seed)
    place_keys = _unit(rng.standard_normal((n_places, dim)))
    place_latents = rng.standard_normal((n_places, *latent_shape)).astype(np.float32)
    places = np.repeat(np.arange(n_places), revisits)
    rng.shuffle(places)
    keys, latents = _visit(rng, place_keys[places], place_latents[places], key_noise,
                           latent_noise)
    return RecurringPlaces(keys=keys, latents=latents, places=places,
                           place_keys=place_keys.astype(np.float32),
                           place_latents=place_latents, key_noise=float(key_noise),
                           latent_noise=float(latent_noise), seed=int(seed))


def fill(store: ExperienceStore, data: RecurringPlaces, plugin: str = PLUGIN,
         batch: int = 500) -> None:
    """Store every visit of ``data`` as an experience of ``plugin`` (summary: its place)."""
    rng = np.random.default_rng(data.seed + 1)
    n = len(data.places)
    for s in range(0, n, batch):
        store.add_many(
            dict(plugin=plugin, key=data.keys[i], latent=data.latents[i],
                 summary={'place': int(data.places[i])}, steps=int(rng.integers(1, 10)),
                 energy=float(rng.random()), halt_reason='slope<eps')
            for i in range(s, min(s + batch, n)))


def retrieval(store: ExperienceStore, data: RecurringPlaces, keys: np.ndarray,
              places: np.ndarray, plugin: str = PLUGIN,
              sources: Sequence[str] = SOURCES) -> Dict[str, float]:
    """Recall@1 and mean relative latent error of ``nearest`` for queries ``keys``."""
    hits, errors, from_proto = 0, [], 0
    for key, place in zip(keys, places, strict=True):
        rec = store.nearest(plugin, key, k=1, sources=sources, touch=False)
        if not rec:
            errors.append(1.0)
            continue
        r = rec[0]
        hits += int(r.summary['place'] == int(place))
        from_proto += int(r.source != SOURCE_EXPERIENCE)
        truth = data.place_latents[place]
        errors.append(float(np.linalg.norm(r.latent - truth) / np.linalg.norm(truth)))
    n = max(len(places), 1)
    return {'recall_at_1': hits / n, 'latent_error': float(np.mean(errors)),
            'hit_prototype_frac': from_proto / n}


def run_case(data: RecurringPlaces, folder: str, name: str, queries_per_place: int,
             sleeper: Optional[SleepIRP] = None, query_seed: int = 1000) -> Dict[str, Any]:
    """Fill a fresh store with ``data``, measure retrieval, sleep, measure again."""
    path = os.path.join(folder, f'{name}.db')
    for suffix in ('', '-wal', '-shm'):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    qk, _, qp = data.visits(queries_per_place, seed=query_seed)
    with ExperienceStore(path, max_rows=10 * len(data.places) + 10) as store:
        t = time.perf_counter()
        fill(store, data)
        fill_s = time.perf_counter() - t
        store.compact()
        before = store.stats()
        r0 = retrieval(store, data, qk, qp)
        rep = consolidate(store, PLUGIN, sleeper=sleeper)
        after = store.stats()
        r1 = retrieval(store, data, qk, qp)
    return {
        'experiences': int(len(data.places)), 'places': int(len(data.place_keys)),
        'queries': int(len(qp)),
        'compression_ratio': before['bytes_used'] / max(after['bytes_used'], 1),
        'bytes_before': before['bytes_used'], 'bytes_after': after['bytes_used'],
        'file_bytes_after': after['bytes_on_disk'],
        'payload_bytes_before': before['payload_bytes'],
        'payload_bytes_after': after['payload_bytes'],
        'recall_at_1_before': r0['recall_at_1'], 'recall_at_1_after': r1['recall_at_1'],
        'recall_ratio': r1['recall_at_1'] / r0['recall_at_1'] if r0['recall_at_1'] else None,
        'latent_error_before': r0['latent_error'], 'latent_error_after': r1['latent_error'],
        'hit_prototype_frac_after': r1['hit_prototype_frac'],
        'prototypes': rep.prototypes, 'replaced': rep.replaced, 'kept_raw': rep.kept,
        'committed': rep.committed, 'steps': rep.steps,
        'halt_reason': rep.halt_reason, 'energies': [round(e, 6) for e in rep.energies],
        'sleep_seconds': rep.seconds, 'refine_seconds': rep.refine_seconds,
        'write_seconds': rep.write_seconds, 'compact_seconds': rep.compact_seconds,
        'fill_seconds': fill_s,
    }


def evaluate(folder: str, seed: int = 0, quick: bool = False) -> Dict[str, Any]:
    """Run the cases; return the figures (top level: the 50-place set and the 10k time).

    ``quick`` skips the 10,000-experience run (``sleep_seconds_10k`` is then None).
    """
    sleeper = SleepIRP()
    recurring = run_case(recurring_places(seed=seed), folder, 'recurring', 10, sleeper)
    noisy = run_case(recurring_places(key_noise=1.0, seed=seed + 3), folder,
                     'recurring_noisy', 10, sleeper)
    hard = run_case(recurring_places(dim=8, key_noise=0.5, seed=seed + 4), folder,
                    'recurring_hard', 10, sleeper)
    norecur = run_case(recurring_places(n_places=1000, revisits=1, seed=seed + 1), folder,
                       'norecur', 1, sleeper)
    big = None
    if not quick:
        big = run_case(recurring_places(n_places=500, revisits=20, seed=seed + 2), folder,
                       'recurring_10k', 1, sleeper)
    return {
        'compression_ratio': recurring['compression_ratio'],
        'recall_ratio': recurring['recall_ratio'],
        'sleep_seconds_10k': big['sleep_seconds'] if big else None,
        'steps_10k': big['steps'] if big else None,
        'halt_reason_10k': big['halt_reason'] if big else None,
        'steps': recurring['steps'], 'halt_reason': recurring['halt_reason'],
        'sleeper': {'size_weight': sleeper.size_weight, 'halt': sleeper.halt_config().__dict__,
                    'version': sleeper.version},
        'recurring': recurring, 'recurring_noisy': noisy, 'recurring_hard': hard,
        'norecur': norecur,
        'recurring_10k': big, 'seed': seed,
        'machine': {'cpu': _cpu(), 'cpus': os.cpu_count(),
                    'omp_num_threads': os.environ.get('OMP_NUM_THREADS'),
                    'python': platform.python_version(), 'numpy': np.__version__,
                    'sqlite': sqlite3.sqlite_version},
    }


def _cpu() -> str:
    """Return the CPU's model name (Linux), for the record."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: print the figures as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--quick', action='store_true', help='skip the 10,000-experience run')
    ap.add_argument('--dir', default=None, help='folder for the stores (default: a temporary one)')
    ap.add_argument('--out', default=None, help='also write the JSON here')
    args = ap.parse_args(argv)
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
        res = evaluate(args.dir, args.seed, args.quick)
    else:
        with tempfile.TemporaryDirectory(prefix='sage_memory_') as d:
            res = evaluate(d, args.seed, args.quick)
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            f.write(text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
