"""The e-stop service on a node and executor thread of its own, so it answers whatever vla_node is doing.

vla_node's single-threaded executor also runs its lifecycle transitions, and activation loads a checkpoint
(seconds on a first load, longer for a large one; 24.8 s for a hostile one before configs were bounded). An
e-stop served by that executor waits for it. Here the service ``vla/estop`` (std_srvs/SetBool) lives on a small
companion node, ``<node>_estop`` in the same namespace, spun by its own ``SingleThreadedExecutor`` on its own
thread from the moment vla_node is constructed: it answers in every lifecycle state, during activation included.

The companion node ignores the process's global ROS arguments (``-r __node:=vla_node`` would otherwise give it
vla_node's name); it takes vla_node's resolved name and namespace instead.
"""

from __future__ import annotations

import threading
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from std_srvs.srv import SetBool

ESTOP_SERVICE = "vla/estop"


class EstopServer:
    """Serves ``vla/estop`` for ``parent`` from a thread of its own; ``callback`` is parent's handler."""

    def __init__(self, parent: Node, callback: Callable[[SetBool.Request, SetBool.Response], SetBool.Response]):
        """Create the companion node and start spinning it."""
        self.node = rclpy.create_node(
            f"{parent.get_name()}_estop", namespace=parent.get_namespace(), context=parent.context,
            use_global_arguments=False, start_parameter_services=False,
        )
        self.service = self.node.create_service(SetBool, ESTOP_SERVICE, callback)
        self._executor = SingleThreadedExecutor(context=parent.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name="vla_estop", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except (ExternalShutdownException, rclpy.executors.ShutdownException):
            pass

    def destroy(self) -> None:
        """Stop the thread and destroy the companion node."""
        self._executor.shutdown()
        self._thread.join(timeout=5)
        self.node.destroy_node()
