"""The hex examples of ``docs/task-protocol-2.md``.

Print them with ``python -m p2pnode.protocols.task.examples2``.
"""

from __future__ import annotations

from p2pnode.protocols.task.messages2 import (
    Accepted,
    Cancel,
    ClientMessage,
    Completed,
    Failed,
    InputChunk,
    OutputChunk,
    Part,
    Progress,
    Request,
    ServerEvent,
    encode,
)
from p2pnode.wire.framing import encode_frame

EXAMPLES: list[tuple[str, ClientMessage | ServerEvent]] = [
    ("request, kind upper, one text part", Request("t1", "upper", [Part.of_text("hi")])),
    (
        "request with bytes (a PNG signature) and more input to come, streamed answer",
        Request(
            "t2",
            "thumb",
            [Part.of_bytes(b"\x89PNG", "image/png")],
            more=True,
            stream=True,
        ),
    ),
    ("input chunk continuing the last part", InputChunk(Part.of_bytes(b"\r\n"), append=True)),
    ("last input message", InputChunk(end=True)),
    ("cancel", Cancel()),
    ("accepted", Accepted("t1")),
    ("progress", Progress(0.5, "half")),
    ("output chunk", OutputChunk(Part.of_text("H"))),
    ("completed", Completed("t1", [Part.of_text("I")], latency_ms=3)),
    ("failed", Failed("t1", "busy", "8 tasks are already running")),
]


def main() -> None:
    for title, message in EXAMPLES:
        print(f"{title}:\n\n    {encode_frame(encode(message)).hex(' ')}\n")


if __name__ == "__main__":
    main()
