"""Binding a port: shared only on purpose (meterstream/core/service.py `start_site`)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from meterstream.core.service import ConnectionLimits, start_site
from tests.support import free_port

LIMITS = ConnectionLimits()


@pytest.mark.parametrize("limits", [None, LIMITS], ids=["plain", "guarded"])
def test_a_second_site_on_a_port_in_use_fails_unless_both_share_it(
        limits: ConnectionLimits | None) -> None:
    async def scenario() -> None:
        port = free_port()
        first = await start_site(web.Application(), "127.0.0.1", port, limits)
        try:
            with pytest.raises(OSError, match="address already in use"):  # started twice
                await start_site(web.Application(), "127.0.0.1", port, limits)
        finally:
            await first.cleanup()
        shared = [await start_site(web.Application(), "127.0.0.1", port, limits,
                                   reuse_port=True) for _ in range(2)]
        for runner in shared:
            await runner.cleanup()

    asyncio.run(scenario())
