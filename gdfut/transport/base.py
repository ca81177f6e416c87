"""The transport interface.

The task and control planes need: listen, connect, send messages (batched into
frames), and request/reply. The data plane (bulk object bytes between nodes)
additionally needs "send this buffer" / "receive into this caller-given memory
region". Backends: ``tcp`` (asyncio, default) and an in-process one for tests;
``ucx`` (ucxx, for GPU hosts) implements the same surface and is imported
lazily.
"""
from __future__ import annotations

from typing import Any, Protocol


class MessageHandler(Protocol):
    def on_messages(self, conn: "Connection", messages: list) -> None: ...
    def on_closed(self, conn: "Connection", exc: BaseException | None) -> None: ...


class Connection(Protocol):
    peer: dict[str, Any]

    def send(self, message: list) -> None: ...
    def request(self, mtype: int, *fields) -> Any: ...   # awaitable reply
    def reply(self, req_id: int, payload) -> None: ...
    def reply_error(self, req_id: int, text: str) -> None: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
