"""A peer process for the DDS round-trip test: echoes Image and String messages back."""

import sys

import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String


class EchoPeer(Node):
    def __init__(self):
        super().__init__("echo_peer")
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.create_publisher(Image, "echo/image", qos)
        self.text_pub = self.create_publisher(String, "echo/text", qos)
        self.create_subscription(Image, "probe/image", self.image_pub.publish, qos)
        self.create_subscription(String, "probe/text", self.text_pub.publish, qos)


def main(args=None):
    rclpy.init(args=args)
    node = EchoPeer()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main(sys.argv)
