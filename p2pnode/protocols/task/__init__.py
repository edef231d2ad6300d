"""``/p2pnode/task/1.0.0`` and ``/2.0.0``: messages (sans-I/O), servers, clients, handlers.

Names are imported on first use: a client (``send-task``) does not load the server and
the handlers (subprocess, importlib) it never runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOMES = {
    **dict.fromkeys(("TaskResult", "send_task"), "client"),
    **dict.fromkeys(("EchoHandler", "ExecHandler", "PythonHandler", "TaskHandler"), "handlers"),
    **dict.fromkeys(
        (
            "PROTOCOL_ID",
            "ErrorCode",
            "TaskError",
            "TaskFailedError",
            "TaskRefusedError",
            "TaskRequest",
            "TaskTimeoutError",
        ),
        "messages",
    ),
    "TaskServer": "server",
}

if TYPE_CHECKING:
    from p2pnode.protocols.task.client import TaskResult, send_task
    from p2pnode.protocols.task.handlers import (
        EchoHandler,
        ExecHandler,
        PythonHandler,
        TaskHandler,
    )
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


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


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
