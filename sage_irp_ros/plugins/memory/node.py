"""``memory_irp_node``: the other plugins' experiences, stored and consolidated (memory plugin).

The node owns the experience store (``store.py``: SQLite, WAL, bounded, damage set aside) at
the ``memory_store`` parameter's path, the same parameter plugin nodes read their warm starts
from (read-only). It

- receives experiences from plugin nodes in this process through the mailbox (their
  ``memory: mailbox``: the objects themselves, tensors where they are) and from plugin nodes in
  other processes on ``input_topic`` (default ``irp/experience``, ``sage_irp_ros/Experience``;
  their ``memory: topic``), and stores them in a writer thread (bad ones are logged and
  counted, the node goes on; a full queue drops its oldest, counted);
- sleeps: consolidates each plugin's rows into prototypes (``sleep.py``: ``SleepIRP`` refined
  by the core loop, then one write transaction), on the ``~/sleep`` service
  (``std_srvs/Trigger``; the answer is a one-line summary) or by itself when no experience has
  arrived for ``idle_sleep_s``, at least ``sleep_min_new`` arrived since the last sleep, and the
  node's budget (its orchestrator grant, or ``default_atp`` without one) can pay a run. Each
  plugin's consolidation is one run of the node host: budgeted like any plugin's (the
  registry gives memory a low priority), one telemetry record each (``kind`` memory), halted
  ``manual`` by deactivate or shutdown, ``budget`` or ``timeout`` by its grant; a run that did
  not end by its own rules leaves the store exactly as it was (``sleep_commit_partial``: write
  what a budget-halted run found).

A damaged store at configure is set aside (its one-line ``open_error`` is logged and counted)
and a fresh one started. Parameters: ``docs/MEMORY.md``.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Deque, Dict, List, Mapping, Optional

import numpy as np
from rclpy.callback_groups import ReentrantCallbackGroup
from std_srvs.srv import Trigger

from sage_irp_ros.core import HALT_BUDGET, HALT_MANUAL, HALT_TIMEOUT, RefineResult
from sage_irp_ros.core.budget import PatientBudget
from sage_irp_ros.core.mailbox import EXPERIENCE_CHANNEL
from sage_irp_ros.msg import Experience
from sage_irp_ros.plugins.memory.experience import check_experience
from sage_irp_ros.plugins.memory.sleep import (
    ConsolidationReport,
    SleepInput,
    SleepIRP,
    consolidate,
)
from sage_irp_ros.plugins.memory.store import ExperienceStore
from sage_irp_ros.ros.conversions import experience_from_msg
from sage_irp_ros.ros.host import (
    MEMORY_OFF,
    Inputs,
    IRPNodeHost,
    descriptor,
    memory_store_path,
    run_node,
)

#: Triggers of a sleep run: the service, or the idle timer.
SLEEP_SERVICE, SLEEP_IDLE = 'service', 'idle'
#: Experiences stored per write transaction at most.
WRITE_BATCH = 256
#: Halting reasons of a sleep run stopped from outside (nothing is written then).
CUT_SHORT = (HALT_MANUAL, HALT_BUDGET, HALT_TIMEOUT)
# a sleep drawing on grants takes the orchestrator for gone after this many grant_timeout_s
# without a current grant
GRANTS_GONE_TIMEOUTS = 5


@dataclass
class MemoryCounters:
    """What the memory node has received, stored and consolidated since it started."""

    experiences_received: int = 0
    experiences_stored: int = 0
    experiences_bad: int = 0  # refused: garbage (logged)
    experiences_dropped: int = 0  # the writer's queue was full: its oldest dropped
    store_errors: int = 0  # writes or sleeps the store failed (SQLite errors)
    store_damaged: int = 0  # damaged stores set aside at configure
    sleeps: int = 0  # sleeps finished (all their plugins' runs)
    sleeps_committed: int = 0  # ... that wrote prototypes
    sleeps_interrupted: int = 0  # ... that a deactivate, shutdown, budget or deadline cut short


@dataclass
class SleepJob:
    """One sleep: a run per remembered plugin, and what the ``~/sleep`` answer says of them."""

    trigger: str
    plugins: List[str]
    rows_before: int
    new_at_start: int
    started: float = field(default_factory=time.perf_counter)
    reports: List[ConsolidationReport] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)
    interrupted: bool = False
    parts_done: int = 0
    rows_after: Optional[int] = None
    seconds: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def committed(self) -> bool:
        """Whether any plugin's prototypes were written."""
        return any(r.committed for r in self.reports)

    @property
    def cut_short(self) -> bool:
        """Whether it was interrupted, or a run stopped (budget, deadline, cancel) unwritten."""
        return self.interrupted or any(
            r.halt_reason in CUT_SHORT and not r.committed for r in self.reports)

    def summary(self) -> str:
        """Return one line: prototypes, rows before / after, steps, halts, seconds, per plugin."""
        protos = sum(r.prototypes for r in self.reports)
        steps = sum(r.steps for r in self.reports)
        halts = sorted({r.halt_reason for r in self.reports if r.halt_reason})
        after = '?' if self.rows_after is None else self.rows_after
        head = (f'sleep ({self.trigger}): {"committed" if self.committed else "nothing written"}'
                f'; prototypes {protos}, rows {self.rows_before} -> {after}, steps {steps}, '
                f'halt {"/".join(halts) or "none"}, {self.seconds:.2f} s')
        parts = [f'{r.plugin}: {r.prototypes} prototypes from {r.inputs} rows, {r.steps} steps, '
                 f'{r.halt_reason or "no run"} ({r.reason})' for r in self.reports]
        parts += self.errors
        if self.interrupted:
            parts.append('interrupted')
        if not self.plugins:
            parts.append('the store holds no experience')
        return head + ' [' + '; '.join(parts) + ']'


@dataclass
class SleepRequest:
    """What one sleep run refines: the rows of one plugin, as part of a :class:`SleepJob`."""

    job: SleepJob
    plugin: str


class MemoryIRPNode(IRPNodeHost):
    """The memory plugin behind the node host: store experiences, sleep, serve warm starts."""

    plugin_name = 'memory'
    #: Without an orchestrator a sleep may spend 5 s of compute (10,000 rows take about 1 s).
    DEFAULT_ATP = 5000.0

    def declare_plugin_parameters(self) -> None:
        """Declare the store's bounds, the sleep's triggers and its refinement's size term."""
        p = self.declare_parameter
        p('max_rows', 100_000, descriptor(
            'Bound on stored rows (experiences + prototypes); least recently used go first',
            read_only=True, int_range=(1, 2 ** 31 - 1)))
        p('max_bytes', 1 << 30, descriptor(
            'Bound on stored payload bytes (keys, latents, summaries)', read_only=True,
            int_range=(1, 2 ** 62)))
        p('idle_sleep_s', 30.0, descriptor(
            'Sleep by itself after this long without an experience (when sleep_min_new came '
            'since the last sleep and the budget can pay a run), s; 0 = only on ~/sleep',
            float_range=(0.0, 1e6)))
        p('sleep_min_new', 10, descriptor(
            'Experiences that must have arrived since the last sleep for an automatic one',
            int_range=(1, 2 ** 31 - 1)))
        p('sleep_commit_partial', False, descriptor(
            'Write the prototypes of a sleep its budget or deadline cut short (false: such a '
            'sleep leaves the store as it was)'))
        p('size_weight', 0.5, descriptor(
            'Sleep energy\'s size term: a prototype is kept when it explains more than this '
            'times the mean scatter of one experience', read_only=True,
            float_range=(0.0, 100.0)))
        p('sleep_patience_s', 30.0, descriptor(
            'Under an orchestrator, how long a sleep waits for the next cycle\'s grant when '
            'the current one is spent (it draws on grant after grant), s; 0 = one grant only',
            float_range=(0.0, 1e5)))
        p('sleep_timeout_s', 120.0, descriptor(
            'Longest wait of a ~/sleep call for its sleep to finish, s', float_range=(0.1, 1e5)))
        p('experience_queue_depth', 1000, descriptor(
            'Experiences waiting for the writer at most (the oldest is dropped beyond)',
            read_only=True, int_range=(1, 1_000_000)))
        self.store: Optional[ExperienceStore] = None
        self.memory_counters = MemoryCounters()
        self._wq: Deque[Any] = collections.deque()
        self._wcond = threading.Condition(threading.Lock())
        self._wstop = False
        self._writer: Optional[threading.Thread] = None
        self._mail_sub = None
        self._idle_timer = None
        self._sleep_srv = None
        self._srv_group = ReentrantCallbackGroup()
        self._jobs: List[SleepJob] = []
        self._last_experience = time.monotonic()
        self._new_since_sleep = 0
        self._next_auto = 0.0

    def create_plugin(self) -> SleepIRP:
        """Build the sleep refiner with the node's size term."""
        return SleepIRP(size_weight=self.get_parameter('size_weight').value)

    def example_input(self):
        """Return 200 noisy visits of 8 places (32-float keys), to price a sleep step."""
        rng = np.random.default_rng(0)
        places = rng.standard_normal((8, 32))
        keys = places[rng.integers(0, 8, 200)] + 0.3 * rng.standard_normal((200, 32))
        return SleepInput(keys=keys), None

    # ------------------------------------------------------------------ lifecycle

    def configure_node(self) -> None:
        """Configure as every plugin node, then open the store and offer ``~/sleep``."""
        super().configure_node()
        self.memory_mode = MEMORY_OFF  # the memory node remembers nothing of its own runs
        path = memory_store_path(self.get_parameter('memory_store').value)
        self.store = ExperienceStore(path, self.get_parameter('max_rows').value,
                                     self.get_parameter('max_bytes').value)
        if self.store.open_error:
            self.memory_counters.store_damaged += 1
            self.get_logger().error(self.store.open_error)
        st = self.store.stats()
        self.get_logger().info(f'experience store {path}: {st["experiences"]} experiences, '
                               f'{st["prototypes"]} prototypes')
        self._sleep_srv = self.create_service(Trigger, '~/sleep', self._on_sleep,
                                              callback_group=self._srv_group)

    def activate_node(self) -> None:
        """Subscribe (topic and mailbox), start the writer and the idle timer."""
        self._wstop = False
        self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                        name=f'{self.get_name()}-store')
        self._writer.start()
        super().activate_node()
        self._last_experience = time.monotonic()
        self._mail_sub = self.mailbox.subscribe(EXPERIENCE_CHANNEL, self._enqueue)
        idle = self.get_parameter('idle_sleep_s').value
        if idle > 0:
            self._idle_timer = self.create_timer(min(max(idle / 4.0, 0.05), 1.0),
                                                 self._on_idle_timer)

    def deactivate_node(self) -> None:
        """Stop receiving, interrupt a sleep (the store stays as it was), store what waits."""
        if self._mail_sub is not None:
            self._mail_sub.close()
            self._mail_sub = None
        if self._idle_timer is not None:
            self.destroy_timer(self._idle_timer)
            self._idle_timer = None
        super().deactivate_node()
        self._finish_jobs('interrupted: the node was deactivated')
        with self._wcond:
            self._wstop = True
            self._wcond.notify_all()
        writer, self._writer = self._writer, None
        if writer is not None and writer.is_alive() and threading.current_thread() is not writer:
            writer.join(timeout=10.0)

    def cleanup_node(self) -> None:
        """Drop the service, close the store, then clean up as every plugin node."""
        if self._sleep_srv is not None:
            self.destroy_service(self._sleep_srv)
            self._sleep_srv = None
        store, self.store = self.store, None
        if store is not None:
            store.close()
        super().cleanup_node()

    # ------------------------------------------------------------------ experiences

    def take_input(self, port: str, msg) -> bool:
        """Experiences on the topic go to the writer's queue; no run is queued for them."""
        if port != 'input':
            return False
        self._enqueue(msg)
        return True

    def _enqueue(self, item) -> None:
        """Queue an experience (a message or a mailbox dict) for the writer; cheap."""
        depth = self.get_parameter('experience_queue_depth').value
        with self._wcond:
            self.memory_counters.experiences_received += 1
            if len(self._wq) >= depth:
                self._wq.popleft()
                self.memory_counters.experiences_dropped += 1
            self._wq.append(item)
            self._last_experience = time.monotonic()
            self._wcond.notify()

    def _write_loop(self) -> None:
        while True:
            with self._wcond:
                while not self._wq and not self._wstop:
                    self._wcond.wait()
                if not self._wq:
                    return
                batch = [self._wq.popleft() for _ in range(min(len(self._wq), WRITE_BATCH))]
            self._store_batch(batch)

    def _refuse(self, text: str) -> None:
        with self._wcond:
            self.memory_counters.experiences_bad += 1
        self.get_logger().error(f'bad experience refused: {text}', throttle_duration_sec=2.0)

    def _store_batch(self, batch: List[Any]) -> None:
        """Check each experience, store the good ones in one transaction (one by one on error)."""
        good = []
        for item in batch:
            try:
                exp = experience_from_msg(item) if isinstance(item, Experience) else item
                good.append(check_experience(exp))
            except (ValueError, TypeError) as exc:
                self._refuse(str(exc))
        store = self.store
        if not good:
            return
        if store is None:
            with self._wcond:
                self.memory_counters.store_errors += len(good)
            return
        stored = 0
        try:
            store.add_many(good)
            stored = len(good)
        except ValueError:  # one of them is refused by the store (over max_bytes): each alone
            for kw in good:
                try:
                    store.add(**kw)
                    stored += 1
                except ValueError as exc:
                    self._refuse(str(exc))
                except Exception as exc:  # noqa: BLE001 - the store failing: count, go on
                    self._store_failed(f'storing an experience failed: {exc!r}', 1)
        except Exception as exc:  # noqa: BLE001 - the store failing (disk, damage): count, go on
            self._store_failed(f'storing {len(good)} experiences failed: {exc!r}', len(good))
        with self._wcond:
            self.memory_counters.experiences_stored += stored
        with self._lock:
            self._new_since_sleep += stored

    def _store_failed(self, text: str, n: int) -> None:
        with self._wcond:
            self.memory_counters.store_errors += n
        self.get_logger().error(text, throttle_duration_sec=2.0)

    # ------------------------------------------------------------------ sleep

    def request_sleep(self, trigger: str = SLEEP_SERVICE) -> SleepJob:
        """Queue a sleep: one run per plugin with rows in the store; return its job."""
        store = self.store
        if store is None:
            raise RuntimeError('the store is not open (node not configured)')
        st = store.stats()
        plugins = sorted(name for name, n in st['per_plugin'].items()
                         if n['experiences'] + n['prototypes'] > 0)
        now = time.perf_counter()
        with self._lock:
            job = SleepJob(trigger=trigger, plugins=plugins, rows_before=st['rows'],
                           new_at_start=self._new_since_sleep)
            self._new_since_sleep = 0
            if plugins:
                self._jobs.append(job)
                for name in plugins:
                    self._queue.append(Inputs(trigger, {trigger: SleepRequest(job, name)}, now))
                self._wake.notify()
        if not plugins:
            self._finish(job)
        return job

    def decode_inputs(self, inputs: Inputs):
        """Return the sleep run's :class:`SleepRequest` as its input (no message to decode)."""
        return inputs.msg, None

    def run_refinement(self, x0: SleepRequest, ctx, *, budget, deadline) -> Optional[RefineResult]:
        """Consolidate one plugin's rows (``consolidate``: the core loop, then one commit)."""
        job, report = x0.job, None
        patience = self.get_parameter('sleep_patience_s').value
        if patience > 0 and budget is self.current_grant_budget():
            # one cycle's low-priority share pays for a step or two: draw on grant after grant
            # grants late by a few timeouts on a loaded machine do not end the sleep
            budget = PatientBudget(
                self.current_grant_budget, patience_s=patience,
                absent_s=GRANTS_GONE_TIMEOUTS * self.get_parameter('grant_timeout_s').value,
                stop=lambda: self._stopping or self._cancel.is_set())
        try:
            if self.store is None or job.done.is_set():
                return None
            report = consolidate(
                self.store, x0.plugin, sleeper=self.plugin, config=self._halt_config,
                should_stop=lambda: self._stopping, cancel=self._cancel, budget=budget,
                cost=self.cost, deadline=deadline,
                commit_partial=self.get_parameter('sleep_commit_partial').value)
        except Exception as exc:  # noqa: BLE001 - a failing store must not stop the node
            with self._wcond:
                self.memory_counters.store_errors += 1
            job.errors.append(f'{x0.plugin}: {type(exc).__name__}: {exc}')
            self.get_logger().error(f'sleep on {x0.plugin} failed: {exc!r}')
            return None
        finally:
            self._part_done(job, report)
        if report.trace is None:  # too few rows: nothing was refined
            return None
        return RefineResult(output=report, state=None, trace=report.trace)

    def run_metadata(self, output: ConsolidationReport, result) -> Mapping[str, Any]:
        """Report what the sleep run did to the store."""
        return {'consolidated': output.plugin, 'committed': output.committed,
                'reason': output.reason, 'inputs': output.inputs,
                'experiences': output.experiences, 'prototypes': output.prototypes,
                'replaced': output.replaced, 'kept': output.kept,
                'bytes_before': output.bytes_before, 'bytes_after': output.bytes_after,
                'write_seconds': round(output.write_seconds, 4)}

    def _part_done(self, job: SleepJob, report: Optional[ConsolidationReport]) -> None:
        with self._lock:
            if report is not None:
                job.reports.append(report)
            job.parts_done += 1
            finished = job.parts_done >= len(job.plugins)
        if finished:
            self._finish(job)

    def _finish(self, job: SleepJob, interrupted: str = '') -> None:
        """Close ``job``: rows after, counters, and the answer it waits for."""
        with self._lock:
            if job.done.is_set():
                return
            if job in self._jobs:
                self._jobs.remove(job)
        if interrupted:
            job.interrupted = True
            job.errors.append(interrupted)
        store = self.store
        try:
            job.rows_after = store.stats()['rows'] if store is not None else None
        except Exception:  # noqa: BLE001 - the answer goes out anyway
            job.rows_after = None
        job.seconds = time.perf_counter() - job.started
        cut = job.cut_short
        with self._wcond:
            self.memory_counters.sleeps += 1
            self.memory_counters.sleeps_committed += job.committed
            self.memory_counters.sleeps_interrupted += cut
        if cut:  # the rows are still unconsolidated: an automatic sleep may try again later
            with self._lock:
                self._new_since_sleep += job.new_at_start
            self._next_auto = time.monotonic() + self.get_parameter('idle_sleep_s').value
        job.done.set()
        self.get_logger().info(job.summary())

    def _finish_jobs(self, why: str) -> None:
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            self._finish(job, why)

    def _budget_allows(self) -> bool:
        """Whether the current grant (or the default budget) can pay an input and one step."""
        budget, _ = self._budget_for_run()
        return budget.unlimited or (
            budget.remaining >= self.cost.per_input_ms + self.cost.per_step_ms)

    def _on_idle_timer(self) -> None:
        idle = self.get_parameter('idle_sleep_s').value
        now = time.monotonic()
        with self._lock:
            busy = bool(self._jobs)
            new = self._new_since_sleep
        if (busy or idle <= 0 or new < self.get_parameter('sleep_min_new').value
                or now - self._last_experience < idle or now < self._next_auto
                or self.store is None or not self._budget_allows()):
            return
        self.request_sleep(SLEEP_IDLE)

    def _on_sleep(self, request, response):
        """``~/sleep``: sleep now; answer with the one-line summary when it is done."""
        if self.lifecycle_state != 'active' or self.store is None:
            response.success = False
            response.message = f'not active ({self.lifecycle_state}): no sleep'
            return response
        job = self.request_sleep(SLEEP_SERVICE)
        timeout = self.get_parameter('sleep_timeout_s').value
        if not job.done.wait(timeout):
            response.success = False
            response.message = (f'sleep still running after {timeout:.0f} s (it goes on; see '
                                'the log and telemetry)')
            return response
        response.success = not job.cut_short and not job.errors
        response.message = job.summary()
        return response

    def _watch_price(self, trace, budget, x0, ctx) -> None:
        """Re-measure a starved price on the example input (a sleep's input is its request)."""
        x, c = self.example_input()
        super()._watch_price(trace, budget, x, c)

    def diagnostic_values(self) -> Dict[str, Any]:
        """Return the memory counters and the store's path."""
        with self._wcond:
            values = asdict(self.memory_counters)
            values['experiences_waiting'] = len(self._wq)
        values['store'] = self.store.path if self.store is not None else ''
        return values


def main(args=None) -> int:
    """Run the memory node (its ``~/sleep`` call waits in a thread of its own)."""
    return run_node(MemoryIRPNode, args, threads=3)


if __name__ == '__main__':
    raise SystemExit(main())
