"""Control node in process: map, start and goal in; path, status and markers out; bad input."""

import math

import numpy as np
import pytest
from conftest import wait_for
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import OccupancyGrid, Odometry, Path
from rclpy.parameter import Parameter
from visualization_msgs.msg import MarkerArray

from sage_irp_ros.msg import PathStatus
from sage_irp_ros.plugins.control.node import ControlIRPNode

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def grid_msg(occ, res=0.05, frame='map', origin=(0.0, 0.0)):
    m = OccupancyGrid()
    m.header.frame_id = frame
    m.info.resolution = res
    m.info.height, m.info.width = occ.shape
    m.info.origin.position.x, m.info.origin.position.y = origin
    m.info.origin.orientation.w = 1.0
    m.data = occ.astype(np.int8).ravel().tolist()
    return m


def pose(x, y, frame='map', stamp=0):
    p = PoseStamped()
    p.header.frame_id = frame
    p.header.stamp.sec = stamp
    p.pose.position.x, p.pose.position.y = x, y
    p.pose.orientation.w = 1.0
    return p


def block_map():
    occ = np.zeros((60, 60), np.int8)
    occ[20:40, 27:33] = 100
    return occ


@pytest.fixture
def node(ros):
    n = ros.add_node(ControlIRPNode(context=ros.context, parameter_overrides=[
        Parameter('preempt', value=True), Parameter('publish_iterates', value=True),
        Parameter('default_atp', value=0.0),  # no orchestrator: unlimited runs
        Parameter('output_topic', value='control/plan'),
        Parameter('status_topic', value='control/plan_status'),
        Parameter('markers_topic', value='control/plan_markers')]))
    yield n
    n.destroy_node()


def test_goal_gets_a_feasible_path_status_and_markers(ros, node):
    paths = ros.collect(Path, '/control/plan')
    status = ros.collect(PathStatus, '/control/plan_status')
    markers = ros.collect(MarkerArray, '/control/plan_markers')
    assert wait_for(lambda: node.outputs['markers'].get_subscription_count() > 0, 5)
    node._on_input('map', grid_msg(block_map(), origin=(1.0, -1.0)))
    node._on_input('start', pose(1.3, 0.5))
    assert node.counters.runs == 0  # map and start are kept, only a goal triggers
    node._on_input('input', pose(3.7, 0.5, stamp=7))
    assert wait_for(lambda: paths and status and markers, 10)
    st = status[0]
    assert st.status == PathStatus.STATUS_FEASIBLE and st.feasible
    assert st.min_clearance >= st.required_clearance == pytest.approx(0.1)
    assert st.max_curvature <= 4.0 * 1.01 and st.steps >= 1 and st.halt_reason == 'feasible'
    path = paths[0]
    assert path.header.frame_id == 'map' and path.header.stamp.sec == 7
    xy = np.array([[p.pose.position.x, p.pose.position.y] for p in path.poses])
    assert np.allclose(xy[0], (1.3, 0.5)) and np.allclose(xy[-1], (3.7, 0.5))
    assert st.length == pytest.approx(np.linalg.norm(np.diff(xy, axis=0), axis=1).sum())
    ns = {m.ns for m in markers[0].markers}
    assert {'path', 'iterates'} <= ns


@pytest.mark.parametrize('case, status, text', [
    ('frame', PathStatus.STATUS_BAD_INPUT, "frame 'odom'"),
    ('nan', PathStatus.STATUS_BAD_INPUT, 'not finite'),
    ('off_map', PathStatus.STATUS_BAD_INPUT, 'off the map'),
    ('in_obstacle', PathStatus.STATUS_GOAL_IN_OBSTACLE, 'inside an obstacle'),
    ('unreachable', PathStatus.STATUS_UNREACHABLE, 'no path'),
    ('empty_map', PathStatus.STATUS_BAD_INPUT, 'empty map'),
    ('mismatched_map', PathStatus.STATUS_BAD_INPUT, 'width x height'),
])
def test_bad_input_is_refused_with_a_status_and_the_node_goes_on(ros, node, case, status,
                                                                 text):
    statuses = ros.collect(PathStatus, '/control/plan_status')
    paths = ros.collect(Path, '/control/plan')
    occ = block_map()
    goal = pose(2.7, 1.5)
    mp = grid_msg(occ)
    if case == 'frame':
        goal = pose(2.7, 1.5, frame='odom')
    elif case == 'nan':
        goal = pose(math.nan, 1.5)
    elif case == 'off_map':
        goal = pose(9.0, 1.5)
    elif case == 'in_obstacle':
        goal = pose(1.5, 1.5)
    elif case == 'unreachable':
        occ[:, 27:33] = 100
        mp = grid_msg(occ)
    elif case == 'empty_map':
        mp = grid_msg(np.zeros((0, 0), np.int8))
    elif case == 'mismatched_map':
        mp.data = mp.data[:-7]
    node._on_input('map', mp)
    node._on_input('start', pose(0.3, 1.5))
    node._on_input('input', goal)
    assert wait_for(lambda: statuses and node.counters.bad_input == 1, 10)
    assert statuses[0].status == status and not statuses[0].feasible
    assert text in statuses[0].message
    assert not paths
    # The node goes on: a good map and goal are answered.
    node._on_input('map', grid_msg(block_map()))
    node._on_input('input', pose(2.7, 1.5))
    # the path and its status travel on two topics: wait for both
    assert wait_for(lambda: paths and len(statuses) >= 2 and statuses[-1].feasible, 10), \
        [st.status for st in statuses]


def test_odometry_start_source(ros):
    n = ros.add_node(ControlIRPNode(context=ros.context, parameter_overrides=[
        Parameter('start_source', value='odometry')]))
    try:
        status = ros.collect(PathStatus, '/plan_status')
        n._on_input('map', grid_msg(block_map()))
        n._on_input('input', pose(2.7, 1.5))  # no odometry yet: refused clearly
        assert wait_for(lambda: status, 10)
        assert 'no start yet' in status[0].message
        odom = Odometry()
        odom.header.frame_id = 'map'
        odom.pose.pose.position.x, odom.pose.pose.position.y = 0.3, 1.5
        odom.pose.pose.orientation.w = 1.0
        n._on_input('odom', odom)
        n._on_input('input', pose(2.7, 1.5))
        assert wait_for(lambda: len(status) == 2, 10)
        assert status[1].feasible
    finally:
        n.destroy_node()
