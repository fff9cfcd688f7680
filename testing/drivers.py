"""Validators' consensus drivers over in-memory channels, each with its own SQLite chain
store and sign-record: what one publishes reaches every other that is up.

Used with trio's ``autojump_clock``, heights take the time the timeouts say, so tests
can compare them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import trio

from aipg.stake.chain import Chain
from aipg.stake.consensus import Timeouts
from aipg.stake.driver import ConsensusDriver, Contents
from aipg.stake.signrecord import SqliteSignRecord

from .chainkit import TestChain

TIMEOUTS = Timeouts(1_000, 500, 250)
INBOX = 1000


class DriverNet:
    """One driver per validator of ``world`` (its genesis), under ``root``. Validators in
    ``down`` are not started and hear nothing."""

    def __init__(self, world: TestChain, root: Path, *, down: Iterable[int] = ()):
        self.world = world
        self.root = root
        self.down = set(down)
        n = len(world.validators)
        self.chains = [Chain.open(root / f"v{i}.sqlite", world.genesis) for i in range(n)]
        self.drivers: dict[int, ConsensusDriver] = {}
        self._inboxes: list = []

    @property
    def live(self) -> list[int]:
        return [i for i in range(len(self.chains)) if i not in self.down]

    def build(
        self,
        *,
        contents: Contents | None = None,
        timeouts: Timeouts = TIMEOUTS,
        on_finalized: Callable | None = None,
    ) -> None:
        """(Re)build the live validators' drivers on their stores and sign-records, with
        fresh inboxes (a restart keeps only what is on disk). ``on_finalized`` is the
        first live validator's hook."""
        self._inboxes = [trio.open_memory_channel(INBOX) for _ in self.chains]
        first = self.live[0]
        self.drivers = {
            i: ConsensusDriver(
                self.chains[i],
                self.world.validators[i],
                SqliteSignRecord(self.root / f"sign{i}.sqlite"),
                self._publisher(i),
                timeouts=timeouts,
                contents=contents,
                on_finalized=on_finalized if i == first else None,
            )
            for i in self.live
        }

    def _publisher(self, i: int):
        async def publish(data: bytes) -> None:
            for j in self.live:
                if j != i:
                    await self._inboxes[j][0].send(data)

        return publish

    async def run_until(self, height: int, timeout: float = 600) -> None:
        """Run the drivers until every live one has finalized ``height``."""
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                for i, d in self.drivers.items():
                    await nursery.start(d.run, self._inboxes[i][1])
                for d in self.drivers.values():
                    await d.wait_for_height(height)
                nursery.cancel_scope.cancel()

    def agree_up_to(self, height: int) -> bool:
        """Whether every live store holds the same block at each height up to ``height``."""
        live = [self.chains[i] for i in self.live]
        return all(len({c.store.block_hash_at(h) for c in live}) == 1 for h in range(1, height + 1))

    def close(self) -> None:
        for c in self.chains:
            c.close()
