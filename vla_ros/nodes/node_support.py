"""What vla_node and sim_node share: declaring described parameters, quoting input in logs, and ``main()``."""

from __future__ import annotations

import faulthandler
import signal
from typing import Callable

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

LOG_TEXT_LIMIT = 300  # characters of message content a log line may quote (hostile input can be megabytes)


def for_log(text: str, limit: int = LOG_TEXT_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text) - limit} more characters]"


def declare_parameters(node: Node, table) -> None:
    """Declare every ``(name, default, description)`` of ``table`` with a ParameterDescriptor."""
    for name, default, description in table:
        node.declare_parameter(name, default, ParameterDescriptor(description=description))


def run_node(make_node: Callable[[], Node], args=None, start: Callable[[Node], None] | None = None,
             stop: Callable[[Node], None] | None = None, own_sigint: bool = False) -> None:
    """Create a node, ``start`` it, spin it on a SingleThreadedExecutor until shut down, ``stop`` it, clean up.

    ``own_sigint``: SIGINT raises KeyboardInterrupt here instead of rclpy shutting the context down at once, so
    ``stop`` runs (e.g. a control thread stopped) while the context is still valid. SIGUSR1 writes every thread's
    Python stack to stderr (the node's log), for a node that hangs.
    """
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # A process started from a shell's background job inherits SIGINT ignored, and then neither Python nor rclpy
    # handles it: SIGINT (how ros2 launch and the launcher stop nodes) would do nothing. Take it explicitly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if own_sigint:
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    else:
        rclpy.init(args=args)
    node = make_node()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if start is not None:
            start(node)
        while rclpy.ok():  # wake at least every 0.2 s: a KeyboardInterrupt is raised only between waits, and an
            executor.spin_once(timeout_sec=0.2)  # idle node (unconfigured, no timers) would otherwise never wake
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if stop is not None:
            stop(node)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
