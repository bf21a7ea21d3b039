"""The rclpy layer: the node host, message conversions and the plugin nodes."""
