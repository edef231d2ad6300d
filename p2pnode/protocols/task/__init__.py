"""``/p2pnode/task/1.0.0``: messages (sans-I/O), the server, the client, the handlers."""

from p2pnode.protocols.task.client import TaskResult, send_task
from p2pnode.protocols.task.handlers import EchoHandler, ExecHandler, PythonHandler, TaskHandler
from p2pnode.protocols.task.messages import (
    PROTOCOL_ID,
    ErrorCode,
    TaskError,
    TaskFailedError,
    TaskRefusedError,
    TaskRequest,
    TaskTimeoutError,
)
from p2pnode.protocols.task.server import TaskServer

__all__ = [
    "PROTOCOL_ID",
    "EchoHandler",
    "ErrorCode",
    "ExecHandler",
    "PythonHandler",
    "TaskError",
    "TaskFailedError",
    "TaskHandler",
    "TaskRefusedError",
    "TaskRequest",
    "TaskResult",
    "TaskServer",
    "TaskTimeoutError",
    "send_task",
]
