"""A process-wide mailbox of named channels: objects handed over by reference, in one process.

In the one-process mode (``sage_irp_all``) the nodes share a Python process, so what one hands
another (a latent tensor on the GPU, a camera frame, an experience) need not be serialised
through DDS: a :class:`Mailbox` passes the object itself. Nothing is copied or converted; the
receiver gets the very object that was posted (same ``id``; a tensor stays on its device),
so the sender must not change it afterwards.

Channels are created on first use, each bounded:

- a post goes at once to every callback subscriber of the channel (called in the poster's
  thread: callbacks must be quick, typically an append to the receiver's own queue; one that
  raises is counted in ``errors`` and the others still get the object);
- while a channel has no callback subscriber, posts wait in its queue for :meth:`Channel.poll`
  (or for the first subscriber, which is handed what waits), at most ``depth`` of them: a
  post to a full queue drops the oldest (counted in ``dropped``).

Counters per channel: ``posted``, ``delivered`` (hand-overs to a callback or a poll),
``dropped``, ``errors``; ``pending`` and ``subscribers`` say what is there now.

Channel names in use: :data:`EXPERIENCE_CHANNEL` (``'experience'``): what plugin nodes ask
memory to remember (the experience dict of ``IRPPlugin.experience`` plus ``plugin``,
``entity_id``, ``steps``, ``energy``, ``halt_reason``, ``stamp``, ``frame_id``).

No ROS here (``test/test_lint.py``).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional

#: The channel of experiences (plugin nodes -> memory node).
EXPERIENCE_CHANNEL = 'experience'
#: Default bound of a channel's queue.
DEFAULT_DEPTH = 256


class Subscription:
    """A callback subscribed to one channel; :meth:`close` unsubscribes it."""

    def __init__(self, channel: 'Channel', callback: Callable[[Any], None]):
        self.channel = channel
        self.callback = callback

    def close(self) -> None:
        """Stop receiving (idempotent)."""
        self.channel._unsubscribe(self)


class Channel:
    """One named channel of a :class:`Mailbox` (see the module docstring for its rules)."""

    def __init__(self, name: str, depth: int = DEFAULT_DEPTH):
        if int(depth) < 1:
            raise ValueError(f'depth must be >= 1, got {depth!r}')
        self.name = name
        self.depth = int(depth)
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._queue: Deque[Any] = collections.deque()
        self._subs: List[Subscription] = []
        self.posted = 0
        self.delivered = 0
        self.dropped = 0
        self.errors = 0

    def post(self, obj: Any) -> int:
        """Hand ``obj`` (by reference) to the subscribers, or queue it; return receivers now.

        Returns the number of callbacks that took it (0: it waits in the queue, or none took
        it without raising).
        """
        with self._lock:
            self.posted += 1
            subs = list(self._subs)
            if not subs:
                if len(self._queue) >= self.depth:
                    self._queue.popleft()
                    self.dropped += 1
                self._queue.append(obj)
                self._ready.notify_all()
                return 0
        return self._deliver(subs, [obj])

    def _deliver(self, subs: List[Subscription], objs: List[Any]) -> int:
        """Call every subscriber with every object (outside the lock); count the outcome."""
        ok = bad = 0
        for obj in objs:
            for sub in subs:
                try:
                    sub.callback(obj)
                    ok += 1
                except Exception:  # noqa: BLE001 - a receiver's bug must not reach the poster
                    bad += 1
        with self._lock:
            self.delivered += ok
            self.errors += bad
        return ok

    def subscribe(self, callback: Callable[[Any], None]) -> Subscription:
        """Call ``callback(obj)`` for every post from now on, and for what waits in the queue."""
        sub = Subscription(self, callback)
        with self._lock:
            waiting = list(self._queue)
            self._queue.clear()
            self._subs.append(sub)
        if waiting:
            self._deliver([sub], waiting)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def poll(self, max_items: Optional[int] = None, timeout: float = 0.0) -> List[Any]:
        """Take what waits (at most ``max_items``), oldest first; wait up to ``timeout`` s for one.

        Only posts made while the channel had no callback subscriber wait in the queue.
        """
        end = time.monotonic() + max(float(timeout), 0.0)
        with self._lock:
            while not self._queue:
                left = end - time.monotonic()
                if left <= 0:
                    return []
                self._ready.wait(left)
            n = len(self._queue) if max_items is None else min(int(max_items), len(self._queue))
            out = [self._queue.popleft() for _ in range(n)]
            self.delivered += n
            return out

    def stats(self) -> Dict[str, int]:
        """Return the counters: posted, delivered, dropped, errors, pending, subscribers."""
        with self._lock:
            return {'posted': self.posted, 'delivered': self.delivered,
                    'dropped': self.dropped, 'errors': self.errors,
                    'pending': len(self._queue), 'subscribers': len(self._subs),
                    'depth': self.depth}


class Mailbox:
    """Named :class:`Channel` s, created on first use."""

    def __init__(self, default_depth: int = DEFAULT_DEPTH):
        self.default_depth = int(default_depth)
        self._channels: Dict[str, Channel] = {}
        self._lock = threading.Lock()

    def channel(self, name: str, depth: Optional[int] = None) -> Channel:
        """Return the channel ``name``, made with ``depth`` (default bound) if it is new.

        ``depth`` given for an existing channel changes its bound (a queue longer than the new
        bound keeps what it holds until polled).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f'a channel name must be a non-empty string, got {name!r}')
        with self._lock:
            ch = self._channels.get(name)
            if ch is None:
                ch = self._channels[name] = Channel(
                    name, self.default_depth if depth is None else depth)
            elif depth is not None:
                if int(depth) < 1:
                    raise ValueError(f'depth must be >= 1, got {depth!r}')
                ch.depth = int(depth)
            return ch

    def post(self, name: str, obj: Any) -> int:
        """Post ``obj`` to channel ``name`` (see :meth:`Channel.post`)."""
        return self.channel(name).post(obj)

    def subscribe(self, name: str, callback: Callable[[Any], None]) -> Subscription:
        """Subscribe ``callback`` to channel ``name`` (see :meth:`Channel.subscribe`)."""
        return self.channel(name).subscribe(callback)

    def poll(self, name: str, max_items: Optional[int] = None,
             timeout: float = 0.0) -> List[Any]:
        """Take what waits on channel ``name`` (see :meth:`Channel.poll`)."""
        return self.channel(name).poll(max_items, timeout)

    def stats(self) -> Dict[str, Dict[str, int]]:
        """Return every channel's counters by name."""
        with self._lock:
            channels = dict(self._channels)
        return {n: c.stats() for n, c in sorted(channels.items())}


_DEFAULT: Optional[Mailbox] = None
_DEFAULT_LOCK = threading.Lock()


def default_mailbox() -> Mailbox:
    """Return the process-wide mailbox (the one every node of ``sage_irp_all`` shares)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Mailbox()
        return _DEFAULT
