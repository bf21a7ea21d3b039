"""Managed (lifecycle) nodes: the base of every sage_irp_ros node, and a small manager.

Every node of the package is an rclpy ``LifecycleNode`` (ROS 2 Humble API), as ROS 2 users
expect of GPU nodes:

- *unconfigured*: parameters declared, nothing loaded;
- ``configure``: load the model and create the publishers;
- ``activate``: subscribe, take grants, refine;
- ``deactivate``: stop subscriptions and the worker, release GPU memory;
- ``cleanup``: drop the model and the publishers.

A transition that fails returns failure (the node logs why and stays where it was); an invalid
transition is refused by the state machine; neither raises. With the parameter ``autostart``
(default true) the node configures and activates itself at start-up: a plain node. With
``autostart:=false`` it waits in *unconfigured* for a manager: ``ros2 lifecycle set``, or
``sage_irp_lifecycle_manager`` (:class:`LifecycleManager`), which the launch file starts with
``managed:=true``.
"""

from __future__ import annotations

import time
from typing import Any, List, Optional

import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.node import Node

SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE


class StartError(RuntimeError):
    """A node that starts itself (``autostart``) could not configure or activate."""


class ManagedNode(LifecycleNode):
    """A lifecycle node with the ``autostart`` parameter and failure-safe transitions.

    Subclasses implement ``configure_node``, ``activate_node``, ``deactivate_node`` and
    ``cleanup_node`` (plain methods that may raise: an exception becomes a logged failure and
    the partial work is undone), declare their parameters in ``__init__`` and call
    :meth:`autostart` at its end.
    """

    def __init__(self, node_name: str, **kwargs: Any):
        """Create the node and declare ``autostart``."""
        super().__init__(node_name, **kwargs)
        self.declare_parameter('autostart', True, ParameterDescriptor(
            description='Configure and activate at start-up (false: wait for a lifecycle '
                        'manager)', read_only=True))
        self.last_transition_error = ''

    # -------------------------------------------------------------------- subclass hooks

    def configure_node(self) -> None:
        """Load what the node needs (the model) and create its publishers."""

    def activate_node(self) -> None:
        """Start subscriptions, timers and workers."""

    def deactivate_node(self) -> None:
        """Stop subscriptions, timers and workers (must not raise when half-active)."""

    def cleanup_node(self) -> None:
        """Drop what configure created (must not raise when half-configured)."""

    # ------------------------------------------------------------------- state machine

    @property
    def lifecycle_state(self) -> str:
        """Label of the current state: unconfigured, inactive, active, finalized, ..."""
        return self._state_machine.current_state[1]

    def _guarded(self, what: str, work, undo) -> TransitionCallbackReturn:
        t0 = time.perf_counter()
        try:
            work()
        except Exception as exc:  # noqa: BLE001 - a failed transition must never raise
            self.last_transition_error = f'{what} failed: {exc}'
            self.get_logger().error(self.last_transition_error)
            try:
                undo()
            except Exception as undo_exc:  # noqa: BLE001
                self.get_logger().error(f'undoing a failed {what}: {undo_exc!r}')
            return FAILURE
        self.last_transition_error = ''
        self.get_logger().debug(f'{what} took {(time.perf_counter() - t0) * 1e3:.1f} ms')
        return SUCCESS

    def on_configure(self, state) -> TransitionCallbackReturn:
        """Run ``configure_node``; undo with ``cleanup_node`` when it fails."""
        ret = self._guarded('configure', self.configure_node, self.cleanup_node)
        if ret == SUCCESS:
            self.warn_unknown_parameters()
        return ret

    def unknown_parameters(self) -> List[str]:
        """Names a parameter file or ``-p`` sets for this node that it never declared."""
        given = getattr(self, '_parameter_overrides', None) or {}
        return sorted(n for n in given if not self.has_parameter(n)
                      and not n.startswith('qos_overrides.'))

    def warn_unknown_parameters(self) -> None:
        """Log the parameters given to this node that it does not have (a misspelled key)."""
        unknown = self.unknown_parameters()
        if unknown:
            self.get_logger().warning(
                f'ignoring parameter(s) this node does not have: {", ".join(unknown)} '
                '(misspelled? `ros2 param list` shows the real ones)')

    def on_activate(self, state) -> TransitionCallbackReturn:
        """Run ``activate_node``; undo with ``deactivate_node`` when it fails."""
        ret = self._guarded('activate', self.activate_node, self.deactivate_node)
        return super().on_activate(state) if ret == SUCCESS else ret

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        """Run ``deactivate_node``."""
        ret = self._guarded('deactivate', self.deactivate_node, lambda: None)
        return super().on_deactivate(state) if ret == SUCCESS else ret

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        """Run ``cleanup_node``."""
        return self._guarded('cleanup', self.cleanup_node, lambda: None)

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        """Tidy up from whatever state the node was in."""
        self._tidy()
        return SUCCESS

    def on_error(self, state) -> TransitionCallbackReturn:
        """Tidy up and go back to unconfigured."""
        self._tidy()
        return SUCCESS

    def _tidy(self) -> None:
        for step in (self.deactivate_node, self.cleanup_node):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - tidying must not raise
                self.get_logger().error(f'tidying up: {exc!r}')

    def autostart(self) -> None:
        """Configure and activate when ``autostart`` is true; raise :class:`StartError` if not."""
        if not self.get_parameter('autostart').value:
            self.get_logger().info('waiting for a lifecycle manager (autostart is false)')
            return
        if self.trigger_configure() != SUCCESS or self.trigger_activate() != SUCCESS:
            raise StartError(f'{self.get_fully_qualified_name()} could not start: '
                             f'{self.last_transition_error or "see the log"}')

    def destroy_node(self) -> None:
        """Stop and tidy (deactivate, cleanup) before destroying the node."""
        self._tidy()
        super().destroy_node()


class LifecycleManager(Node):
    """Brings managed nodes to *active*: configure all in order, then activate all.

    Parameters: ``node_names`` (fully qualified or relative names, in start order),
    ``transition_timeout_s``. :meth:`bring_up` returns True when every node is active.
    """

    def __init__(self, node_name: str = 'sage_irp_lifecycle_manager', **kwargs: Any):
        """Declare the parameters."""
        super().__init__(node_name, **kwargs)
        self.declare_parameter('node_names', [''], ParameterDescriptor(
            description='Managed nodes to bring to active, in start order', read_only=True))
        self.declare_parameter('transition_timeout_s', 60.0, ParameterDescriptor(
            description='Longest wait for a node\'s lifecycle service or transition, s'))

    def _names(self) -> List[str]:
        return [n for n in self.get_parameter('node_names').value if n]

    def _call(self, srv_type, name: str, request, timeout: float):
        cli = self.create_client(srv_type, name)
        try:
            if not cli.wait_for_service(timeout_sec=timeout):
                return None
            future = cli.call_async(request)
            executor = SingleThreadedExecutor(context=self.context)
            try:
                rclpy.spin_until_future_complete(self, future, executor=executor,
                                                 timeout_sec=timeout)
            finally:
                executor.shutdown()
            return future.result() if future.done() else None
        finally:
            self.destroy_client(cli)

    def state_of(self, node: str, timeout: Optional[float] = None) -> Optional[str]:
        """Return the lifecycle state label of ``node`` (None when it does not answer)."""
        t = timeout or self.get_parameter('transition_timeout_s').value
        r = self._call(GetState, f'{node}/get_state', GetState.Request(), t)
        return None if r is None else r.current_state.label

    def transition(self, node: str, transition_id: int) -> bool:
        """Ask ``node`` for a transition; return True when it succeeded."""
        t = self.get_parameter('transition_timeout_s').value
        r = self._call(ChangeState, f'{node}/change_state',
                       ChangeState.Request(transition=Transition(id=transition_id)), t)
        return bool(r is not None and r.success)

    def bring_up(self) -> bool:
        """Configure every node, then activate every node; log and stop at a failure."""
        names = self._names()
        for tid, label, wanted in ((Transition.TRANSITION_CONFIGURE, 'configure', 'inactive'),
                                   (Transition.TRANSITION_ACTIVATE, 'activate', 'active')):
            for node in names:
                state = self.state_of(node)
                if state is None:
                    self.get_logger().error(f'{node} does not answer on {node}/get_state')
                    return False
                if state == wanted or (wanted == 'inactive' and state == 'active'):
                    continue
                if not self.transition(node, tid):
                    self.get_logger().error(f'{node}: {label} failed (state {state}); see its '
                                            'log')
                    return False
                self.get_logger().info(f'{node}: {label}d')
        return True


def manager_main(args=None) -> int:
    """Run the lifecycle manager: bring the nodes up, exit 0 on success, 1 on failure."""
    rclpy.init(args=args)
    node = LifecycleManager()
    try:
        ok = node.bring_up()
        if ok:
            node.get_logger().info(f'all {len(node._names())} managed nodes are active')
        return 0 if ok else 1
    except KeyboardInterrupt:
        return 130
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
