"""The multi-process server: workers rebuild the parent's settings, and their listener keeps TCP_NODELAY."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from flatmtl.api.server import environment, listener
from flatmtl.service.settings import Settings, load_settings


def test_workers_rebuild_the_parents_settings_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = Settings(
        data_dir=tmp_path,
        token_secret="s3cret",
        reads_open=True,
        lease_seconds=12.5,
        max_body_bytes=4096,
        migrate_on_start=False,
    )
    for name, value in environment(parent).items():
        monkeypatch.setenv(name, value)
    assert load_settings() == parent


def test_accepted_connections_get_tcp_nodelay() -> None:
    """asyncio sets TCP_NODELAY only on sockets accepted from an IPPROTO_TCP listener (else ~40 ms per request)."""
    found: list[int] = []

    async def main() -> None:
        sock = listener("127.0.0.1", 0)
        sock.listen()

        async def accepted(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            found.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=sock)
        _reader, writer = await asyncio.open_connection(*sock.getsockname())
        while not found:
            await asyncio.sleep(0.01)
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert found == [1]
