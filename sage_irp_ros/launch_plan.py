"""What ``launch/sage_irp.launch.py`` starts, worked out from the registry (ROS-free, testable).

``ros2 launch`` is a thin shell around :func:`plan`: it turns the launch arguments into a list
of :class:`NodeAction` (executable, node name, parameter files, arguments) and writes the
per-node overrides (device, precision, autostart) to a parameter file of their own, keyed by
node name, so each node gets its own values also when every node shares one process
(``composed:=true``).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import yaml

from sage_irp_ros import registry

PACKAGE = 'sage_irp_ros'
ORCHESTRATOR = ('orchestrator_node', 'orchestrator_node')  # (executable, node name)
COMPOSED = 'sage_irp_all'
MANAGER = ('sage_irp_lifecycle_manager', 'sage_irp_lifecycle_manager')
#: The plugin whose presence turns the others' ``memory`` on (mailbox composed, else topic).
MEMORY_PLUGIN = 'memory'


@dataclass
class NodeAction:
    """One process to start: ``ros2 run sage_irp_ros <executable>`` with these settings."""

    executable: str
    name: Optional[str]
    parameters: List[object] = field(default_factory=list)  # files and dicts, in order
    arguments: List[str] = field(default_factory=list)


@dataclass
class Plan:
    """The processes to start, the per-node overrides, and notes to log at launch."""

    actions: List[NodeAction]
    overrides: Dict[str, Dict[str, object]]  # node name -> parameters
    notes: List[str]


def plugin_settings(names: List[str], device: str, precision: str,
                    per_plugin: Mapping[str, Tuple[str, str]]) -> Tuple[Dict, List[str]]:
    """Return ``{plugin: (device, precision)}`` and notes for the plugins ``names``.

    ``device``/``precision`` apply to every plugin that supports them; ``per_plugin`` gives a
    plugin its own (empty strings: the common value). A plugin that cannot use the device or
    precision gets cpu / fp32, with a note. Whether CUDA exists is the node's to check (it
    falls back with a warning), not the launch file's.
    """
    out, notes = {}, []
    for name in names:
        spec = registry.get(name)
        own_dev, own_prec = per_plugin.get(name, ('', ''))
        dev, prec = own_dev or device, own_prec or precision
        res_dev, res_prec, why = registry.resolve_device(spec, dev, prec, cuda_available=True)
        notes += [f'{name}: {w}' for w in why]
        out[name] = (res_dev, res_prec)
    return out, notes


def plan(plugins: str, *, config: str, device: str = 'cpu', precision: str = 'fp32',
         per_plugin: Optional[Mapping[str, Tuple[str, str]]] = None, composed: bool = False,
         orchestrator: bool = True, managed: bool = False,
         overrides_path: Optional[str] = None) -> Plan:
    """Work out the nodes of a launch; see ``launch/sage_irp.launch.py`` for the arguments."""
    names = registry.parse_list(plugins)
    if not names:
        raise ValueError(f'no plugin named in plugins:={plugins!r}; registered: '
                         f'{", ".join(registry.names())}')
    settings, notes = plugin_settings(names, device, precision, per_plugin or {})
    overrides: Dict[str, Dict[str, object]] = {}
    for name in names:
        spec = registry.get(name)
        dev, prec = settings[name]
        overrides[spec.node_name] = {'device': dev, 'precision': prec}
    if MEMORY_PLUGIN in names:  # the others remember: in process, or on irp/experience
        for name in names:
            if name != MEMORY_PLUGIN:
                overrides[registry.get(name).node_name]['memory'] = (
                    'mailbox' if composed else 'topic')
    if orchestrator:
        overrides.setdefault(ORCHESTRATOR[1], {})
    if managed:
        for params in overrides.values():
            params['autostart'] = False
    path = overrides_path or os.path.join(tempfile.mkdtemp(prefix='sage_irp_launch_'),
                                          'overrides.yaml')
    write_overrides(path, overrides)
    files = [config, path]
    actions: List[NodeAction] = []
    if composed:
        args = ['--plugins', ','.join(names)]
        if not orchestrator:
            args.append('--no-orchestrator')
        actions.append(NodeAction(COMPOSED, None, list(files), args))
    else:
        if orchestrator:
            actions.append(NodeAction(ORCHESTRATOR[0], ORCHESTRATOR[1], list(files)))
        for name in names:
            spec = registry.get(name)
            actions.append(NodeAction(spec.executable, spec.node_name, list(files)))
    if managed:
        order = ([ORCHESTRATOR[1]] if orchestrator else []) + [
            registry.get(n).node_name for n in names]
        actions.append(NodeAction(MANAGER[0], MANAGER[1], [{'node_names': order}]))
    return Plan(actions, overrides, notes)


def write_overrides(path: str, overrides: Mapping[str, Mapping[str, object]]) -> None:
    """Write per-node parameters as a ROS 2 parameter file (keys match in any namespace)."""
    doc = {f'/**/{node}': {'ros__parameters': dict(params)}
           for node, params in overrides.items()}
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(doc, f, sort_keys=True)
