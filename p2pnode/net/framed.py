"""Reading one length-prefixed message (:mod:`p2pnode.wire.framing`) from a :class:`Stream`."""

from __future__ import annotations

from p2pnode.errors import DecodeError
from p2pnode.net.stream import Stream
from p2pnode.wire.framing import FrameDecoder


async def read_frame(stream: Stream, max_size: int) -> bytes | None:
    """Read one length-prefixed message; ``None`` if the stream ended cleanly before it."""
    decoder = FrameDecoder(max_size)
    while True:
        chunk = await stream.read(max_size + 16)
        if not chunk:
            if decoder.in_message:
                raise DecodeError("stream ended in the middle of a message")
            return None
        messages = decoder.receive_data(chunk)
        if messages:
            if len(messages) > 1 or decoder.buffered:
                raise DecodeError("unexpected data after the message")
            return messages[0]
