"""Local stack manager: Kafka (KRaft), Redis, Triton and the Feast apply step on loopback ports.

See docs/stack.md. Python API: `Stack(StackSettings()).up([...])`, `.down()`, `.status()`, `.endpoints()`.
"""
from services.stack.components import StackError
from services.stack.settings import COMPONENTS, Endpoints, StackSettings
from services.stack.stack import ComponentStatus, Stack, StartResult

__all__ = ["COMPONENTS", "ComponentStatus", "Endpoints", "Stack", "StackError", "StackSettings", "StartResult"]
