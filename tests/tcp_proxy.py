"""A TCP proxy on loopback that a test can cut and restore, to put between a node and its
database: the node's store URL names the proxy, and the test decides when the network fails.

    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    url = proxy.url_for("postgresql://postgres@127.0.0.1/test")   # same URL, the proxy's port
    proxy.cut()              # every open connection reset, every new one refused
    proxy.cut("silent")      # a partition: connections stay open, nothing gets through
    proxy.restore()          # new connections reach the database again
    await proxy.close()

`cut()` ("refused") is what a node sees when the database restarts or its host goes away:
open connections end with a reset and new ones are reset at once. `cut("silent")` is a
network that drops packets: nothing is answered and nothing fails until someone's timeout
says so. Neither touches PostgreSQL itself, which other tests share.

`accepted` counts the connections ever made; `upstream_ports()` names the local ports of the
live connections to the database, which `pg_stat_activity.client_port` shows, so a test can
tell which of the database's sessions came through here.
"""
from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit


class _Pair:
    """One client connection and its connection to the database."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.upstream_host, self.upstream_port, self.host = upstream_host, upstream_port, host
        self.port = 0
        self.mode: str | None = None  # None: forwarding; "refused" or "silent": cut
        self.accepted = 0
        self._pairs: set[_Pair] = set()
        self._server: asyncio.Server | None = None

    @classmethod
    def to(cls, url: str) -> TcpProxy:
        """A proxy to the host and port `url` names (5432 when it names none)."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432)

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url_for(self, url: str) -> str:
        """`url` with its host and port replaced by the proxy's (user, database, query kept)."""
        parts = urlsplit(url)
        user = parts.netloc.rpartition("@")[0]
        netloc = f"{user}@{self.host}:{self.port}" if user else f"{self.host}:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    # ---- faults ------------------------------------------------------------------------------
    def cut(self, mode: str = "refused") -> None:
        """"refused": reset every open connection and each new one. "silent": keep them all
        open and forward nothing either way (what was sent meanwhile is lost)."""
        if mode not in ("refused", "silent"):
            raise ValueError(f"unknown cut mode {mode!r} (refused or silent)")
        self.mode = mode
        if mode == "refused":
            for pair in list(self._pairs):
                pair.abort()
            self._pairs.clear()

    def restore(self) -> None:
        """New connections reach the database again. Connections left open by a silent cut
        stay dead (their bytes were dropped, so their protocol state is lost): they are reset,
        as a client's timeout would end them."""
        for pair in list(self._pairs):
            pair.abort()
        self._pairs.clear()
        self.mode = None

    def upstream_ports(self) -> set[int]:
        return {pair.upstream.get_extra_info("sockname")[1] for pair in self._pairs
                if pair.upstream is not None and not pair.upstream.transport.is_closing()}

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    # ---- forwarding --------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        pair = _Pair(writer)
        if self.mode == "refused":
            writer.transport.abort()
            return
        self._pairs.add(pair)
        if self.mode == "silent":  # accepted by the kernel, then nothing: no greeting, no reset
            pair.tasks.append(asyncio.current_task())  # type: ignore[arg-type]
            with contextlib.suppress(Exception, asyncio.CancelledError):
                while await reader.read(65536):
                    pass
            return
        try:
            up_reader, pair.upstream = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            self._pairs.discard(pair)
            writer.transport.abort()
            return
        pair.tasks = [asyncio.create_task(self._pump(reader, pair.upstream, pair)),
                      asyncio.create_task(self._pump(up_reader, writer, pair))]

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pair: _Pair) -> None:
        try:
            while data := await reader.read(65536):
                if self.mode == "silent":
                    continue  # dropped on the floor, as a partition would
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # One side ended: end the other, as a real connection's end is seen by both (in a
            # silent cut nothing is seen: `restore` resets it).
            if self.mode != "silent":
                self._pairs.discard(pair)
                for side in (pair.client, pair.upstream):
                    if side is not None:
                        side.close()

    async def close(self) -> None:
        for pair in list(self._pairs):
            pair.abort()
        self._pairs.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
