"""``ExperienceStore``: what the other plugins experienced, one row per refined input, in SQLite.

One file (SQLite from the standard library) in WAL mode with ``synchronous=NORMAL``: a write
is one transaction, so a process killed at any moment (``kill -9``) leaves every committed row
and no partial one (an operating-system crash or power cut may lose the last commits, never the
file's consistency). The schema version is the file's ``PRAGMA user_version``.

Tables (schema version 1)
-------------------------
``experiences``: one row per refined input of another plugin: ``plugin`` (its registry name),
``key`` (the place / scene key embedding, float32 little-endian bytes, ``key_dim`` floats),
``latent`` (the run's final latent: raw bytes, ``latent_dtype`` as given, ``latent_stored``
the dtype of the bytes, ``latent_shape`` JSON; float32 latents are kept as float16 bytes when
``latent_fp16`` and no finite value overflows float16), ``summary`` (JSON text of the output
summary), ``steps``, ``energy``, ``halt_reason``, ``stamp`` (wall time of the run, Unix s),
``last_used`` (Unix s, set at insert and by every hit), ``hits``, ``nbytes`` (the row's payload:
key + latent + summary bytes).

``prototypes``: what sleep (``sleep.py``) made of one plugin's experiences: ``centroid`` (the
unit search key, float32), and a *medoid* copied from a real stored row (its ``key``, latent,
summary, steps, energy, halt reason, ``stamp``, and where it came from: ``medoid_source``,
``medoid_id``), ``members`` (experiences it stands for), ``mean_steps`` and ``mean_energy`` of
its members, ``scatter`` (sum of squared distances of the members' unit keys to the centroid),
``created``, ``last_used``, ``hits``, ``nbytes`` (payload as above plus the centroid).

``totals``: one row kept by triggers in the same transaction as every insert and delete: rows
and payload bytes of both tables, ``gen`` (changes on every insert or delete: readers' key
caches compare it), ``evicted`` and ``consolidations`` (counters since the file was created).

Eviction rule
-------------
``max_rows`` and ``max_bytes`` bound the two tables together (rows, and payload bytes, i.e. the
sum of ``nbytes``; the file adds SQLite's page and index overhead, reported by :meth:`stats`).
Every insert evicts, in its own transaction, until both bounds hold: raw experiences first,
least recently used first (``last_used``, then the oldest ``id``); prototypes the same way only
when no raw experience is left. Ids are never reused (``AUTOINCREMENT``).

Damaged files
-------------
At open the file is checked: it must be an SQLite database, pass ``PRAGMA quick_check``, carry
the schema version this code writes (0 with no tables is a new file) and hold its tables. A
file that fails is closed and renamed aside with its ``-wal`` and ``-shm`` files, to
``<name>.bad-<UTC timestamp>`` (``-wal`` / ``-shm`` appended), a fresh store is started in its
place and :attr:`ExperienceStore.open_error` says what happened in one line naming both files
(:attr:`ExperienceStore.recovered_from` is the new name of the bad file). Nothing raises for a
damaged file. A file that is only busy (locked by another process) or cannot be opened at all
(permissions, missing folder that cannot be made) is not damaged: that raises.

Thread safety: every thread uses its own connection (WAL lets readers run beside the writer);
writes of one process are serialised by a lock, other processes wait up to ``busy_timeout``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sqlite3
import threading
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

SCHEMA_VERSION = 1
SOURCE_EXPERIENCE = 'experience'
SOURCE_PROTOTYPE = 'prototype'
#: Both sources, in the order ``nearest`` searches them (a tie goes to the prototype).
SOURCES = (SOURCE_PROTOTYPE, SOURCE_EXPERIENCE)
_TABLE = {SOURCE_EXPERIENCE: 'experiences', SOURCE_PROTOTYPE: 'prototypes'}
_FP16_MAX = 65504.0

_SCHEMA = """
CREATE TABLE experiences (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    plugin TEXT NOT NULL,
    key BLOB NOT NULL,
    key_dim INTEGER NOT NULL,
    latent BLOB,
    latent_dtype TEXT,
    latent_stored TEXT,
    latent_shape TEXT,
    summary TEXT NOT NULL,
    steps INTEGER,
    energy REAL,
    halt_reason TEXT,
    stamp REAL NOT NULL,
    last_used REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    nbytes INTEGER NOT NULL
);
CREATE INDEX experiences_plugin ON experiences (plugin, key_dim);
CREATE INDEX experiences_lru ON experiences (last_used, id);
CREATE TABLE prototypes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    plugin TEXT NOT NULL,
    centroid BLOB NOT NULL,
    key BLOB NOT NULL,
    key_dim INTEGER NOT NULL,
    latent BLOB,
    latent_dtype TEXT,
    latent_stored TEXT,
    latent_shape TEXT,
    summary TEXT NOT NULL,
    steps INTEGER,
    energy REAL,
    halt_reason TEXT,
    stamp REAL NOT NULL,
    members INTEGER NOT NULL,
    mean_steps REAL,
    mean_energy REAL,
    scatter REAL NOT NULL,
    medoid_source TEXT NOT NULL,
    medoid_id INTEGER NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    nbytes INTEGER NOT NULL
);
CREATE INDEX prototypes_plugin ON prototypes (plugin, key_dim);
CREATE INDEX prototypes_lru ON prototypes (last_used, id);
CREATE TABLE totals (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    gen INTEGER NOT NULL,
    evicted INTEGER NOT NULL,
    consolidations INTEGER NOT NULL
);
INSERT INTO totals VALUES (0, 0, 0, 0, 0, 0);
CREATE TRIGGER experiences_ins AFTER INSERT ON experiences BEGIN
    UPDATE totals SET rows = rows + 1, bytes = bytes + NEW.nbytes, gen = gen + 1 WHERE id = 0;
END;
CREATE TRIGGER experiences_del AFTER DELETE ON experiences BEGIN
    UPDATE totals SET rows = rows - 1, bytes = bytes - OLD.nbytes, gen = gen + 1 WHERE id = 0;
END;
CREATE TRIGGER prototypes_ins AFTER INSERT ON prototypes BEGIN
    UPDATE totals SET rows = rows + 1, bytes = bytes + NEW.nbytes, gen = gen + 1 WHERE id = 0;
END;
CREATE TRIGGER prototypes_del AFTER DELETE ON prototypes BEGIN
    UPDATE totals SET rows = rows - 1, bytes = bytes - OLD.nbytes, gen = gen + 1 WHERE id = 0;
END;
"""
_TABLES = ('experiences', 'prototypes', 'totals')
_COMMON = ('id, plugin, key, key_dim, latent, latent_dtype, latent_stored, latent_shape, '
           'summary, steps, energy, halt_reason, stamp, last_used, hits')
_PROTO_EXTRA = ('centroid, members, mean_steps, mean_energy, scatter, medoid_source, medoid_id, '
                'created')


class StoreClosedError(RuntimeError):
    """The store was closed."""


class StoreUnavailableError(RuntimeError):
    """A store opened read-only is missing, empty (not made yet) or damaged."""


class StoreReadOnlyError(RuntimeError):
    """A write was asked of a store opened read-only."""


@dataclass
class MemoryRecord:
    """One stored experience or prototype, as :meth:`ExperienceStore.nearest` returns it.

    Attributes
    ----------
    source:
        ``'experience'`` (a raw row) or ``'prototype'`` (a consolidated one).
    id:
        The row id in its table.
    plugin, key, latent, summary, steps, energy, halt_reason, stamp:
        As stored. For a prototype these are its medoid's: a real experience, its key and its
        final latent (float32 when it was stored as float16).
    last_used, hits:
        Wall time (Unix s) of the last insert or hit, number of hits.
    similarity:
        Cosine similarity to the query (set by ``nearest``; for a prototype, to its centroid).
    centroid:
        Prototypes only: the unit search key (mean direction of its members' keys).
    members, mean_steps, mean_energy, scatter:
        Prototypes only: experiences it stands for, their mean steps and energy (None when
        unknown), the sum of squared distances of their unit keys to the centroid. An
        experience is one member of itself.

    """

    source: str
    id: int
    plugin: str
    key: np.ndarray
    latent: Optional[np.ndarray]
    summary: Any
    steps: Optional[int]
    energy: Optional[float]
    halt_reason: Optional[str]
    stamp: float
    last_used: float
    hits: int
    similarity: Optional[float] = None
    centroid: Optional[np.ndarray] = None
    members: int = 1
    mean_steps: Optional[float] = None
    mean_energy: Optional[float] = None
    scatter: float = 0.0


@dataclass
class Snapshot:
    """The keys of one plugin's rows (both tables) read in one transaction, for consolidation.

    ``keys`` (N, D) float32: an experience's key, a prototype's centroid; ``weights`` (N,):
    1 for an experience, ``members`` for a prototype; ``steps`` and ``energies`` (N,) float64
    (NaN when unknown; a prototype's member means); ``refs``: ``(source, id)`` of each row.
    """

    plugin: str
    key_dim: int
    keys: np.ndarray
    weights: np.ndarray
    steps: np.ndarray
    energies: np.ndarray
    refs: List[Tuple[str, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.refs)


@dataclass
class PrototypeSpec:
    """A prototype to write by :meth:`ExperienceStore.commit_consolidation`.

    ``centroid``: its search key; ``candidates``: ``(source, id)`` of members, closest to the
    centroid first (the first still stored becomes the medoid); ``members``, ``mean_steps``,
    ``mean_energy`` (NaN / None when unknown), ``scatter``: as in :class:`MemoryRecord`.
    """

    centroid: np.ndarray
    candidates: Sequence[Tuple[str, int]]
    members: int
    mean_steps: Optional[float] = None
    mean_energy: Optional[float] = None
    scatter: float = 0.0


def _statements(script: str) -> List[str]:
    """Split an SQL script into complete statements (triggers hold ``;`` inside)."""
    out, buf = [], ''
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ''
    if buf.strip():
        raise ValueError(f'incomplete SQL statement: {buf!r}')
    return out


def _utc_stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%SZ')


def json_default(obj):
    """``json.dumps`` helper: numpy scalars and arrays as plain numbers and lists."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f'{type(obj).__name__} is not JSON serialisable')


def _finite_or_none(v) -> Optional[float]:
    if v is None:
        return None
    v = float(v)
    return v if np.isfinite(v) else None


def to_array(value) -> Optional[np.ndarray]:
    """Return ``value`` as a numpy array: torch tensors (any device) are copied to the cpu.

    A torch dtype numpy lacks (bfloat16) becomes float32. None stays None. Torch is not
    imported here: a tensor is recognised by its ``detach`` and ``cpu`` methods.
    """
    if value is None:
        return None
    if hasattr(value, 'detach') and hasattr(value, 'cpu'):
        t = value.detach().cpu()
        try:
            return t.numpy()
        except TypeError:  # a dtype numpy does not have
            return t.float().numpy()
    return np.asarray(value)


def check_key(key) -> np.ndarray:
    """Return ``key`` as a 1-D float32 array; ValueError unless non-empty, finite, not all zero."""
    try:
        k = np.asarray(to_array(key), dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f'key is not a numeric vector: {exc}') from None
    if k.ndim != 1 or k.size == 0:
        raise ValueError(f'key must be a non-empty 1-D vector, got shape {tuple(k.shape)}')
    bad = int(np.count_nonzero(~np.isfinite(k)))
    if bad:
        raise ValueError(f'key holds {bad} non-finite value(s)')
    if not np.any(k):
        raise ValueError('key is all zeros (similarity needs a direction)')
    return k


def pack_key(key) -> Tuple[bytes, int]:
    """Return ``(bytes, dim)`` of a key (:func:`check_key`), as little-endian float32."""
    k = check_key(key)
    return k.astype('<f4').tobytes(), int(k.size)


def unpack_key(blob: bytes) -> np.ndarray:
    """Return the float32 key vector of ``blob``."""
    return np.frombuffer(blob, dtype='<f4').astype(np.float32)


def pack_latent(latent, fp16: bool = True):
    """Return ``(bytes, dtype, stored dtype, shape JSON)`` of a latent array (all None for None).

    float32 arrays become float16 bytes when ``fp16`` and no finite value overflows float16;
    every other dtype is kept as given. Object and structured dtypes are refused. A torch
    tensor is copied to the cpu first (:func:`to_array`).
    """
    if latent is None:
        return None, None, None, None
    a = to_array(latent)
    if a.dtype.hasobject or a.dtype.fields is not None:
        raise ValueError(f'a latent must be a plain numeric array, got dtype {a.dtype}')
    stored = a
    if fp16 and a.dtype == np.float32:
        with np.errstate(over='ignore'):
            h = a.astype(np.float16)
        if np.array_equal(np.isfinite(h), np.isfinite(a)):
            stored = h
    stored = np.ascontiguousarray(stored)
    return (stored.tobytes(), a.dtype.str, stored.dtype.str, json.dumps(list(a.shape)))


def unpack_latent(blob, dtype, stored, shape) -> Optional[np.ndarray]:
    """Return the latent array of a stored row (in its original dtype), or None."""
    if blob is None:
        return None
    a = np.frombuffer(blob, dtype=np.dtype(stored)).reshape(json.loads(shape))
    return a.astype(np.dtype(dtype))


class ExperienceStore:
    """Experiences of the other plugins in one SQLite file, bounded, checked, shared by threads.

    Parameters
    ----------
    path:
        The database file (its folder is created). ``:memory:`` is refused: one connection per
        thread needs a file.
    max_rows:
        Bound on experiences + prototypes (>= 1).
    max_bytes:
        Bound on their payload bytes (keys, latents, summaries, centroids).
    latent_fp16:
        Keep float32 latents as float16 bytes (read back as float32).
    busy_timeout:
        Seconds a write waits for another process's write to finish.
    check:
        Run ``PRAGMA quick_check`` at open (reads the whole file once).
    readonly:
        Open an existing store for reading only (a plugin node's warm-start look-ups beside
        the memory node that writes it; WAL lets them read while it writes): nothing is
        created, written or set aside, ``nearest`` counts no hits, and a missing, empty or
        damaged file raises :class:`StoreUnavailableError` instead.

    Attributes
    ----------
    open_error:
        None, or one line saying that the file was damaged, why, and where it was set aside.
    recovered_from:
        None, or the path the damaged file was renamed to.

    """

    def __init__(self, path: str, max_rows: int = 100_000, max_bytes: int = 1 << 30, *,
                 latent_fp16: bool = True, busy_timeout: float = 10.0, check: bool = True,
                 readonly: bool = False):
        path = os.fspath(path)
        if path == ':memory:' or path.startswith('file:'):
            raise ValueError('ExperienceStore needs a file path')
        if int(max_rows) < 1 or int(max_bytes) < 1:
            raise ValueError(f'max_rows and max_bytes must be >= 1, got {max_rows}, {max_bytes}')
        self.path = os.path.abspath(path)
        self.max_rows = int(max_rows)
        self.max_bytes = int(max_bytes)
        self.latent_fp16 = bool(latent_fp16)
        self.busy_timeout = float(busy_timeout)
        self.open_error: Optional[str] = None
        self.recovered_from: Optional[str] = None
        self._local = threading.local()
        self._conns: List[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._wlock = threading.RLock()
        self._cache: Dict[Tuple[str, str, int], Tuple[int, np.ndarray, np.ndarray]] = {}
        self._cache_lock = threading.Lock()
        # decoded records nearest() returned, by (source, id), while totals.gen is unchanged
        self._records: 'OrderedDict[Tuple[str, int], MemoryRecord]' = OrderedDict()
        self._records_gen = -1
        self._closed = False
        self.readonly = bool(readonly)
        if self.readonly:
            self._open_readonly(check)
            return
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        self._open(check)

    # ------------------------------------------------------------------ opening

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            uri = 'file:' + urllib.parse.quote(self.path) + '?mode=ro'
            return sqlite3.connect(uri, uri=True, timeout=self.busy_timeout,
                                   isolation_level=None, check_same_thread=False)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        conn.execute('PRAGMA synchronous=NORMAL')
        return conn

    def _open_readonly(self, check: bool) -> None:
        """Open an existing, usable store for reading; raise StoreUnavailableError if not."""
        conn = None
        try:
            conn = self._connect()
            problem = self._problem(conn, check)
            if problem is None and conn.execute('PRAGMA user_version').fetchone()[0] == 0:
                problem = 'no experience store there yet'
        except sqlite3.DatabaseError as exc:
            problem = ('no such file' if not os.path.exists(self.path) else str(exc))
        if problem is not None:
            if conn is not None:
                conn.close()
            raise StoreUnavailableError(f'experience store {self.path} cannot be read '
                                        f'({problem})')
        self._local.conn = conn
        with self._conns_lock:
            self._conns.append(conn)

    def _problem(self, conn: sqlite3.Connection, check: bool) -> Optional[str]:
        """Return why the open file is not a usable store (None: it is, or it is new)."""
        version = conn.execute('PRAGMA user_version').fetchone()[0]
        if check:
            rows = [r[0] for r in conn.execute('PRAGMA quick_check').fetchall()]
            if rows != ['ok']:
                return 'quick_check failed: ' + '; '.join(str(r) for r in rows[:3])
        names = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        if version == 0:
            if names:
                return ('schema version 0 with tables ' + ', '.join(sorted(names))
                        + ': not an experience store')
            return None
        if version > SCHEMA_VERSION:
            return (f'schema version {version} is newer than this code '
                    f'(version {SCHEMA_VERSION})')
        if version != SCHEMA_VERSION:
            return f'schema version {version} is unknown (this code writes {SCHEMA_VERSION})'
        missing = [t for t in _TABLES if t not in names]
        if missing:
            return 'tables missing: ' + ', '.join(missing)
        if conn.execute('SELECT COUNT(*) FROM totals WHERE id = 0').fetchone()[0] != 1:
            return 'the totals row is missing'
        return None

    @staticmethod
    def _is_damage(exc: sqlite3.DatabaseError) -> bool:
        """Whether an error at open means a damaged file (not a busy or unopenable one)."""
        if not isinstance(exc, sqlite3.OperationalError):
            return True  # SQLITE_NOTADB, SQLITE_CORRUPT, ...
        text = str(exc).lower()
        return 'malformed' in text or 'not a database' in text or 'corrupt' in text

    def _open(self, check: bool) -> None:
        conn = None
        problem = None
        try:
            conn = self._connect()
            problem = self._problem(conn, check)
        except sqlite3.DatabaseError as exc:
            if not self._is_damage(exc):
                if conn is not None:
                    conn.close()
                raise
            problem = f'{exc}'
        if problem is not None:
            if conn is not None:
                conn.close()
            bad = self._set_aside()
            self.recovered_from = bad
            self.open_error = (f'experience store {self.path} is damaged ({problem}); '
                               f'set aside as {bad}, started a fresh store')
            conn = self._connect()
        if conn.execute('PRAGMA user_version').fetchone()[0] == 0:
            conn.execute('PRAGMA auto_vacuum=INCREMENTAL')  # only takes effect on a new file
        conn.execute('PRAGMA journal_mode=WAL')
        conn.execute('BEGIN IMMEDIATE')
        try:
            # checked again under the write lock: another process may have made it meanwhile
            if conn.execute('PRAGMA user_version').fetchone()[0] == 0:
                for statement in _statements(_SCHEMA):
                    conn.execute(statement)
                conn.execute(f'PRAGMA user_version={SCHEMA_VERSION}')
            conn.execute('COMMIT')
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute('ROLLBACK')
            conn.close()
            raise
        self._local.conn = conn
        with self._conns_lock:
            self._conns.append(conn)

    def _set_aside(self) -> str:
        """Rename the file and its -wal / -shm to ``<name>.bad-<UTC stamp>``; return the name."""
        base = f'{self.path}.bad-{_utc_stamp()}'
        bad, n = base, 0
        while any(os.path.exists(bad + s) for s in ('', '-wal', '-shm')):
            n += 1
            bad = f'{base}-{n}'
        for suffix in ('', '-wal', '-shm'):
            if os.path.exists(self.path + suffix):
                os.replace(self.path + suffix, bad + suffix)
        return bad

    # ------------------------------------------------------------------ connections

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreClosedError(f'experience store {self.path} is closed')
        conn = getattr(self._local, 'conn', None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    @contextlib.contextmanager
    def _write(self):
        """One write transaction (``BEGIN IMMEDIATE``): committed, or rolled back on any exit."""
        if self.readonly:
            raise StoreReadOnlyError(f'experience store {self.path} is open read-only')
        conn = self._conn()
        with self._wlock:
            conn.execute('BEGIN IMMEDIATE')
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute('ROLLBACK')
                raise
            conn.execute('COMMIT')

    @contextlib.contextmanager
    def _read(self):
        """One read transaction (a consistent snapshot); joins a write under way in this thread."""
        conn = self._conn()
        if conn.in_transaction:
            yield conn
            return
        conn.execute('BEGIN')
        try:
            yield conn
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute('COMMIT')

    def close(self) -> None:
        """Close every connection of this store (the last one checkpoints the WAL)."""
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def __enter__(self) -> 'ExperienceStore':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ writing

    def _pack_experience(self, plugin: str, key, latent=None, summary=None, *, steps=None,
                         energy=None, halt_reason=None, stamp=None) -> tuple:
        if not isinstance(plugin, str) or not plugin:
            raise ValueError(f'plugin must be a non-empty string, got {plugin!r}')
        kb, dim = pack_key(key)
        lb, ldt, lst, lsh = pack_latent(latent, self.latent_fp16)
        text = json.dumps(summary, default=json_default, allow_nan=False,
                          separators=(',', ':'))
        nbytes = len(kb) + (len(lb) if lb is not None else 0) + len(text.encode())
        if nbytes > self.max_bytes:
            raise ValueError(f'one experience of {nbytes} bytes exceeds max_bytes '
                             f'{self.max_bytes}')
        now = time.time()
        stamp = now if stamp is None else float(stamp)
        return (plugin, kb, dim, lb, ldt, lst, lsh, text,
                None if steps is None else int(steps), _finite_or_none(energy),
                None if halt_reason is None else str(halt_reason), stamp, now, nbytes)

    def add(self, plugin: str, key, latent=None, summary=None, *, steps: Optional[int] = None,
            energy: Optional[float] = None, halt_reason: Optional[str] = None,
            stamp: Optional[float] = None) -> int:
        """Store one refined input of ``plugin``; return its id.

        ``key``: 1-D key embedding (float32; finite, not all zeros); ``latent``: any numeric
        numpy array or None; ``summary``: anything JSON can carry (numpy scalars and arrays are
        converted; NaN is refused); ``stamp``: wall time of the run (Unix s, default now). The
        insert and the eviction it calls for are one transaction.
        """
        return self.add_many([dict(plugin=plugin, key=key, latent=latent, summary=summary,
                                   steps=steps, energy=energy, halt_reason=halt_reason,
                                   stamp=stamp)])[0]

    def add_many(self, items: Iterable[Mapping[str, Any]]) -> List[int]:
        """Store several experiences (``add``'s keyword arguments each) in one transaction.

        Returns their ids; when the batch alone exceeds a bound, its first rows are evicted
        again (the ids then name rows no longer stored).
        """
        rows = [self._pack_experience(**item) for item in items]
        with self._write() as conn:
            ids = [conn.execute(
                'INSERT INTO experiences (plugin, key, key_dim, latent, latent_dtype, '
                'latent_stored, latent_shape, summary, steps, energy, halt_reason, stamp, '
                'last_used, nbytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
                row).lastrowid for row in rows]
            self._evict(conn)
        return ids

    def _evict(self, conn: sqlite3.Connection) -> int:
        """Delete least recently used rows until both bounds hold (inside a write)."""
        rows, nbytes = conn.execute('SELECT rows, bytes FROM totals WHERE id = 0').fetchone()
        evicted = 0
        for table in ('experiences', 'prototypes'):
            while rows > self.max_rows or nbytes > self.max_bytes:
                batch = conn.execute(f'SELECT id, nbytes FROM {table} '
                                     'ORDER BY last_used, id LIMIT 512').fetchall()
                if not batch:
                    break
                drop = []
                for rid, nb in batch:
                    if rows <= self.max_rows and nbytes <= self.max_bytes:
                        break
                    drop.append((rid,))
                    rows -= 1
                    nbytes -= nb
                conn.executemany(f'DELETE FROM {table} WHERE id = ?', drop)
                evicted += len(drop)
        if evicted:
            conn.execute('UPDATE totals SET evicted = evicted + ? WHERE id = 0', (evicted,))
        return evicted

    def touch(self, records: Sequence[MemoryRecord]) -> None:
        """Count a hit on each record (``hits`` + 1, ``last_used`` now): LRU keeps them longer."""
        now = time.time()
        with self._write() as conn:
            for r in records:
                conn.execute(f'UPDATE {_TABLE[r.source]} SET hits = hits + 1, last_used = ? '
                             'WHERE id = ?', (now, r.id))

    # ------------------------------------------------------------------ reading

    def _record(self, source: str, row: tuple) -> MemoryRecord:
        (rid, plugin, kb, _dim, lb, ldt, lst, lsh, text, steps, energy, halt, stamp,
         last_used, hits) = row[:15]
        rec = MemoryRecord(source=source, id=rid, plugin=plugin, key=unpack_key(kb),
                           latent=unpack_latent(lb, ldt, lst, lsh), summary=json.loads(text),
                           steps=steps, energy=energy, halt_reason=halt, stamp=stamp,
                           last_used=last_used, hits=hits)
        if source == SOURCE_PROTOTYPE:
            cb, members, mean_steps, mean_energy, scatter = row[15:20]
            rec.centroid = unpack_key(cb)
            rec.members = int(members)
            rec.mean_steps = mean_steps
            rec.mean_energy = mean_energy
            rec.scatter = float(scatter)
        return rec

    def _select(self, source: str) -> str:
        cols = _COMMON + (', ' + _PROTO_EXTRA if source == SOURCE_PROTOTYPE else '')
        return f'SELECT {cols} FROM {_TABLE[source]}'

    def get(self, row_id: int, source: str = SOURCE_EXPERIENCE) -> Optional[MemoryRecord]:
        """Return one stored row (None when it is not there, evicted or consolidated)."""
        with self._read() as conn:
            row = conn.execute(self._select(source) + ' WHERE id = ?', (int(row_id),)).fetchone()
        return None if row is None else self._record(source, row)

    def records(self, plugin: Optional[str] = None,
                source: str = SOURCE_EXPERIENCE) -> List[MemoryRecord]:
        """Return every row of one table (of one plugin when given), oldest id first."""
        with self._read() as conn:
            if plugin is None:
                rows = conn.execute(self._select(source) + ' ORDER BY id').fetchall()
            else:
                rows = conn.execute(self._select(source) + ' WHERE plugin = ? ORDER BY id',
                                    (plugin,)).fetchall()
        return [self._record(source, r) for r in rows]

    def count(self, plugin: Optional[str] = None, source: str = SOURCE_EXPERIENCE) -> int:
        """Return the number of rows of one table (of one plugin when given)."""
        with self._read() as conn:
            if plugin is None:
                return conn.execute(f'SELECT COUNT(*) FROM {_TABLE[source]}').fetchone()[0]
            return conn.execute(f'SELECT COUNT(*) FROM {_TABLE[source]} WHERE plugin = ?',
                                (plugin,)).fetchone()[0]

    def _index(self, conn, source: str, plugin: str, dim: int,
               gen: int) -> Tuple[np.ndarray, np.ndarray]:
        """Ids and unit keys (float32) of one plugin's rows of one table, cached.

        The cache is valid while ``totals.gen`` is unchanged. After writes, the current ids
        are read from the ``(plugin, key_dim)`` index alone; cached rows still present are
        kept and only the new rows' keys are read, so a query after an insert costs an index
        scan, not a reload.
        """
        ck = (source, plugin, dim)
        with self._cache_lock:
            hit = self._cache.get(ck)
        if hit is not None and hit[0] == gen:
            return hit[1], hit[2]
        table = _TABLE[source]
        col = 'centroid' if source == SOURCE_PROTOTYPE else 'key'
        ids_now = np.fromiter((r[0] for r in conn.execute(
            f'SELECT id FROM {table} WHERE plugin = ? AND key_dim = ? ORDER BY id',
            (plugin, dim))), dtype=np.int64)
        if hit is not None:
            keep = np.isin(hit[1], ids_now, assume_unique=True)
            old_ids, old_mat = hit[1][keep], hit[2][keep]
        else:
            old_ids, old_mat = np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        new_ids = np.setdiff1d(ids_now, old_ids, assume_unique=True)
        rows = []
        if len(new_ids) > len(ids_now) // 2:
            old_ids, old_mat = np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
            rows = conn.execute(f'SELECT id, {col} FROM {table} WHERE plugin = ? AND '
                                'key_dim = ?', (plugin, dim)).fetchall()
        else:
            for s in range(0, len(new_ids), 500):
                chunk = new_ids[s:s + 500].tolist()
                rows += conn.execute(f'SELECT id, {col} FROM {table} WHERE id IN '
                                     f'({",".join("?" * len(chunk))})', chunk).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        mat = np.frombuffer(b''.join(r[1] for r in rows), dtype='<f4').astype(np.float32)
        mat = mat.reshape(len(rows), dim)
        mat = mat / np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-30)
        ids = np.concatenate([old_ids, ids])
        mat = np.concatenate([old_mat, mat])
        order = np.argsort(ids, kind='stable')
        ids, mat = ids[order], mat[order]
        with self._cache_lock:
            self._cache[ck] = (gen, ids, mat)
        return ids, mat

    RECORD_CACHE = 64

    def _cached_record(self, conn, source: str, rid: int, gen: int) -> Optional[MemoryRecord]:
        """Return one row decoded (None when gone), from a small cache while ``gen`` holds.

        A robot at a place it knows asks for the same few records input after input: the
        cache (the ``RECORD_CACHE`` most recently returned) saves reading and decoding the
        latent (64 KB for a vision latent) each time. Any
        insert or delete (a new experience, a sleep, an eviction) changes ``gen`` and empties
        it. A cached record's ``hits`` and ``last_used`` are those of its first read, and its
        arrays are shared by every caller: read them, do not modify them.
        """
        ck = (source, rid)
        with self._cache_lock:
            if self._records_gen != gen:
                self._records.clear()
                self._records_gen = gen
            rec = self._records.get(ck)
            if rec is not None:
                self._records.move_to_end(ck)
                return rec
        row = conn.execute(self._select(source) + ' WHERE id = ?', (rid,)).fetchone()
        if row is None:
            return None
        rec = self._record(source, row)
        with self._cache_lock:
            if self._records_gen == gen:
                self._records[ck] = rec
                while len(self._records) > self.RECORD_CACHE:
                    self._records.popitem(last=False)
        return rec

    def nearest(self, plugin: str, key, k: int = 1, *, sources: Sequence[str] = SOURCES,
                touch: bool = True, min_similarity: Optional[float] = None
                ) -> List[MemoryRecord]:
        """Return the ``k`` rows of ``plugin`` most similar to ``key``, most similar first.

        Cosine similarity by brute force over the rows of the same key length, in both tables
        (``sources``): an experience is compared by its key, a prototype by its centroid; each
        record's ``source`` says which it is and ``similarity`` holds the score. ``touch``
        counts a hit on the returned rows (a short write after the read; not on a read-only
        store). ``min_similarity``: a row less similar than this is not read: its record
        carries only ``source``, ``id``, ``plugin`` and ``similarity`` (``key``, ``latent`` and
        ``summary`` None) and is not touched; a caller that would not use it pays no read of its
        latent.
        """
        q = check_key(key)  # float32, the values pack_key stores
        dim = int(q.size)
        q = q / np.linalg.norm(q)
        if k < 1:
            return []
        unknown = [s for s in sources if s not in _TABLE]
        if unknown:
            raise ValueError(f'unknown sources {unknown}; known: {SOURCES}')
        with self._read() as conn:
            gen = conn.execute('SELECT gen FROM totals WHERE id = 0').fetchone()[0]
            cands = []
            for order, source in enumerate(sources):
                ids, mat = self._index(conn, source, plugin, dim, gen)
                if len(ids) == 0:
                    continue
                sims = mat @ q
                top = ([int(np.argmax(sims))] if k == 1
                       else np.argpartition(-sims, min(k, len(ids)) - 1)[:k])
                cands += [(-float(sims[i]), order, int(ids[i]), source) for i in top]
            cands.sort()
            out = []
            for negsim, _, rid, source in cands[:k]:
                if min_similarity is not None and -negsim < min_similarity:
                    out.append(MemoryRecord(source=source, id=rid, plugin=plugin, key=None,
                                            latent=None, summary=None, steps=None, energy=None,
                                            halt_reason=None, stamp=0.0, last_used=0.0, hits=0,
                                            similarity=-negsim))
                    continue
                rec = self._cached_record(conn, source, rid, gen)
                if rec is not None:
                    out.append(replace(rec, similarity=-negsim))
        read = [r for r in out if r.key is not None]
        if touch and read and not self.readonly:
            self.touch(read)
        return out

    def stats(self) -> Dict[str, Any]:
        """Return sizes and counts.

        ``rows``, ``experiences``, ``prototypes``; ``payload_bytes`` (what ``max_bytes``
        bounds); ``bytes_used`` (pages in use x page size: the file's size once compacted and
        checkpointed); ``bytes_on_disk`` (the file with its ``-wal`` and ``-shm`` now);
        ``per_plugin`` (``{name: {'experiences', 'prototypes', 'members'}}``); ``evicted`` and
        ``consolidations`` since the file was made; the bounds, ``open_error`` and
        ``recovered_from``.
        """
        with self._read() as conn:
            rows, nbytes, evicted, cons = conn.execute(
                'SELECT rows, bytes, evicted, consolidations FROM totals WHERE id = 0').fetchone()
            page = conn.execute('PRAGMA page_size').fetchone()[0]
            pages = conn.execute('PRAGMA page_count').fetchone()[0]
            free = conn.execute('PRAGMA freelist_count').fetchone()[0]
            per: Dict[str, Dict[str, int]] = {}
            for plugin, n in conn.execute(
                    'SELECT plugin, COUNT(*) FROM experiences GROUP BY plugin'):
                per.setdefault(plugin, {'experiences': 0, 'prototypes': 0, 'members': 0})
                per[plugin]['experiences'] = n
                per[plugin]['members'] += n
            for plugin, n, m in conn.execute(
                    'SELECT plugin, COUNT(*), SUM(members) FROM prototypes GROUP BY plugin'):
                per.setdefault(plugin, {'experiences': 0, 'prototypes': 0, 'members': 0})
                per[plugin]['prototypes'] = n
                per[plugin]['members'] += int(m or 0)
        n_exp = sum(p['experiences'] for p in per.values())
        disk = sum(os.path.getsize(self.path + s) for s in ('', '-wal', '-shm')
                   if os.path.exists(self.path + s))
        return {'path': self.path, 'schema_version': SCHEMA_VERSION, 'rows': rows,
                'experiences': n_exp, 'prototypes': rows - n_exp, 'payload_bytes': nbytes,
                'bytes_used': (pages - free) * page, 'bytes_on_disk': disk,
                'per_plugin': per, 'evicted': evicted, 'consolidations': cons,
                'max_rows': self.max_rows, 'max_bytes': self.max_bytes,
                'open_error': self.open_error, 'recovered_from': self.recovered_from}

    def quick_check(self) -> str:
        """Run ``PRAGMA quick_check``; return ``'ok'`` or the first problems, joined."""
        rows = [r[0] for r in self._conn().execute('PRAGMA quick_check').fetchall()]
        return '; '.join(str(r) for r in rows[:5])

    # ------------------------------------------------------------------ consolidation

    def snapshot(self, plugin: str, key_dim: Optional[int] = None) -> Snapshot:
        """Read the keys of ``plugin``'s experiences and prototypes in one transaction.

        ``key_dim``: the key length to take (default: the most common one of the plugin's
        rows; rows of other lengths are left out).
        """
        with self._read() as conn:
            if key_dim is None:
                row = conn.execute(
                    'SELECT key_dim, SUM(n) AS total FROM ('
                    'SELECT key_dim, COUNT(*) AS n FROM experiences WHERE plugin = ? '
                    'GROUP BY key_dim UNION ALL SELECT key_dim, SUM(members) AS n FROM prototypes'
                    ' WHERE plugin = ? GROUP BY key_dim) GROUP BY key_dim '
                    'ORDER BY total DESC, key_dim LIMIT 1', (plugin, plugin)).fetchone()
                key_dim = int(row[0]) if row is not None else 0
            exp = conn.execute('SELECT id, key, steps, energy FROM experiences '
                               'WHERE plugin = ? AND key_dim = ? ORDER BY id',
                               (plugin, key_dim)).fetchall()
            pro = conn.execute('SELECT id, centroid, members, mean_steps, mean_energy '
                               'FROM prototypes WHERE plugin = ? AND key_dim = ? ORDER BY id',
                               (plugin, key_dim)).fetchall()
        n = len(exp) + len(pro)
        keys = np.frombuffer(b''.join([r[1] for r in exp] + [r[1] for r in pro]), dtype='<f4')
        keys = keys.astype(np.float32).reshape(n, key_dim)

        def num(v):
            return np.nan if v is None else float(v)

        return Snapshot(
            plugin=plugin, key_dim=int(key_dim), keys=keys,
            weights=np.array([1.0] * len(exp) + [float(r[2]) for r in pro]),
            steps=np.array([num(r[2]) for r in exp] + [num(r[3]) for r in pro]),
            energies=np.array([num(r[3]) for r in exp] + [num(r[4]) for r in pro]),
            refs=[(SOURCE_EXPERIENCE, r[0]) for r in exp] + [(SOURCE_PROTOTYPE, r[0])
                                                             for r in pro])

    def commit_consolidation(self, plugin: str, refs: Sequence[Tuple[str, int]],
                             prototypes: Sequence[PrototypeSpec], on_commit=None) -> int:
        """Replace the rows ``refs`` of ``plugin`` by ``prototypes``, in one transaction.

        Each prototype's medoid is copied from the first of its ``candidates`` still stored
        (a prototype none of whose candidates is left is dropped). Rows added since the
        snapshot are kept. ``on_commit()`` (optional) is called inside the transaction just
        before it commits (progress, tests); it must not use the store. Returns the number of
        prototypes written. Any exception (KeyboardInterrupt included) rolls everything back.
        """
        now = time.time()
        with self._write() as conn:
            rows = []
            for spec in prototypes:
                medoid = None
                for source, rid in spec.candidates:
                    cols = ('id, key, key_dim, latent, latent_dtype, latent_stored, latent_shape, '
                            'summary, steps, energy, halt_reason, stamp')
                    if source == SOURCE_PROTOTYPE:
                        cols += ', medoid_source, medoid_id'
                    medoid = conn.execute(f'SELECT {cols} FROM {_TABLE[source]} '
                                          'WHERE id = ? AND plugin = ?',
                                          (int(rid), plugin)).fetchone()
                    if medoid is not None:
                        origin = ((medoid[12], medoid[13]) if source == SOURCE_PROTOTYPE
                                  else (SOURCE_EXPERIENCE, medoid[0]))
                        break
                if medoid is None:
                    continue
                cb, dim = pack_key(spec.centroid)
                if dim != medoid[2]:
                    raise ValueError(f'centroid length {dim} differs from the key length '
                                     f'{medoid[2]}')
                nbytes = (len(cb) + len(medoid[1]) + (len(medoid[3]) if medoid[3] else 0)
                          + len(medoid[7].encode()))
                rows.append((plugin, cb, *medoid[1:12], int(spec.members),
                             _finite_or_none(spec.mean_steps), _finite_or_none(spec.mean_energy),
                             float(spec.scatter), origin[0], int(origin[1]), now, now, nbytes))
            for source in (SOURCE_EXPERIENCE, SOURCE_PROTOTYPE):
                conn.executemany(f'DELETE FROM {_TABLE[source]} WHERE id = ? AND plugin = ?',
                                 [(int(rid), plugin) for s, rid in refs if s == source])
            conn.executemany(
                'INSERT INTO prototypes (plugin, centroid, key, key_dim, latent, latent_dtype, '
                'latent_stored, latent_shape, summary, steps, energy, halt_reason, stamp, '
                'members, mean_steps, mean_energy, scatter, medoid_source, medoid_id, created, '
                'last_used, nbytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '
                '?, ?, ?, ?, ?)', rows)
            conn.execute('UPDATE totals SET consolidations = consolidations + 1 WHERE id = 0')
            self._evict(conn)
            if on_commit is not None:
                on_commit()
        return len(rows)

    def compact(self, pages_per_step: int = 256, should_stop=None) -> int:
        """Give free pages back to the file system, a few at a time; return the pages freed.

        Each chunk of ``pages_per_step`` pages is its own short write (``PRAGMA
        incremental_vacuum``), so writers of other threads wait at most one chunk; it stops when
        no page is free or ``should_stop()`` is true. Then the WAL is checkpointed (truncated
        when no reader holds it).
        """
        conn = self._conn()
        freed = 0
        while not (should_stop is not None and should_stop()):
            before = conn.execute('PRAGMA freelist_count').fetchone()[0]
            if before == 0:
                break
            with self._wlock:
                # executescript steps the pragma to its end (execute() frees one page per call)
                conn.executescript(f'PRAGMA incremental_vacuum({int(pages_per_step)});')
            after = conn.execute('PRAGMA freelist_count').fetchone()[0]
            if after >= before:
                break
            freed += before - after
        with self._wlock, contextlib.suppress(sqlite3.OperationalError):
            conn.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchall()
        return freed
