"""``control_irp_node``: paths on an occupancy grid, refined until feasible (the control plugin).

Inputs (``config/sage_irp.yaml``, section ``control_irp_node``):

- ``map_topic`` (default ``map``): ``nav_msgs/OccupancyGrid``, latched (transient local, as
  ``map_server`` publishes it); kept, a new map is used by the next goal;
- the start: ``start_topic`` (``geometry_msgs/PoseStamped``, default ``start_pose``) when
  ``start_source`` is ``pose`` (default), or ``odom_topic`` (``nav_msgs/Odometry``, default
  ``odom``) when it is ``odometry``; kept, read by the next goal;
- the goal: ``input_topic`` (default ``goal_pose``; the port is called ``input``, as every
  plugin's triggering input): ``geometry_msgs/PoseStamped``; each goal triggers a run; with
  ``preempt: true`` (the configuration's setting) a new goal cancels the run under way, which
  then publishes its best path so far.

Poses must be in the map's frame (an empty ``frame_id`` counts as the map's); a pose in another
frame, a NaN pose, a pose off the map, an empty map or one whose data does not match its size is
refused: logged, counted as bad input, and answered with a ``PathStatus`` saying why. So are a
start or goal inside an obstacle (or closer to one than ``clearance``) and an unreachable goal.

Outputs, with the map's frame and the goal's stamp:

- ``output_topic`` (``plan``): ``nav_msgs/Path``, the best path of the run (published also when
  it is not feasible: a budget or deadline stopped the run; ``PathStatus.feasible`` says so);
- ``status_topic`` (``plan_status``): ``sage_irp_ros/PathStatus`` (feasible, clearance, length,
  curvature, steps, halt reason);
- ``markers_topic`` (``plan_markers``): ``visualization_msgs/MarkerArray``, the path (green when
  feasible, red when not) and, with ``publish_iterates``, every step's path (faint blue);
- telemetry, as every plugin node does.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Tuple

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion
from nav_msgs.msg import Path
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from sage_irp_ros.msg import PathStatus
from sage_irp_ros.plugins.control.grid import GridMap, MapError
from sage_irp_ros.plugins.control.plugin import (
    STATUS_BAD_INPUT,
    ControlIRP,
    ControlProblem,
    PlanningError,
    PlanResult,
)
from sage_irp_ros.ros.conversions import InputError
from sage_irp_ros.ros.host import IRPNodeHost, descriptor, run_node

START_SOURCES = ('pose', 'odometry')
#: Largest accepted map (cells).
MAX_MAP_CELLS = 4096 * 4096


def yaw_of(q) -> float:
    """Return the yaw (rad) of a ``geometry_msgs/Quaternion``."""
    return math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))


def quaternion_of(yaw: float) -> Quaternion:
    """Return the quaternion of a rotation by ``yaw`` about z."""
    return Quaternion(x=0.0, y=0.0, z=math.sin(0.5 * yaw), w=math.cos(0.5 * yaw))


def grid_from_msg(msg, occupied_threshold: int, unknown_is_occupied: bool) -> GridMap:
    """Decode a ``nav_msgs/OccupancyGrid``; :class:`InputError` when it is unusable."""
    info = msg.info
    w, h = int(info.width), int(info.height)
    if w == 0 or h == 0:
        raise InputError(f'empty map ({w} x {h} cells)')
    if w * h > MAX_MAP_CELLS:
        raise InputError(f'map of {w} x {h} cells is over the limit of {MAX_MAP_CELLS} cells')
    data = np.asarray(msg.data, dtype=np.int8) if not isinstance(msg.data, np.ndarray) \
        else msg.data.astype(np.int8, copy=False)
    if data.size != w * h:
        raise InputError(f'map data has {data.size} cells but width x height is {w} x {h} = '
                         f'{w * h}')
    o = info.origin
    if abs(yaw_of(o.orientation)) > 1e-6 or not math.isclose(
            o.orientation.x ** 2 + o.orientation.y ** 2 + o.orientation.z ** 2
            + o.orientation.w ** 2, 1.0, rel_tol=1e-3):
        raise InputError('map origins with a rotation are not supported (origin yaw '
                         f'{yaw_of(o.orientation):.4f} rad)')
    try:
        return GridMap.from_occupancy(data.reshape(h, w), float(info.resolution),
                                      (float(o.position.x), float(o.position.y)),
                                      msg.header.frame_id, occupied_threshold,
                                      unknown_is_occupied)
    except MapError as exc:
        raise InputError(str(exc)) from exc


class ControlIRPNode(IRPNodeHost):
    """The control plugin behind the node host."""

    plugin_name = 'control'

    def declare_plugin_parameters(self) -> None:
        """Declare the limits, the start source, the map's reading and the markers."""
        p = self.declare_parameter
        p('clearance', 0.1, descriptor('Required distance from the path to any obstacle, m '
                                       '(the robot radius plus a safety margin)',
                                       read_only=True, float_range=(0.0, 100.0)))
        p('max_curvature', 4.0, descriptor('Largest curvature of the path (turning angle per '
                                           'metre), 1/m', read_only=True,
                                           float_range=(1e-3, 1e3)))
        p('max_segment', 0.2, descriptor('Longest segment between two waypoints, m',
                                         read_only=True, float_range=(1e-3, 100.0)))
        p('margin', 0.05, descriptor('Clearance the energy aims for beyond the required one, m',
                                     read_only=True, float_range=(0.0, 100.0)))
        p('start_source', 'pose', descriptor(
            'Where the start comes from: pose (start_topic, PoseStamped) or odometry '
            '(odom_topic, Odometry, in the map frame)', read_only=True))
        p('occupied_threshold', 65, descriptor('Occupancy (percent) from which a cell is an '
                                               'obstacle', read_only=True, int_range=(1, 100)))
        p('unknown_is_occupied', True, descriptor('Unknown cells (-1) are obstacles',
                                                  read_only=True))
        p('publish_iterates', False, descriptor('Markers also show every step\'s path'))
        self._grid_cache: Tuple[Any, Optional[GridMap]] = (None, None)

    def create_plugin(self) -> ControlIRP:
        """Build the plugin with the node's limits on its device."""
        src = self.get_parameter('start_source').value
        if src not in START_SOURCES:
            raise ValueError(f'start_source must be one of {START_SOURCES}, got {src!r}')
        g = self.get_parameter
        return ControlIRP(clearance=g('clearance').value, max_curvature=g('max_curvature').value,
                          max_segment=g('max_segment').value, margin=g('margin').value,
                          device=self.device, keep_iterates=g('publish_iterates').value)

    def create_outputs(self) -> None:
        """Nothing beyond the registry's ports (plan, plan_status, plan_markers)."""

    # ------------------------------------------------------------------- inputs

    def _grid(self, msg) -> GridMap:
        cached_msg, grid = self._grid_cache
        if cached_msg is msg and grid is not None:
            return grid
        grid = grid_from_msg(msg, self.get_parameter('occupied_threshold').value,
                             self.get_parameter('unknown_is_occupied').value)
        self._grid_cache = (msg, grid)
        return grid

    def _pose(self, name: str, msg, frame: str) -> Tuple[Tuple[float, float], float]:
        header = msg.header
        pose = msg.pose.pose if hasattr(msg, 'twist') else msg.pose  # Odometry / PoseStamped
        if header.frame_id not in ('', frame):
            raise InputError(f'{name} is in frame {header.frame_id!r}, the map in {frame!r}: '
                             'poses must be in the map frame')
        x, y = float(pose.position.x), float(pose.position.y)
        q = pose.orientation
        if not all(math.isfinite(v) for v in (x, y, pose.position.z, q.x, q.y, q.z, q.w)):
            raise InputError(f'{name} pose is not finite: ({x}, {y})')
        return (x, y), yaw_of(q)

    def decode_inputs(self, inputs) -> Tuple[Any, Optional[Mapping[str, Any]]]:
        """Map, start and goal -> a checked :class:`ControlProblem` with its seed path."""
        try:
            if 'map' not in inputs.msgs:
                raise InputError('no map yet')
            goal_msg = inputs.msgs.get('input')
            if goal_msg is None:
                raise InputError('no goal yet')
            grid = self._grid(inputs.msgs['map'])
            src = 'start' if self.get_parameter('start_source').value == 'pose' else 'odom'
            if src not in inputs.msgs:
                raise InputError(f'no start yet on {self.get_parameter(f"{src}_topic").value}')
            start, start_yaw = self._pose('start', inputs.msgs[src], grid.frame_id)
            goal, goal_yaw = self._pose('goal', goal_msg, grid.frame_id)
            problem = ControlProblem(grid, start, goal, start_yaw, goal_yaw)
            return self.plugin.prepare(problem), None
        except InputError as exc:
            self._publish_refusal(inputs, STATUS_BAD_INPUT, str(exc))
            raise
        except PlanningError as exc:
            self._publish_refusal(inputs, exc.status, exc.message)
            raise InputError(str(exc)) from exc

    def header_of(self, msg) -> Header:
        """Return the goal's stamp with the map's frame (outputs are in the map frame)."""
        header = super().header_of(msg)
        frame = self._grid_cache[1].frame_id if self._grid_cache[1] is not None else ''
        return Header(stamp=header.stamp, frame_id=frame or header.frame_id)

    def _publish_refusal(self, inputs, status: str, text: str) -> None:
        msg = inputs.msgs.get('input') or inputs.msg
        header = super().header_of(msg) if msg is not None else Header()
        if self._grid_cache[1] is not None:
            header.frame_id = self._grid_cache[1].frame_id
        self.outputs['status'].publish(PathStatus(
            header=header, status=status, feasible=False, message=text,
            min_clearance=float('nan'), required_clearance=self.plugin.limits.clearance,
            length=float('nan'), max_curvature=float('nan'), mean_curvature=float('nan'),
            max_segment=float('nan'), steps=0, halt_reason='', time_ms=0.0))

    # ------------------------------------------------------------------ outputs

    def publish_output(self, output: PlanResult, header: Header, result, x0) -> None:
        """Publish the path, its status and the markers."""
        path = Path(header=header)
        for (x, y), yaw in zip(output.path, output.yaws, strict=True):
            path.poses.append(PoseStamped(header=header, pose=Pose(
                position=Point(x=float(x), y=float(y), z=0.0), orientation=quaternion_of(yaw))))
        self.outputs['output'].publish(path)
        m = output.metrics
        trace = result.trace
        text = ('collision-free with the clearance, within the limits' if output.feasible
                else 'best path found misses: ' + ', '.join(m['violations']))
        self.outputs['status'].publish(PathStatus(
            header=header, status=output.status, feasible=output.feasible, message=text,
            min_clearance=float(m['min_clearance']),
            required_clearance=self.plugin.limits.clearance, length=float(m['length']),
            max_curvature=float(m['max_curvature']), mean_curvature=float(m['mean_curvature']),
            max_segment=float(m['max_segment']), steps=int(trace.steps),
            halt_reason=str(trace.halt_reason), time_ms=float(trace.time_ms)))
        if self.outputs['markers'].get_subscription_count() > 0:
            self.outputs['markers'].publish(self._markers(output, header))

    def _markers(self, output: PlanResult, header: Header) -> MarkerArray:
        arr = MarkerArray()
        arr.markers.append(Marker(header=header, action=Marker.DELETEALL))
        colour = ColorRGBA(r=0.1, g=0.8, b=0.2, a=1.0) if output.feasible else \
            ColorRGBA(r=0.9, g=0.1, b=0.1, a=1.0)
        arr.markers.append(self._line(header, 'path', 0, output.path, colour, 0.03))
        for i, it in enumerate(output.iterates):
            arr.markers.append(self._line(header, 'iterates', i, it,
                                          ColorRGBA(r=0.2, g=0.4, b=1.0, a=0.25), 0.01))
        return arr

    @staticmethod
    def _line(header, ns, mid, pts, colour, width) -> Marker:
        return Marker(header=header, ns=ns, id=mid, type=Marker.LINE_STRIP, action=Marker.ADD,
                      pose=Pose(orientation=Quaternion(w=1.0)), color=colour,
                      scale=_scale(width), lifetime=Duration(sec=0),
                      points=[Point(x=float(x), y=float(y), z=0.02) for x, y in pts])

    def run_metadata(self, output: PlanResult, result) -> Mapping[str, Any]:
        """Report whether the path is feasible, its clearance, length and curvature."""
        m = output.metrics
        return {'feasible': bool(output.feasible), 'status': output.status,
                'min_clearance': round(float(m['min_clearance']), 4),
                'length': round(float(m['length']), 4),
                'max_curvature': round(float(m['max_curvature']), 4),
                'first_feasible_step': output.first_feasible_step}

    def example_input(self):
        """Return a small open map with a start and a goal, to calibrate the step cost."""
        occ = np.zeros((60, 60), np.int8)
        occ[20:40, 25:35] = 100
        grid = GridMap.from_occupancy(occ, 0.05)
        problem = ControlProblem(grid, (0.3, 1.5), (2.7, 1.5))
        return self.plugin.prepare(problem), None


def _scale(width: float):
    from geometry_msgs.msg import Vector3
    return Vector3(x=width, y=0.0, z=0.0)


def main(args=None) -> int:
    """Run the control node."""
    return run_node(ControlIRPNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
