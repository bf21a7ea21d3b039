"""The demo's PNG plots, for any number of plugins (one colour each, from :data:`COLOURS`).

- ``energy_traces.png``: energy per step of every run, one panel per plugin;
- ``steps_per_input.png``: steps per input, one panel per plugin, drawn by the plugin's
  ``plot_steps(ax, records, truth)`` hook (``DemoSpec.plot_steps``), or a bar per run (in
  arrival order) when it has none;
- ``budget_trust.png``: ATP granted per cycle and spent per run; the orchestrator's trust;
- a plugin's own pictures (the plugin-specific convention): when the module of its
  ``plot_steps`` hook (or, without one, of its ``score`` hook) defines
  ``plots(out_dir, recorded, truth, save)``, the demo calls it after the plots above;
  ``save(fig, name)`` writes the figure as ``out_dir/name`` (tight layout, 90 dpi), closes it
  and lists it among the demo's plots (a camera plugin's overlay pictures, for instance).

``recorded`` maps each recorded topic to ``[(receive_ns, msg), ...]``; telemetry records are a
plugin's when their entity is its node.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Dict, List, Sequence

from sage_irp_ros import registry
from sage_irp_ros.registry import PluginSpec

#: Colour cycle of the plugins, in registry order.
COLOURS = ('tab:blue', 'tab:green', 'tab:red', 'tab:purple', 'tab:brown', 'tab:pink',
           'tab:olive', 'tab:cyan', 'tab:orange', 'tab:gray')


def colour_of(i: int) -> str:
    """Return the colour of the ``i``-th plugin."""
    return COLOURS[i % len(COLOURS)]


def extra_plot_modules(spec: PluginSpec) -> List[str]:
    """Return the modules whose ``plots`` function draws the plugin's own pictures."""
    hook = spec.demo.plot_steps or spec.demo.score
    return [hook.partition(':')[0]] if hook else []


def plots(out_dir: str, plugins: Sequence[PluginSpec], recorded: Dict[str, list], truth: dict,
          t0_ns: int) -> List[str]:
    """Write the PNG plots of ``plugins`` into ``out_dir``; return their paths.

    ``t0_ns`` is the time axis' zero (when the demo started recording).
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    records = [(t, json.loads(m.data)) for t, m in recorded.get('/irp/telemetry_json', [])]
    runs = {s.name: [r for _, r in records if r.get('entity_id', '').endswith(f'/{s.node_name}')]
            for s in plugins}
    n = max(1, len(plugins))
    paths: List[str] = []

    def save(fig, name):
        path = os.path.join(out_dir, name)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)

    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4), squeeze=False)
    cmap = plt.get_cmap('viridis')
    for ax, spec in zip(axes[0], plugins, strict=False):
        recs = runs[spec.name]
        for i, r in enumerate(recs):
            ax.plot(range(len(r['E_trace'])), r['E_trace'], '-o', ms=2, lw=0.8,
                    color=cmap(i / max(1, len(recs) - 1)))
        ax.set(title=f'{spec.name}: energy per step ({len(recs)} runs, colour = order)',
               xlabel='step', ylabel='energy E')
    save(fig, 'energy_traces.png')

    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4), squeeze=False)
    for i, (ax, spec) in enumerate(zip(axes[0], plugins, strict=False)):
        recs = runs[spec.name]
        if spec.demo.plot_steps:
            registry.load(spec.demo.plot_steps)(ax, recs, truth)
        else:
            ax.bar(range(len(recs)), [r['steps'] for r in recs], color=colour_of(i))
            ax.set(title=f'{spec.name}: steps per input', xlabel='input (arrival order)',
                   ylabel='steps')
        ax.title.set_fontsize(9)
    save(fig, 'steps_per_input.png')

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for i, spec in enumerate(plugins):
        colour, name, node = colour_of(i), spec.name, f'/{spec.node_name}'
        g = sorted((t, m.cycle, m.atp_granted) for t, m in recorded.get('/irp/budget', [])
                   if m.plugin == node)
        per_cycle = {}  # cycle -> (first grant's time, largest grant)
        for t, cyc, atp in g:
            first_t, most = per_cycle.get(cyc, (t, 0.0))
            per_cycle[cyc] = (first_t, max(atp, most))
        if per_cycle:
            ts, atps = zip(*sorted(per_cycle.values()), strict=True)
            ax1.step([(t - t0_ns) * 1e-9 for t in ts], atps, where='post', color=colour,
                     label=f'{name} granted / cycle')
        spent = [(t, r['budget']['ATP_spent']) for t, r in records
                 if r.get('entity_id', '').endswith(f'/{spec.node_name}')]
        if spent:
            ax1.plot([(t - t0_ns) * 1e-9 for t, _ in spent], [s for _, s in spent], 'x',
                     color=colour, label=f'{name} spent / run')
        trust = []
        for t, arr in recorded.get('/diagnostics', []):
            for st in arr.status:
                if st.name == f'{node}: allocation':
                    vals = {kv.key: kv.value for kv in st.values}
                    trust.append(((t - t0_ns) * 1e-9, float(vals['trust'])))
        if trust:
            ax2.plot(*zip(*trust, strict=True), '-o', ms=3, color=colour, label=name)
    ax1.set(ylabel='ATP', title='budget: ATP granted per cycle and spent per run')
    ax2.set(xlabel='time since the demo started recording, s', ylabel='trust',
            title='trust (orchestrator)')
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    save(fig, 'budget_trust.png')

    done = set()
    for spec in plugins:
        for module_name in extra_plot_modules(spec):
            if module_name in done:
                continue
            done.add(module_name)
            hook = getattr(importlib.import_module(module_name), 'plots', None)
            if callable(hook):
                hook(out_dir, recorded, truth, save)
    return paths
