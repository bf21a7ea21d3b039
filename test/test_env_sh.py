"""`. tools/env.sh` makes the README's commands work as written (issue #15: sage_irp_replay
was not on PATH)."""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sourced(cmd: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != 'AMENT_PREFIX_PATH'}
    env['PATH'] = '/usr/bin:/bin'  # as in a fresh shell: no venv on PATH
    return subprocess.run(['bash', '-c', f'. tools/env.sh && {cmd}'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_env_sh_puts_the_readme_executables_on_path():
    for exe in ('sage_irp_replay', 'sage_irp_record', 'sage_irp_all', 'vision_irp_node'):
        r = _sourced(f'command -v {exe}')
        assert r.returncode == 0, f'{exe} not on PATH after . tools/env.sh: {r.stderr}'
    r = _sourced('sage_irp_replay --help && sage_irp_record --help && echo "$AMENT_PREFIX_PATH"')
    assert r.returncode == 0, r.stderr
    assert 'usage' in r.stdout.lower()
    assert r.stdout.strip().splitlines()[-1] == os.path.join(ROOT, '.venv')


def test_env_sh_twice_adds_path_entries_once():
    r = _sourced('. tools/env.sh && echo "$PATH"')
    parts = r.stdout.strip().split(':')
    assert parts.count(os.path.join(ROOT, '.venv', 'lib', 'sage_irp_ros')) == 1
    assert parts.count(os.path.join(ROOT, '.venv', 'bin')) == 1
