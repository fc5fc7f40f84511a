"""ROS 2 glue: message conversions and QoS profiles (imports rclpy and message packages)."""
