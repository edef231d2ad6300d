"""The DHT's stream edge: one request and its answer as a client, a request loop as a server.

On a stream, each message is uvarint-length-prefixed; a client may send several
requests on one stream, one after the other, and the server answers each in turn
(ADD_PROVIDER gets no answer). We open a stream per request and close it after the
answer, which every implementation accepts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from p2pnode.errors import DecodeError, P2PError
from p2pnode.net.stream import Stream
from p2pnode.wire.identity import PeerId
from p2pnode.wire.kad.messages import (
    MAX_MESSAGE_SIZE,
    Message,
    MessageReader,
    fit_for_sending,
    frame_message,
)

log = logging.getLogger(__name__)

SERVER_IDLE_TIMEOUT = 60.0  # a server stream with no request for this long is closed
MAX_REQUESTS_PER_STREAM = 1024  # then the peer opens another stream

Answer = Callable[[PeerId, Message], Message | None]


async def read_message(stream: Stream, reader: MessageReader) -> Message | None:
    """The next message on ``stream``; None when it ended cleanly between messages."""
    while True:
        chunk = await stream.read(MAX_MESSAGE_SIZE + 16)
        if not chunk:
            if reader.in_message:
                raise DecodeError("the DHT stream ended in the middle of a message")
            return None
        messages = reader.receive_data(chunk)
        if messages:
            if len(messages) > 1 or reader.buffered:
                raise DecodeError("the peer sent more than one DHT message where one was due")
            return messages[0]


async def send_request(stream: Stream, request: Message, *, expect_answer: bool) -> Message | None:
    """Send ``request``; return the answer (None for requests that get none)."""
    try:
        await stream.write(frame_message(fit_for_sending(request)))
        if not expect_answer:
            await stream.close()
            return None
        answer = await read_message(stream, MessageReader())
        if answer is None:
            raise DecodeError("the peer closed the DHT stream without answering")
        await stream.close()
        return answer
    except BaseException:
        stream.reset()
        raise


async def serve_requests(stream: Stream, answer: Answer) -> None:
    """Answer requests on an inbound stream until the peer closes it or goes idle.

    Requests that arrive together (a client pipelining) are answered in order; what
    waits is bounded by the reader's message size and one chunk of reading.
    """
    reader = MessageReader()
    pending: list[Message] = []
    try:
        for _ in range(MAX_REQUESTS_PER_STREAM):
            while not pending:
                async with asyncio.timeout(SERVER_IDLE_TIMEOUT):
                    chunk = await stream.read(MAX_MESSAGE_SIZE + 16)
                if not chunk:
                    if reader.in_message:
                        raise DecodeError("the DHT stream ended in the middle of a message")
                    await stream.close()
                    return
                pending.extend(reader.receive_data(chunk))
            reply = answer(stream.remote_peer, pending.pop(0))
            if reply is not None:
                await stream.write(frame_message(fit_for_sending(reply)))
        await stream.close()
    except TimeoutError:
        await stream.close()
    except P2PError as exc:
        log.info("DHT request from %s refused: %s", stream.remote_peer, exc)
        stream.reset()
