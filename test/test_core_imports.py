"""The ROS-free core's import graph: no circles between its modules, and no ROS on import."""

import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'sage_irp_ros.core'
CORE = os.path.join(ROOT, *PACKAGE.split('.'))


def _modules():
    """Return ``{dotted name: file path}`` of every module under the core (the package too)."""
    mods = {}
    for dirpath, dirnames, files in os.walk(CORE):
        dirnames[:] = sorted(d for d in dirnames if d != '__pycache__')
        rel = os.path.relpath(dirpath, CORE)
        parts = [] if rel == '.' else rel.split(os.sep)
        for fn in sorted(files):
            if not fn.endswith('.py'):
                continue
            stem = fn[:-3]
            name = '.'.join([PACKAGE, *parts] + ([] if stem == '__init__' else [stem]))
            mods[name] = os.path.join(dirpath, fn)
    return mods


def _imports(name, path, known):
    """Return the core modules that ``name`` imports anywhere in its file (functions too)."""
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), filename=path)
    is_pkg = path.endswith('__init__.py')
    out = set()

    def add(target):
        # `import a.b.c` needs a.b.c; the deepest known core module that the name starts with.
        while target and target not in known:
            target = target.rpartition('.')[0]
        if target and target != name:
            out.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:  # relative: resolve against this module's package
                pkg = name if is_pkg else name.rpartition('.')[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition('.')[0]
                base = f'{pkg}.{base}' if base else pkg
            if not base.startswith(PACKAGE):
                continue
            for alias in node.names:
                sub = f'{base}.{alias.name}'
                add(sub if sub in known else base)  # `from pkg import module` or a name
    return out


def _find_cycle(graph):
    """Return one cycle as a list of names (first == last), or None when the graph is acyclic."""
    state = {}  # 1: on the current path, 2: done
    stack = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def core_import_graph():
    """Return ``{module: set of core modules it imports}`` for the whole core."""
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def test_graph_parser_sees_function_level_and_relative_imports(tmp_path):
    code = ('from sage_irp_ros.core.loop import refine\n'
            'import sage_irp_ros.core.trust as t\n'
            'from . import budget\n'
            'from .plugin import Schedule\n'
            'def f():\n'
            '    from sage_irp_ros.core import telemetry, RunInfo\n')
    path = tmp_path / 'x.py'
    path.write_text(code)
    known = {PACKAGE, *(f'{PACKAGE}.{m}' for m in ('loop', 'trust', 'budget', 'plugin',
                                                     'telemetry', 'x'))}
    assert _imports(f'{PACKAGE}.x', str(path), known) == {
        f'{PACKAGE}.{m}' for m in ('loop', 'trust', 'budget', 'plugin', 'telemetry')} | {PACKAGE}
    assert _find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert _find_cycle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) is None


def test_core_imports_form_no_circle():
    graph = core_import_graph()
    assert f'{PACKAGE}.loop' in graph and f'{PACKAGE}.plugin' in graph
    assert f'{PACKAGE}.plugin' in graph[f'{PACKAGE}.loop']  # the parser sees real edges
    cycle = _find_cycle(graph)
    assert cycle is None, 'import circle in the core: ' + ' -> '.join(cycle)


def test_importing_the_core_loads_no_ros():
    code = ('import sys, sage_irp_ros.core; '
            'bad = sorted(m for m in sys.modules if m == "rclpy" or m.startswith(("rclpy.", '
            '"rosidl", "std_msgs", "sage_irp_ros.msg", "sage_irp_ros.ros"))); '
            'print(bad); sys.exit(1 if bad else 0)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
