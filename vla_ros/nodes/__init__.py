"""ROS 2 nodes: ``vla_node`` (camera + command -> joint commands) and ``sim_node`` (MuJoCo robot)."""
