"""How ``send-task`` prints a task's output: exact bytes, text, JSON events, files."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from p2pnode.errors import LocalProtocolError
from p2pnode.protocols.task.messages2 import (
    Accepted,
    Completed,
    OutputChunk,
    Part,
    ServerEvent,
    TaskProgress,
)

if TYPE_CHECKING:
    from p2pnode.cli.output import Output

FILE_CHUNK = 256 * 1024


def file_chunks(path: str) -> Iterator[bytes]:
    """A file's bytes (``-``: standard input) in chunks, read as they are sent."""
    stream: IO[bytes]
    try:
        stream = sys.stdin.buffer if path == "-" else Path(path).open("rb")  # noqa: SIM115
    except OSError as exc:
        raise LocalProtocolError(f"cannot read --input-file {path}: {exc.strerror}") from None
    with stream:
        while chunk := stream.read(FILE_CHUNK):
            yield chunk


def part_json(part: Part) -> dict[str, Any]:
    """A part for a JSON line: text as text, bytes as base64, json as its value."""
    fields: dict[str, Any] = {"type": part.type, "media_type": part.media}
    if part.type == "text":
        fields["text"] = part.text
    elif part.type == "bytes":
        fields["data_base64"] = base64.b64encode(part.data or b"").decode()
    else:
        fields["value"] = part.value
    return fields


class OutputWriter:
    """Writes output parts as they come: bytes exactly, to stdout or ``--output-file``.

    Text goes out as UTF-8, bytes as they are, JSON as one compact line; nothing is
    added to what the peer sent.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        try:
            self._sink: IO[bytes] = Path(path).open("wb") if path else sys.stdout.buffer  # noqa: SIM115
        except OSError as exc:
            raise LocalProtocolError(f"cannot write --output-file {path}: {exc.strerror}") from None
        self.written = 0

    def part(self, part: Part) -> None:
        data = part.as_bytes()
        if part.type == "json":
            data += b"\n"
        if data:
            self._sink.write(data)
            self._sink.flush()
            self.written += len(data)

    def close(self) -> None:
        if self.path:
            self._sink.close()


def print_event(out: Output, event: ServerEvent, writer: OutputWriter) -> None:
    """One event of a streamed task: JSON line, or output to the writer, progress to stderr."""
    if out.as_json:
        if isinstance(event, OutputChunk):
            if writer.path:
                writer.part(event.part)
                out.emit("output", "", append=event.append, size=event.part.size)
            else:
                out.emit("output", "", append=event.append, part=part_json(event.part))
        elif isinstance(event, TaskProgress):
            out.emit("progress", "", fraction=event.fraction, message=event.message)
        elif isinstance(event, Accepted):
            out.emit("accepted", "", task_id=event.id)
        elif isinstance(event, Completed):
            for part in event.parts:
                if writer.path:
                    writer.part(part)
            parts = [] if writer.path else [part_json(p) for p in event.parts]
            out.emit("completed", "", task_id=event.id, latency_ms=event.latency_ms,
                     cached=event.cached, parts=parts)  # fmt: skip
        return
    if isinstance(event, OutputChunk):
        writer.part(event.part)
    elif isinstance(event, Completed):
        for part in event.parts:
            writer.part(part)
    elif isinstance(event, TaskProgress):
        fraction = f"{event.fraction * 100:.0f}% " if event.fraction is not None else ""
        print(f"progress: {fraction}{event.message or ''}".rstrip(), file=sys.stderr, flush=True)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
