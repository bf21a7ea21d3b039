"""``make bench``: every plugin's own benchmark from the registry, then the orchestrator's.

For every registered plugin with a ``bench`` command (``PluginSpec.bench``: script and
arguments), runs ``python <script> <arguments>`` from the repository root with this
interpreter, in registry order; then ``bench/orchestrator_bench.py --cycles 60`` (its workloads
come from the registry too). Stops at the first command that fails and exits with its code.

Usage: ``python bench/run_all.py [--dry-run]`` (``--dry-run``: print the commands only).
"""

import argparse
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sage_irp_ros import registry  # noqa: E402

ORCHESTRATOR = ('bench/orchestrator_bench.py', '--cycles', '60')


def commands():
    """Return the benchmark commands, in the order they run."""
    cmds = [[sys.executable, *spec.bench] for spec in registry.specs() if spec.bench]
    return cmds + [[sys.executable, *ORCHESTRATOR]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--dry-run', action='store_true', help='print the commands, run nothing')
    args = ap.parse_args(argv)
    for cmd in commands():
        print('+ ' + shlex.join(cmd), flush=True)
        if args.dry_run:
            continue
        code = subprocess.call(cmd, cwd=ROOT)
        if code != 0:
            print(f'bench: {shlex.join(cmd[1:])} failed (exit code {code})', file=sys.stderr,
                  flush=True)
            return code
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
