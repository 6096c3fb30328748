"""Raw messages are acked in order, only once delivered, never after a failed delivery."""

from __future__ import annotations

import asyncio

from processors.delivery_acks import Deliveries
from tests.support import until


class Outcome:
    """What a Deliveries queue did: the messages it acked and the errors it crashed on."""

    def __init__(self) -> None:
        self.acked: list[str] = []
        self.crashed: list[BaseException] = []

    async def ack(self, message: str) -> None:
        self.acked.append(message)

    async def crash(self, exc: BaseException) -> None:
        self.crashed.append(exc)


def test_acks_in_message_order_once_delivered() -> None:
    async def scenario() -> None:
        outcome = Outcome()
        acked, crashed = outcome.acked, outcome.crashed
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        deliveries = Deliveries(outcome.ack, outcome.crash)
        deliveries.start()
        await deliveries.add("m1", [first])
        await deliveries.add("m2", [second])
        await deliveries.add("m3", [])
        second.set_result(None)
        for _ in range(50):
            await asyncio.sleep(0)
        assert acked == []  # m2 and m3 wait for m1
        first.set_result(None)
        await until(lambda: len(acked) == 3, "all acked")
        assert acked == ["m1", "m2", "m3"]
        assert crashed == []
        await deliveries.stop()

    asyncio.run(scenario())


def test_a_failed_delivery_is_never_acked_and_stops_the_worker() -> None:
    async def scenario() -> None:
        outcome = Outcome()
        acked, crashed = outcome.acked, outcome.crashed
        loop = asyncio.get_running_loop()
        failing = loop.create_future()
        deliveries = Deliveries(outcome.ack, outcome.crash)
        deliveries.start()
        await deliveries.add("m1", [])
        await deliveries.add("m2", [failing])
        await deliveries.add("m3", [])
        failing.set_exception(RuntimeError("broker said no"))
        await until(lambda: crashed, "crash")
        assert acked == ["m1"]
        assert [str(exc) for exc in crashed] == ["broker said no"]
        await deliveries.stop()

    asyncio.run(scenario())


def test_a_full_queue_holds_the_agent_back() -> None:
    async def scenario() -> None:
        outcome = Outcome()
        never = asyncio.get_running_loop().create_future()
        deliveries = Deliveries(outcome.ack, outcome.crash, max_pending=2)
        deliveries.start()
        await deliveries.add("m1", [never])  # taken by the task, waiting
        await until(lambda: deliveries.waiting == 0, "m1 taken")
        await deliveries.add("m2", [])
        await deliveries.add("m3", [])
        blocked = asyncio.ensure_future(deliveries.add("m4", []))
        for _ in range(50):
            await asyncio.sleep(0)
        assert not blocked.done()
        blocked.cancel()
        await deliveries.stop()

    asyncio.run(scenario())
