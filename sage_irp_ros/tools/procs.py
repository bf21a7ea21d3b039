"""Child processes for the demo and the tests: output to a log file, stopped like ``ros2 launch``.

:class:`ChildProcess` starts a command with its standard output and error in a log file, and
stops it with SIGINT (what ``ros2 launch`` sends on Ctrl-C), killing it when it does not exit
in time. :func:`wait` polls a condition while watching the processes it depends on. The demo
(:mod:`sage_irp_ros.demo`) and the tests' ``NodeProcess`` (``test/conftest.py``) both use them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Callable, Iterable, Mapping, Optional, Sequence


def free_log_path(folder: str, stem: str) -> str:
    """Return ``folder/stem.log``, or ``stem.2.log``, ``stem.3.log``, ... if it exists."""
    path = os.path.join(folder, f'{stem}.log')
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(folder, f'{stem}.{n}.log')
    return path


class ChildProcess:
    """A child process with its output (stdout and stderr) in a log file; stopped with SIGINT.

    ``log_path`` names the log file; without it the log is ``log_dir/<name>.log``. ``cwd`` and
    ``env`` are passed to :class:`subprocess.Popen` (None: this process's).
    """

    def __init__(self, name: str, args: Sequence[str], log_dir: Optional[str] = None, *,
                 log_path: Optional[str] = None, cwd: Optional[str] = None,
                 env: Optional[Mapping[str, str]] = None):
        if log_path is None:
            if log_dir is None:
                raise ValueError('ChildProcess needs log_dir or log_path')
            log_path = os.path.join(log_dir, f'{name}.log')
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self._log = open(log_path, 'w', encoding='utf-8')
        try:
            self.proc = subprocess.Popen(self.args, cwd=cwd,
                                         env=None if env is None else dict(env),
                                         stdout=self._log, stderr=subprocess.STDOUT)
        except BaseException:
            self._log.close()
            raise

    @property
    def returncode(self) -> Optional[int]:
        """The exit code, or None while the process runs."""
        return self.proc.poll()

    def alive(self) -> bool:
        """Return True while the process runs."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        """SIGINT the process and return its exit code (killed when it hangs ``timeout`` s).

        Stopping a process that has already exited (or was stopped) only returns its code.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        """Return everything the process has written so far."""
        with open(self.log_path, encoding='utf-8', errors='replace') as f:
            return f.read()

    def tail(self, n: int = 15) -> str:
        """Return the last ``n`` lines of the log."""
        with open(self.log_path, encoding='utf-8', errors='replace') as f:
            return ''.join(f.readlines()[-n:])


def wait(predicate: Callable[[], object], timeout: float,
         procs: Iterable[ChildProcess] = (), period: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true; return False at ``timeout`` or when a process exits.

    ``procs`` are the processes the condition depends on: if one of them exits first, waiting
    longer is pointless.
    """
    procs = list(procs)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if any(not p.alive() for p in procs):
            return False
        time.sleep(period)
    return bool(predicate())
