"""A live feed over the outbox: one poller reads new events for the whole process and hands each to the
subscribers of its cardholder.

The poller reads `events` after the last id it saw, every `poll_interval_s`, or at once when `notify()` says
this process has just committed events. Each subscriber has a bounded queue; a subscriber that falls
behind is cut off (`overflowed`) and resumes from its last event id, reading the backlog from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import Any

from processor.events.outbox import Event, last_id, read_after

log = logging.getLogger("processor.events")

POLL_BATCH = 1000


class Subscription:
    """One reader of one cardholder's events (or of every event, with cardholder_id None)."""

    def __init__(self, hub: "EventHub", cardholder_id: int | None, queue_max: int) -> None:
        self.hub = hub
        self.cardholder_id = cardholder_id
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(queue_max)
        self.overflowed = False
        self.ended = False

    def offer(self, event: Event) -> None:
        if self.overflowed or self.ended:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True

    def end(self) -> None:
        """Stop this subscription: its reader gets no further event (None wakes a reader that waits)."""
        self.ended = True
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)

    def close(self) -> None:
        self.hub._remove(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    """Polls the outbox of `store` and fans events out to subscriptions."""

    def __init__(self, store: Any, *, poll_interval_s: float = 0.02, queue_max: int = 1000, max_subscriptions: int = 10_000) -> None:
        self.store = store
        self.poll_interval_s = poll_interval_s
        self.queue_max = queue_max
        self.max_subscriptions = max_subscriptions
        self.position = 0
        self._subs: defaultdict[int | None, set[Subscription]] = defaultdict(set)
        self._count = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.position = await self.store.run_query(last_id)
        self._task = asyncio.create_task(self._loop(), name="event-hub")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def notify(self) -> None:
        """Events were just committed in this process: read them now rather than at the next tick."""
        self._wake.set()

    def subscriptions(self, cardholder_id: int | None) -> int:
        return len(self._subs.get(cardholder_id, ()))

    def subscribe(self, cardholder_id: int | None) -> Subscription:
        if self._count >= self.max_subscriptions:
            raise OverflowError(f"{self._count} event subscriptions open, the most this process serves")
        sub = Subscription(self, cardholder_id, self.queue_max)
        self._subs[cardholder_id].add(sub)
        self._count += 1
        return sub

    def _remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.cardholder_id)
        if subs is not None and sub in subs:
            subs.discard(sub)
            self._count -= 1
            if not subs:
                del self._subs[sub.cardholder_id]

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                while True:
                    batch = await self.store.run_query(read_after, self.position, POLL_BATCH)
                    for event in batch:
                        self._dispatch(event)
                        self.position = event.id
                    if len(batch) < POLL_BATCH:
                        break
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading the outbox failed; retrying")
                await asyncio.sleep(min(1.0, self.poll_interval_s * 10))

    def _dispatch(self, event: Event) -> None:
        for sub in self._subs.get(event.cardholder_id, ()):
            sub.offer(event)
        if event.cardholder_id is not None:
            for sub in self._subs.get(None, ()):
                sub.offer(event)
