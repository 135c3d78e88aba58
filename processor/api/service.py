"""What the API works with: the store, the HSM, the live event hub and the transfer desk, opened and closed together."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from processor.api import idempotency as idem
from processor.api import security
from processor.api.errors import ApiError
from processor.api.payments import TransferDesk
from processor.config import Settings
from processor.events.feed import EventHub, Subscription
from processor.ledger.models import utcnow
from processor.ledger.errors import StoreError

log = logging.getLogger("processor.api")

SWEEP_INTERVAL_S = 30.0
STREAMS_PER_CARDHOLDER = 5
# How often open event streams have their access token checked again: a revocation or expiry committed by
# any process ends the stream within this time (one made by this process ends it at once).
STREAM_TOKEN_CHECK_S = 0.5


@dataclass
class ApiService:
    """The open resources of one API process."""

    store: Any
    hsm: Any
    hub: EventHub
    desk: TransferDesk
    tokens: security.TokenCache = field(default_factory=security.TokenCache)
    keys: Any = None
    _sweeper: asyncio.Task[None] | None = None
    _streams: dict[str, set[Subscription]] = field(default_factory=dict)  # access-token hash -> its open streams
    _check_streams: asyncio.Event = field(default_factory=asyncio.Event)
    _stream_watch: asyncio.Task[None] | None = None

    async def issuer_keys(self) -> Any:
        if self.keys is None:
            from processor.issuing import load_issuer_keys

            self.keys = await load_issuer_keys(self.store, self.hsm)
        return self.keys

    # ------------------------------------------------------------------ callers

    async def principal(self, token: str, *, checked_in_write: bool = False) -> security.Principal | None:
        """The caller behind a bearer token, or None when it is unknown, expired or revoked.

        Revocation counts at once, in every process: the token is read from the store on each request, except
        when `checked_in_write` says the request's own write transaction checks it again (the transfer desk
        does); then who the token names comes from the cache, since that never changes.
        """
        hashed = security.token_hash(token)
        now = utcnow()
        if token.startswith(security.OPERATOR_PREFIX):
            return await self.store.run_query(security.principal_for_operator_key, hashed)
        if not token.startswith(security.ACCESS_PREFIX):
            return None
        if checked_in_write:
            hit = self.tokens.get(hashed, now)
            if hit is not None:
                return hit
        found = await self.store.run_query(security.principal_for_token, hashed, now)
        if found is None:
            return None
        principal, expires_at = found
        self.tokens.put(hashed, principal, expires_at)
        return principal

    # ------------------------------------------------------------------ event streams

    def open_stream(self, cardholder_id: int, token: str) -> Subscription:
        """A live subscription for a stream opened with `token`: it ends when the token is revoked or expires."""
        sub = self.hub.subscribe(cardholder_id)
        self._streams.setdefault(security.token_hash(token), set()).add(sub)
        return sub

    def close_stream(self, token: str, sub: Subscription) -> None:
        hashed = security.token_hash(token)
        subs = self._streams.get(hashed)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._streams[hashed]
        sub.close()

    def tokens_revoked(self) -> None:
        """This process has just revoked tokens: check the open streams' tokens now rather than at the next tick."""
        self._check_streams.set()

    async def _watch_streams(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STREAM_TOKEN_CHECK_S):
                    await self._check_streams.wait()
            self._check_streams.clear()
            if not self._streams:
                continue
            hashes = sorted(self._streams)
            try:
                live = await self.store.run_query(security.live_access_tokens, hashes, utcnow())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("checking the event streams' tokens failed; retrying")
                continue
            for hashed in hashes:
                if hashed not in live:
                    for sub in self._streams.pop(hashed, ()):
                        sub.end()

    # ------------------------------------------------------------------ writes

    async def write(self, principal: str, key: str, rhash: str, body: Callable[..., tuple[int, dict[str, Any]]], *args: Any) -> idem.Answer:
        """Run `body(conn, *args)` once per Idempotency-Key, recording its answer in the same transaction."""
        for attempt in range(2):
            try:
                answer = await self.store.run_write(_idempotent, principal, key, rhash, body, args)
                break
            except StoreError:
                # PostgreSQL: another request with the same key committed first; the retry reads its answer.
                if attempt:
                    raise
        self.hub.notify()
        return answer

    async def claim(self, principal: str, key: str, rhash: str) -> idem.Answer | None:
        """Claim the key for a write that needs the HSM first; the stored answer when there is one."""
        try:
            return await self.store.run_write(idem.claim, principal, key, rhash)
        except StoreError:
            return await self.store.run_write(idem.claim, principal, key, rhash)

    async def complete(self, principal: str, key: str, answer: idem.Answer) -> None:
        await self.store.run_write(idem.complete, principal, key, answer)

    async def release(self, principal: str, key: str) -> None:
        with contextlib.suppress(Exception):
            await self.store.run_write(idem.release, principal, key)

    # ------------------------------------------------------------------ life cycle

    def start_sweeper(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="api-sweeper")
        self._stream_watch = asyncio.create_task(self._watch_streams(), name="api-stream-tokens")

    async def _sweep(self) -> None:
        from processor.api.threads import expire_requests

        while True:
            try:
                if await self.store.run_write(expire_requests, utcnow()):
                    self.hub.notify()
            except Exception:
                log.exception("expiring payment requests failed")
            await asyncio.sleep(SWEEP_INTERVAL_S)

    async def close(self) -> None:
        for task in (self._sweeper, self._stream_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.desk.close()
        await self.hub.close()


def _idempotent(conn: Connection, principal: str, key: str, rhash: str, body: Callable[..., Any], args: tuple[Any, ...]) -> idem.Answer:
    found = idem.stored(conn, principal, key, rhash)
    if found is not None:
        return found
    try:
        with conn.begin_nested():
            status, payload = body(conn, *args)
        answer = idem.Answer(status, payload)
    except ApiError as err:
        answer = idem.Answer(err.status, err.body())
    except StoreError as err:
        mapped = store_error(err)
        answer = idem.Answer(mapped.status, mapped.body())
    idem.record(conn, principal, key, rhash, answer)
    return answer


def store_error(err: StoreError) -> ApiError:
    """A store refusal in the API's words."""
    from processor.ledger.errors import StoreNotFound

    if isinstance(err, StoreNotFound):
        return ApiError("not_found", str(err))
    text = str(err)
    if "cannot become" in text or "cannot be reopened" in text:
        return ApiError("invalid_transition", text)
    if "already taken" in text or "already exists" in text:
        return ApiError("conflict", text)
    return ApiError("invalid_request", text)


@contextlib.asynccontextmanager
async def open_service(settings: Settings, *, poll_interval_s: float = 0.02) -> AsyncIterator[ApiService]:
    """Open the store, HSM, hub and desk named by the settings; close them all afterwards."""
    from hsm_sim import connect
    from processor.ledger import Store

    store = await Store.open(settings.db_url)
    hsm = hub = desk = service = None
    try:
        hsm = await connect(settings.hsm_url)
        hub = EventHub(store, poll_interval_s=poll_interval_s)
        await hub.start()
        desk = TransferDesk(store, on_commit=hub.notify, writers=1 if store.dialect == "sqlite" else 4)
        await desk.start()
        service = ApiService(store, hsm, hub, desk)
        service.start_sweeper()
        yield service
    finally:
        if service is not None:
            await service.close()
        else:
            if desk is not None:
                await desk.close()
            if hub is not None:
                await hub.close()
        if hsm is not None:
            await hsm.close()
        await store.close()


def today() -> dt.date:
    return utcnow().date()
