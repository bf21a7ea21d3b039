"""Control plugin benchmark: paths on held-out maps against A*, A* + smoother and IPOPT.

``python bench/control_bench.py`` (``make bench``) writes ``out/bench/control.json`` and PNGs
next to it (``control_pareto_*.png``, ``control_budget.png``, ``control_examples.png``).

Problems (``sage_irp_ros/plugins/control/maps.py``): the ``held_out`` split (seeds never used
for tuning; settings were chosen on ``dev``), four kinds (random obstacle fields, corridors,
rooms with doors, mazes), 100x100, 200x200 and 400x400 cells at 5 cm; a start/goal pair is used
only when A* on the configuration space connects it. One run per problem, batch 1, one torch
thread, the map's distance field computed inside the run (no cache from an earlier run).

Methods, all judged by the same check (``grid.path_metrics``: clearance 0.1 m, curvature <= 4
1/m, segments <= 0.2 m, ends at the start and goal):

- ``astar``: A* on the configuration space (plain Python); its length is the reference;
- ``astar_smoother``: A*, then Nav2's SimpleSmoother algorithm (``baselines.py``);
- ``ipopt``: IPOPT (casadi) on the plugin's own energy and constraints from the straight line
  (``--ipopt-n`` problems per kind, 200x200 only; ``--no-ipopt`` skips it);
- ``irp``: the control plugin, default settings, through ``core.loop.refine``.

Per method and kind: feasible (success) rate, length / A* length, minimum clearance, mean
curvature, time to halt and to the first feasible path (median, p99), steps. The 200x200 rows
of all kinds together are the headline (``overall_200``), with the keys the issue asks for.

Pareto (``core/pareto.py``, 200x200 problems): fixed step counts ``k = 0..--k-max`` against
adaptive halting with ``flat_tol`` swept, for two qualities: the feasible rate, and the
*path score*: per problem ``feasible * (A* length / length) / (1 + mean curvature /
max_curvature)`` (shorter and smoother is better; 0 when infeasible), averaged.
``adaptive_gain_compute`` (the headline) is the path-score one, in steps.

Success against time budget: a run stopped by a deadline returns its best path, which is
feasible when a feasible one was reached in time, so the rate at budget ``b`` is the share of
problems whose time to first feasible is ``<= b`` (for the baselines: whose whole time is).
"""

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter, defaultdict

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sage_irp_ros.core import pareto  # noqa: E402
from sage_irp_ros.core.loop import refine  # noqa: E402
from sage_irp_ros.plugins.control import baselines, maps  # noqa: E402
from sage_irp_ros.plugins.control.grid import path_metrics  # noqa: E402
from sage_irp_ros.plugins.control.plugin import ControlIRP, ControlProblem  # noqa: E402

BUDGETS_MS = (2, 5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 500, 1000, 5000)


def pct(xs, q):
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    return round(float(np.percentile(xs, q)), 3) if xs else None


def fresh(grid):
    grid._cache.clear()  # the distance field is computed inside each timed run
    return grid


def row(method, kind, size, p, metrics, time_ms, first_ms=None, steps=None, extra=None):
    r = {'method': method, 'kind': kind, 'size': size, 'problem': p.name,
         'feasible': bool(metrics['feasible']), 'violations': metrics['violations'],
         'length_ratio_astar': metrics['length'] / p.astar_length,
         'min_clearance': metrics['min_clearance'], 'mean_curvature': metrics['mean_curvature'],
         'max_curvature': metrics['max_curvature'], 'time_ms': time_ms,
         'first_feasible_ms': first_ms if metrics['feasible'] else None, 'steps': steps}
    r.update(extra or {})
    return r


def run_irp(plugin, p):
    fresh(p.grid)
    res = refine(plugin, ControlProblem(p.grid, tuple(p.start), tuple(p.goal)),
                 config=plugin.halt_config())
    tr, out = res.trace, res.output
    first = None
    if out.first_feasible_step is not None:
        init_ms = tr.time_ms - sum(tr.step_ms)
        first = init_ms + sum(tr.step_ms[:out.first_feasible_step])
    return row('irp', p.kind, p.size, p, out.metrics, tr.time_ms, first, tr.steps,
               {'halt_reason': tr.halt_reason})


def run_astar(plugin, p):
    fresh(p.grid)
    t = time.perf_counter()
    path = baselines.astar_path(p.grid, p.start, p.goal, plugin.limits.clearance)
    t_a = (time.perf_counter() - t) * 1e3
    m = path_metrics(p.grid, path, plugin.limits, p.start, p.goal)
    r_a = row('astar', p.kind, p.size, p, m, t_a, t_a)
    t = time.perf_counter()
    sm = baselines.simple_smoother(path, p.grid, plugin.limits.clearance)
    t_s = t_a + (time.perf_counter() - t) * 1e3
    m = path_metrics(p.grid, sm, plugin.limits, p.start, p.goal)
    return r_a, row('astar_smoother', p.kind, p.size, p, m, t_s, t_s)


def run_ipopt(plugin, p, max_cpu_s):
    fresh(p.grid)
    t = time.perf_counter()
    n = baselines.n_points_for(p.astar_length, plugin.spacing)
    path, info = baselines.ipopt_path(p.grid, p.start, p.goal, plugin.limits, n,
                                      margin=plugin.margin, w_obs=plugin.w_obs,
                                      max_cpu_s=max_cpu_s)
    t_i = (time.perf_counter() - t) * 1e3
    m = path_metrics(p.grid, path, plugin.limits, p.start, p.goal)
    return row('ipopt', p.kind, p.size, p, m, t_i, t_i, info['iterations'],
               {'solver_status': info['solver_status'], 'build_ms': info['build_ms']})


def summarize(rows):
    if not rows:
        return None
    feas = [r for r in rows if r['feasible']]
    steps = [r['steps'] for r in rows if r['steps'] is not None]
    out = {
        'n': len(rows),
        'feasible_rate': round(len(feas) / len(rows), 4),
        'time_ms_median': pct([r['time_ms'] for r in rows], 50),
        'time_ms_p99': pct([r['time_ms'] for r in rows], 99),
        'first_feasible_ms_median': pct([r['first_feasible_ms'] for r in feas], 50),
        'first_feasible_ms_p99': pct([r['first_feasible_ms'] for r in feas], 99),
        # Length, clearance and curvature of the feasible paths (all paths in *_all).
        'length_ratio_astar': pct([r['length_ratio_astar'] for r in feas], 50),
        'length_ratio_astar_mean': (round(float(np.mean([r['length_ratio_astar']
                                                          for r in feas])), 4)
                                    if feas else None),
        'length_ratio_astar_max': (round(float(np.max([r['length_ratio_astar']
                                                        for r in feas])), 4)
                                   if feas else None),
        'length_ratio_astar_all': pct([r['length_ratio_astar'] for r in rows], 50),
        'min_clearance_min': round(float(min(r['min_clearance'] for r in rows)), 4),
        'min_clearance_median': pct([r['min_clearance'] for r in rows], 50),
        'mean_curvature': round(float(np.mean([r['mean_curvature'] for r in rows])), 4),
        'steps_mean': round(float(np.mean(steps)), 3) if steps else None,
        'steps_max': int(max(steps)) if steps else None,
        'violations': dict(Counter(v for r in rows for v in r['violations'])),
    }
    halts = Counter(r['halt_reason'] for r in rows if 'halt_reason' in r)
    if halts:
        out['halt_reasons'] = dict(halts)
    status = Counter(r['solver_status'] for r in rows if 'solver_status' in r)
    if status:
        out['solver_status'] = dict(status)
    return out


def path_score(out, truth, kmax):
    m = out.metrics
    if not m['feasible']:
        return 0.0
    return (truth.astar_length / max(m['length'], 1e-9)) / (1.0 + m['mean_curvature'] / kmax)


def run_pareto(plugin, probs, k_max, out_dir):
    items = [pareto.Item(ControlProblem(p.grid, tuple(p.start), tuple(p.goal)), p)
             for p in probs]
    kmax = plugin.limits.max_curvature
    cfg = plugin.halt_config()

    def variant(flat_tol):
        return ControlIRP(flat_tol=flat_tol)

    default = f'feasible, flat_tol={plugin.flat_tol:g} (default)'
    adaptive = {default: (cfg, {'flat_tol': plugin.flat_tol}, plugin)}
    for ft in (5e-2, 2e-2, 1e-2, 2e-3, 1e-3, 3e-4):
        adaptive[f'feasible, flat_tol={ft:g}'] = (cfg, {'flat_tol': ft}, variant(ft))
    figures = {}
    qualities = {
        'path_score': (lambda o, s, t: path_score(o, t, kmax), 'path score'),
        'feasible_rate': (lambda o, s, t: float(o.metrics['feasible']), 'feasible rate'),
    }
    for name, (item_score, label) in qualities.items():
        def quality(outs, states, truths, item_score=item_score):
            return float(np.mean([item_score(o, None, t) for o, t in
                                  zip(outs, truths, strict=True)]))
        summary, fixed, ad = pareto.sweep(plugin, items, quality, item_score, k_max, adaptive,
                                          default)
        png = os.path.join(out_dir, f'control_pareto_{name}.png')
        pareto.plot(png, fixed, ad, default, f'control, 200x200 held-out maps ({len(items)}): '
                    f'{label} vs compute', label)
        summary['pareto_png'] = os.path.basename(png)
        figures[name] = summary
    return figures


def plot_budget(path, rows_by_method):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, rows in rows_by_method.items():
        if not rows:
            continue
        ts = [r['first_feasible_ms'] for r in rows]
        rate = [np.mean([t is not None and t <= b for t in ts]) for b in BUDGETS_MS]
        ax.plot(BUDGETS_MS, rate, '-o', ms=3, label=f'{method} (n={len(rows)})')
    ax.set(xscale='log', xlabel='time budget per problem, ms (batch 1, this CPU)',
           ylabel='feasible within budget', title='control, 200x200 held-out maps: success '
                                                  'vs time budget')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_examples(path, plugin, probs):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    picks = []
    for kind in maps.KINDS:
        picks += [p for p in probs if p.kind == kind][:1]
    fig, axes = plt.subplots(1, len(picks), figsize=(3.6 * len(picks), 3.8), squeeze=False)
    p_iter = ControlIRP(keep_iterates=True)
    for ax, p in zip(axes[0], picks, strict=True):
        res = refine(p_iter, ControlProblem(p.grid, tuple(p.start), tuple(p.goal)),
                     config=p_iter.halt_config())
        w, h = p.grid.extent
        ax.imshow(p.grid.blocked, origin='lower', cmap='Greys', extent=(0, w, 0, h))
        a = np.asarray(p.grid.center_of(np.asarray(p.astar_cells)))
        ax.plot(a[:, 0], a[:, 1], '-', color='tab:orange', lw=0.8, label='A*')
        for i, it in enumerate(res.output.iterates[:-1]):
            ax.plot(it[:, 0], it[:, 1], '-', color='tab:blue', lw=0.5,
                    alpha=0.2 + 0.5 * i / max(1, len(res.output.iterates)))
        q = res.output.path
        ax.plot(q[:, 0], q[:, 1], '-', color='tab:red', lw=1.4, label='IRP')
        ax.set_title(f'{p.name}: {res.trace.steps} steps, '
                     f'{"feasible" if res.output.feasible else "INFEASIBLE"}', fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--split', default='held_out', choices=tuple(maps.SPLITS))
    ap.add_argument('--n200', type=int, default=25, help='problems per kind at 200x200')
    ap.add_argument('--n-other', type=int, default=6, help='problems per kind at 100 and 400')
    ap.add_argument('--sizes', default='100,200,400')
    ap.add_argument('--ipopt-n', type=int, default=10, help='IPOPT problems per kind (200)')
    ap.add_argument('--ipopt-cpu-s', type=float, default=5.0)
    ap.add_argument('--no-ipopt', action='store_true')
    ap.add_argument('--k-max', type=int, default=20, help='largest fixed k of the Pareto')
    ap.add_argument('--no-pareto', action='store_true')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--out', default=os.path.join(ROOT, 'out', 'bench', 'control.json'))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    sizes = [int(s) for s in args.sizes.split(',') if s]
    probs = {}
    for size in sizes:
        n = args.n200 if size == 200 else args.n_other
        probs[size] = maps.problems(args.split, sizes=(size,), n=n)
        print(f'{size}x{size}: {len(probs[size])} problems', flush=True)
    plugin = ControlIRP()
    warm = next(iter(probs.values()))[0]
    run_irp(plugin, warm)  # imports and first-call costs out of the timings
    rows = []
    for size in sizes:
        for i, p in enumerate(probs[size]):
            rows.append(run_irp(plugin, p))
            rows.extend(run_astar(plugin, p))
            if size == 200 and not args.no_ipopt and \
                    sum(q.kind == p.kind for q in probs[size][:i + 1]) <= args.ipopt_n:
                rows.append(run_ipopt(plugin, p, args.ipopt_cpu_s))
        print(f'{size}x{size} done ({time.time() - t0:.0f} s)', flush=True)
    methods = ('irp', 'astar_smoother', 'ipopt', 'astar')
    table = defaultdict(dict)
    for m in methods:
        for size in sizes:
            for kind in (*maps.KINDS, 'all'):
                sel = [r for r in rows if r['method'] == m and r['size'] == size
                       and (kind == 'all' or r['kind'] == kind)]
                s = summarize(sel)
                if s is not None:
                    table[m][f'{kind}_{size}'] = s
    overall = {}
    if 200 in sizes:
        head = table['irp']['all_200']
        overall = {k: head[k] for k in ('feasible_rate', 'time_ms_median', 'time_ms_p99',
                                        'length_ratio_astar', 'first_feasible_ms_median',
                                        'first_feasible_ms_p99', 'min_clearance_min',
                                        'mean_curvature', 'steps_mean', 'n')}
        overall['per_kind'] = {k: table['irp'][f'{k}_200'] for k in maps.KINDS}
        overall['baselines'] = {
            m: {'all': table[m].get('all_200'),
                'per_kind': {k: table[m].get(f'{k}_200') for k in maps.KINDS}}
            for m in methods[1:] if 'all_200' in table[m]}
        plot_budget(os.path.join(out_dir, 'control_budget.png'),
                    {m: [r for r in rows if r['method'] == m and r['size'] == 200]
                     for m in methods})
        plot_examples(os.path.join(out_dir, 'control_examples.png'), plugin, probs[200])
        rates = {}
        for m in methods:
            sel = [r for r in rows if r['method'] == m and r['size'] == 200]
            if sel:
                rates[m] = {str(b): round(float(np.mean([
                    r['first_feasible_ms'] is not None and r['first_feasible_ms'] <= b
                    for r in sel])), 4) for b in BUDGETS_MS}
        overall['success_vs_budget_ms'] = rates
        if not args.no_pareto:
            t = time.time()
            fig = run_pareto(plugin, probs[200], args.k_max, out_dir)
            overall['pareto'] = fig
            overall['adaptive_gain_compute'] = fig['path_score']['adaptive_gain_compute']
            overall['adaptive_gain_compute_feasible_rate'] = \
                fig['feasible_rate']['adaptive_gain_compute']
            overall['pareto_quality'] = 'path_score'
            print(f'pareto done ({time.time() - t:.0f} s)', flush=True)
    floors = {}
    if overall:
        floors = {
            'feasible_rate>=0.95': overall['feasible_rate'] >= 0.95,
            'time_ms_median<=50': overall['time_ms_median'] <= 50,
            'time_ms_p99<=150': overall['time_ms_p99'] <= 150,
            'length_ratio_astar<=1.15': (overall['length_ratio_astar'] is not None
                                         and overall['length_ratio_astar'] <= 1.15),
        }
        if overall.get('adaptive_gain_compute') is not None:
            floors['adaptive_gain_compute>=1.5'] = overall['adaptive_gain_compute'] >= 1.5
    result = {
        'command': 'python ' + ' '.join(sys.argv),
        'split': args.split, 'sizes': sizes, 'resolution_m': maps.RESOLUTION,
        'limits': vars(plugin.limits), 'spacing_m': plugin.spacing, 'margin_m': plugin.margin,
        'halt': vars(plugin.halt_config()), 'flat_tol': plugin.flat_tol,
        'machine': {'platform': platform.platform(), 'processor': platform.processor(),
                    'torch_threads': torch.get_num_threads(), 'cpus': os.cpu_count()},
        **overall, 'floors': floors, 'table': table, 'rows': rows,
        'wall_s': round(time.time() - t0, 1),
    }
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1, default=float)
        f.write('\n')
    print_table(table, sizes)
    print(json.dumps({k: result.get(k) for k in ('feasible_rate', 'time_ms_median',
                                                 'time_ms_p99', 'length_ratio_astar',
                                                 'adaptive_gain_compute',
                                                 'adaptive_gain_compute_feasible_rate',
                                                 'floors')}, indent=1))
    print(f'wrote {args.out} ({result["wall_s"]} s)')


def print_table(table, sizes):
    cols = ('method', 'set', 'n', 'feasible', 'ms med', 'ms p99', '1st feas med', 'len/A*',
            'min clear', 'mean curv', 'steps')
    print(' | '.join(cols))
    for m, rows in table.items():
        for key, s in rows.items():
            print(' | '.join(str(v) for v in (
                m, key, s['n'], s['feasible_rate'], s['time_ms_median'], s['time_ms_p99'],
                s['first_feasible_ms_median'], s['length_ratio_astar'],
                s['min_clearance_min'], s['mean_curvature'], s['steps_mean'])))


if __name__ == '__main__':
    main()
