"""Tools around the nodes: bag replay and recording without ``ros2 bag`` (``rosbags`` based)."""
