"""``make demo``: replay the sample bag through the real node graph, watch it, score it.

``python -m sage_irp_ros.demo`` (what ``make demo`` runs):

1. picks the plugins from the registry (:mod:`sage_irp_ros.demo.selection`): every plugin that
   is not a test fixture, has a demo, and whose replay topics are in the bag;
2. starts ``orchestrator_node`` and each picked plugin's node, each in its own process with
   ``config/sage_irp.yaml`` (plus a fresh trust file and faster diagnostics), and waits until
   they are up;
3. starts the recorder (:mod:`sage_irp_ros.tools.record`) on the plugins' output topics and the
   telemetry, budget and diagnostics topics;
4. replays the plugins' topics of ``data/sample_bag`` (:mod:`sage_irp_ros.tools.replay`) with
   their original timing, printing progress once a second (per plugin: inputs done, halt
   reasons, ATP);
5. waits until every input is answered or accounted for, stops everything with SIGINT;
6. scores the recorded outputs against the bag's ground truth with each plugin's own ``score``
   hook and writes ``out/demo/``: ``summary.json``, ``telemetry.jsonl`` (every line
   schema-valid), ``output_bag/`` (mcap), PNG plots and the node logs; prints the summary
   table.

It exits 0 only when every stage worked: nodes up, recorder subscribed, every input answered or
counted as dropped (stale) or refused, telemetry valid, clean shutdown. ``--regression`` makes
budgets and deadlines non-binding (the summary then depends on the models and the bag, not on
the machine's load); ``--write-golden`` (implies ``--regression``) also writes the regression
test's golden summary (``test/golden/replay_summary.json``).
Processes run in a private ``ROS_DOMAIN_ID`` (unless one is set), localhost discovery, and the
package's Fast DDS profile ``config/fastdds_camera.xml`` (shared memory with room for camera-size
images, :mod:`sage_irp_ros.transport`) unless a profile of one's own is set.

The parts: ``__main__`` (command line and the run), :mod:`~sage_irp_ros.demo.selection` (which
plugins, which topics), :mod:`~sage_irp_ros.demo.monitor` (the demo's own node),
:mod:`~sage_irp_ros.demo.scoring` (bag, truth, summary, golden),
:mod:`~sage_irp_ros.demo.plots`; child processes are :mod:`sage_irp_ros.tools.procs`'s.
Importing this package imports neither rclpy nor matplotlib.
"""

from sage_irp_ros.demo.monitor import Monitor, progress_line
from sage_irp_ros.demo.plots import plots
from sage_irp_ros.demo.scoring import (
    JsonlSinkCounter,
    expected_inputs,
    format_table,
    golden_of,
    load_truth,
    read_bag,
    sent_inputs,
    summarize,
    write_golden,
)
from sage_irp_ros.demo.selection import (
    COMMON_RECORD_TOPICS,
    demo_specs,
    node_module,
    record_topics,
    replay_topics,
    select_plugins,
)
from sage_irp_ros.tools.procs import ChildProcess, wait

_CLI = ('main', 'parse_args', 'run', 'find_path', 'setup_environment')

__all__ = [
    'COMMON_RECORD_TOPICS', 'ChildProcess', 'JsonlSinkCounter', 'Monitor', 'demo_specs',
    'expected_inputs', 'format_table', 'golden_of', 'load_truth', 'node_module', 'plots',
    'progress_line', 'read_bag', 'record_topics', 'replay_topics', 'select_plugins',
    'sent_inputs', 'summarize', 'wait', 'write_golden', *_CLI,
]


def __getattr__(name):
    """Import the command line's functions (``main``, ``run``, ...) on first use.

    They live in ``__main__``, which ``python -m sage_irp_ros.demo`` runs as a script: importing
    it here eagerly would load it twice.
    """
    if name in _CLI:
        from sage_irp_ros.demo import __main__ as cli
        return getattr(cli, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
