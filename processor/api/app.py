"""The money app's HTTP API (FastAPI): routes, authentication, the error shape and the OpenAPI document.

Every route under /v1 except sign-in and refresh needs `Authorization: Bearer <token>`: a cardholder's
access token, or an operator key on /v1/operator. Every write needs an `Idempotency-Key` header.
A cardholder reaches only their own objects: anything else answers 404 not_found, as if it did not exist.
"""

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from processor.api import cards as card_actions
from processor.api import idempotency as idem
from processor.api import schemas as s
from processor.api import security, threads, views
from processor.api.errors import ERROR_CODES, ApiError
from processor.api.payments import Transfer
from processor.api.service import STREAMS_PER_CARDHOLDER, ApiService, store_error
from processor.events.outbox import read_for
from processor.ledger.errors import StoreBusy, StoreClosed, StoreError

log = logging.getLogger("processor.api")

SSE_KEEPALIVE_S = 15.0
SSE_BACKLOG_PAGE = 500
API_VERSION = "1.0.0"

_bearer = HTTPBearer(auto_error=False, scheme_name="bearer", description="a cardholder's access token or an operator key")
_id = Path(ge=1, le=2**62)
IdemKey = Annotated[str | None, Header(alias="Idempotency-Key", description="unique per write; a retry reuses it", max_length=255)]


def create_app(service: ApiService) -> FastAPI:
    """The ASGI application over an open `ApiService`."""
    app = FastAPI(
        title="Money app API",
        version=API_VERSION,
        description=__doc__,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.service = service

    # ------------------------------------------------------------------ errors

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        # Names the fields and what is wrong, never echoes what was sent (it may be a PIN or a password).
        fields = sorted({".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body" for e in err.errors()})
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg', 'invalid')}" for e in err.errors()][:10]
        body = ApiError("invalid_request", "; ".join(problems)[:500], details={"fields": fields}).body()
        return JSONResponse(body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "invalid_request"}.get(err.status_code, "invalid_request")
        status = ERROR_CODES[code][0] if err.status_code not in (405,) else 405
        return JSONResponse(ApiError(code, str(err.detail)).body(), status_code=status, headers=getattr(err, "headers", None))

    @app.exception_handler(StoreError)
    async def _store(_: Request, err: StoreError) -> JSONResponse:
        if isinstance(err, (StoreBusy, StoreClosed)):
            mapped = ApiError("service_unavailable", "the store is busy; retry with the same Idempotency-Key", headers={"Retry-After": "1"})
        else:
            mapped = store_error(err)
        return JSONResponse(mapped.body(), status_code=mapped.status, headers=mapped.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        log.error("unexpected %s in the API", type(err).__name__, exc_info=err)
        return JSONResponse(ApiError("internal_error", "unexpected failure").body(), status_code=500)

    # ------------------------------------------------------------------ callers

    async def caller(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> security.Principal:
        if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials or len(creds.credentials) > 200:
            raise ApiError("unauthenticated", "send Authorization: Bearer <access token>", headers={"WWW-Authenticate": "Bearer"})
        principal = await service.principal(creds.credentials)
        if principal is None:
            raise ApiError("unauthenticated", "unknown, expired or revoked token; refresh or sign in again",
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return principal

    async def cardholder(principal: Annotated[security.Principal, Depends(caller)]) -> security.Principal:
        if principal.role != "cardholder":
            raise ApiError("forbidden", "this route is for cardholders")
        return principal

    async def operator(principal: Annotated[security.Principal, Depends(caller)]) -> security.Principal:
        if principal.role != "operator":
            raise ApiError("forbidden", "this route is for operators")
        return principal

    Me = Annotated[security.Principal, Depends(cardholder)]
    Op = Annotated[security.Principal, Depends(operator)]

    def answer(result: idem.Answer) -> JSONResponse:
        headers = {"Idempotent-Replayed": "true"} if result.replayed else None
        return JSONResponse(result.body, status_code=result.status, headers=headers)

    async def write(who: security.Principal, request: Request, key: str | None, payload: Any, body: Callable[..., Any], *args: Any) -> JSONResponse:
        key = idem.check_key(key)
        rhash = idem.request_hash(request.method, request.url.path, payload)
        return answer(await service.write(who.key, key, rhash, body, *args))

    async def claimed(who: security.Principal, request: Request, key: str | None, payload: Any, work: Callable[[], Awaitable[idem.Answer]]) -> JSONResponse:
        """A write that needs the HSM: claim the key, work, record the answer (errors included)."""
        key = idem.check_key(key)
        rhash = idem.request_hash(request.method, request.url.path, payload)
        stored = await service.claim(who.key, key, rhash)
        if stored is not None:
            return answer(stored)
        try:
            result = await work()
        except ApiError as err:
            result = idem.Answer(err.status, err.body())
        except StoreError as err:
            if isinstance(err, (StoreBusy, StoreClosed)):
                await service.release(who.key, key)
                raise
            mapped = store_error(err)
            result = idem.Answer(mapped.status, mapped.body())
        except BaseException:
            await service.release(who.key, key)
            raise
        await service.complete(who.key, key, result)
        return answer(result)

    async def transfer(who: security.Principal, request: Request, key: str | None, payload: dict[str, Any], **fields: Any) -> JSONResponse:
        key = idem.check_key(key)
        t = Transfer(payer_id=who.id, principal=who.key, idem_key=key,
                     rhash=idem.request_hash(request.method, request.url.path, payload), **fields)
        return answer(await service.desk.submit(t))

    errors = {"default": {"model": s.ErrorBody, "description": "an error in the API's one shape (see the README for codes)"}}

    # ------------------------------------------------------------------ sign-in

    @app.post("/v1/auth/sign-in", response_model=s.Tokens, tags=["auth"], responses=errors)
    async def sign_in(body: s.SignIn, request: Request) -> Any:
        """Sign in with handle and password; gives a short-lived access token and a refresh token."""
        handle = threads.normalize_handle(body.handle)
        client = request.client.host if request.client else "unknown"
        keys = [f"handle:{handle}", f"ip:{client}"]
        now = security.utcnow()
        wait = await service.store.run_query(security.throttle_wait_s, keys, now)
        if wait:
            raise ApiError("too_many_attempts", f"too many failed sign-ins; try again in {wait} s", headers={"Retry-After": str(wait)})
        found = await service.store.run_query(security.credential_for, handle)
        ok = await asyncio.to_thread(security.verify_password, found[2] if found else None, body.password)
        if not ok or found is None:
            await service.store.run_write(security.record_failure, keys, now)
            raise ApiError("invalid_credentials", "handle and password do not match")
        pair = await service.store.run_write(_sign_in_ok, keys, found[0], found[1])
        return pair.as_json()

    @app.post("/v1/auth/refresh", response_model=s.Tokens, tags=["auth"], responses=errors)
    async def refresh(body: s.Refresh) -> Any:
        """Trade a refresh token for a new pair; the old refresh token is spent (reusing it revokes the sign-in)."""
        result = await service.store.run_write(security.refresh_tokens, body.refresh_token)
        if isinstance(result, str):
            service.tokens.forget_family(result)
            service.tokens_revoked()
            raise ApiError("invalid_refresh_token", "this refresh token was already used: every token of that sign-in is revoked")
        return result.as_json()

    @app.post("/v1/auth/sign-out", status_code=204, tags=["auth"], responses=errors)
    async def sign_out(me: Me) -> Response:
        """Revoke the access and refresh tokens of this sign-in."""
        if me.token_family:
            await service.store.run_write(security.revoke_family, me.token_family)
            service.tokens.forget_family(me.token_family)
            service.tokens_revoked()
        return Response(status_code=204)

    @app.get("/v1/me", response_model=s.Me, tags=["me"], responses=errors)
    async def who_am_i(me: Me) -> Any:
        return {"id": me.id, "handle": me.name, "name": await service.store.run_query(_name_of, me.id)}

    # ------------------------------------------------------------------ accounts

    @app.get("/v1/accounts", response_model=list[s.Account], tags=["accounts"], responses=errors)
    async def accounts(me: Me) -> Any:
        """The caller's accounts with ledger and available balances."""
        return await service.store.run_query(views.list_accounts, me.id)

    @app.get("/v1/accounts/{account_id}", response_model=s.Account, tags=["accounts"], responses=errors)
    async def account(me: Me, account_id: Annotated[int, _id]) -> Any:
        return await service.store.run_query(views.own_account, me.id, account_id)

    @app.post("/v1/accounts", response_model=s.Account, status_code=201, tags=["accounts"], responses=errors)
    async def open_account(me: Me, body: s.OpenSavings, request: Request, key: IdemKey = None) -> Any:
        """Open a savings account on a savings product."""
        return await write(me, request, key, body.model_dump(mode="json"), _open_savings, me.id, body.product)

    @app.get("/v1/accounts/{account_id}/transactions", response_model=s.TransactionPage, tags=["accounts"], responses=errors)
    async def transactions(me: Me, account_id: Annotated[int, _id], cursor: Annotated[str | None, Query(max_length=200)] = None,
                           limit: Annotated[int, Query(ge=1, le=100)] = 50) -> Any:
        """Card transactions (pending, posted, reversed, with the merchant) and bookings, newest first."""
        return await service.store.run_query(views.transactions, me.id, account_id, cursor, limit)

    @app.post("/v1/transfers", response_model=s.TransferOut, status_code=201, tags=["accounts"], responses=errors)
    async def own_transfer(me: Me, body: s.OwnTransfer, request: Request, key: IdemKey = None) -> Any:
        """Move money between two of the caller's own accounts (e.g. checking and savings), at once."""
        payload = body.model_dump(mode="json")
        return await transfer(me, request, key, payload, kind="own", amount_minor=body.amount_minor, note=body.note,
                              from_account_id=body.from_account_id, to_account_id=body.to_account_id)

    # ------------------------------------------------------------------ cards

    @app.get("/v1/cards", response_model=list[s.Card], tags=["cards"], responses=errors)
    async def list_cards(me: Me) -> Any:
        return await service.store.run_query(views.list_cards, me.id)

    @app.get("/v1/cards/{card_id}", response_model=s.Card, tags=["cards"], responses=errors)
    async def get_card(me: Me, card_id: Annotated[int, _id]) -> Any:
        return views.card_json(await service.store.run_query(views.own_card_row, me.id, card_id))

    @app.post("/v1/cards/{card_id}/freeze", response_model=s.Card, tags=["cards"], responses=errors)
    async def freeze(me: Me, card_id: Annotated[int, _id], request: Request, key: IdemKey = None) -> Any:
        """Freeze the card: every authorization is declined until it is unfrozen."""
        return await write(me, request, key, None, card_actions.freeze, me.id, card_id, True)

    @app.post("/v1/cards/{card_id}/unfreeze", response_model=s.Card, tags=["cards"], responses=errors)
    async def unfreeze(me: Me, card_id: Annotated[int, _id], request: Request, key: IdemKey = None) -> Any:
        return await write(me, request, key, None, card_actions.freeze, me.id, card_id, False)

    @app.post("/v1/cards/{card_id}/report-lost", response_model=s.LostCard, tags=["cards"], responses=errors)
    async def report_lost(me: Me, card_id: Annotated[int, _id], request: Request, key: IdemKey = None) -> Any:
        """Block the card as lost and issue a replacement on the same account; wallet tokens move to it."""
        return await claimed(me, request, key, None, lambda: card_actions.report_lost(service, me.id, card_id))

    @app.put("/v1/cards/{card_id}/pin", response_model=s.Card, tags=["cards"], responses=errors)
    async def set_pin(me: Me, card_id: Annotated[int, _id], body: s.SetPin, request: Request, key: IdemKey = None) -> Any:
        """Set the PIN, or change it with current_pin. The PIN goes to the HSM; only its verification value is kept."""
        return await claimed(me, request, key, body.model_dump(mode="json"),
                             lambda: card_actions.set_pin(service, me.id, card_id, body.pin, body.current_pin))

    @app.get("/v1/cards/{card_id}/controls", response_model=s.Controls, tags=["cards"], responses=errors)
    async def get_controls(me: Me, card_id: Annotated[int, _id]) -> Any:
        """The card's spending controls: limits, blocked merchant categories, countries, channels."""
        return await service.store.run_query(card_actions.controls_of, me.id, card_id)

    @app.put("/v1/cards/{card_id}/controls", response_model=s.Controls, tags=["cards"], responses=errors)
    async def put_controls(me: Me, card_id: Annotated[int, _id], body: s.Controls, request: Request, key: IdemKey = None) -> Any:
        """Replace the card's spending controls; the next authorization applies them (61, 65, 57, 62)."""
        payload = body.model_dump(mode="json")
        return await write(me, request, key, payload, card_actions.set_controls, me.id, card_id, payload)

    # ------------------------------------------------------------------ conversations and payments

    @app.get("/v1/conversations", response_model=list[s.Conversation], tags=["conversations"], responses=errors)
    async def conversations(me: Me) -> Any:
        return await service.store.run_query(threads.list_conversations, me.id)

    @app.post("/v1/conversations", response_model=s.Conversation, tags=["conversations"], responses=errors)
    async def open_conversation(me: Me, body: s.OpenConversation, request: Request, key: IdemKey = None) -> Any:
        """The conversation with another cardholder (by handle), created when missing."""
        return await write(me, request, key, body.model_dump(mode="json", by_alias=True), threads.open_conversation, me.id, body.with_)

    @app.get("/v1/conversations/{conversation_id}", response_model=s.Conversation, tags=["conversations"], responses=errors)
    async def conversation(me: Me, conversation_id: Annotated[int, _id]) -> Any:
        return await service.store.run_query(threads.conversation_json, conversation_id, me.id)

    @app.get("/v1/conversations/{conversation_id}/items", response_model=s.ItemPage, tags=["conversations"], responses=errors)
    async def items(me: Me, conversation_id: Annotated[int, _id], cursor: Annotated[str | None, Query(max_length=200)] = None,
                    limit: Annotated[int, Query(ge=1, le=100)] = 50) -> Any:
        """Messages, payments and payment requests of the thread, newest first."""
        return await service.store.run_query(threads.list_items, conversation_id, me.id, cursor, limit)

    @app.post("/v1/conversations/{conversation_id}/messages", response_model=s.Item, status_code=201, tags=["conversations"], responses=errors)
    async def message(me: Me, conversation_id: Annotated[int, _id], body: s.NewMessage, request: Request, key: IdemKey = None) -> Any:
        return await write(me, request, key, body.model_dump(mode="json"), threads.send_message, me.id, conversation_id, body.text)

    @app.post("/v1/payments", response_model=s.Payment, status_code=201, tags=["payments"], responses=errors)
    async def pay(me: Me, body: s.NewPayment, request: Request, key: IdemKey = None) -> Any:
        """Send money to a cardholder by handle, at once; it shows in both people's conversation with the note."""
        return await transfer(me, request, key, body.model_dump(mode="json"), kind="p2p", amount_minor=body.amount_minor,
                              currency=body.currency, note=body.note, payee_handle=threads.normalize_handle(body.to))

    @app.post("/v1/payment-requests", response_model=s.PaymentRequestOut, status_code=201, tags=["payments"], responses=errors)
    async def request_money(me: Me, body: s.NewRequest, request: Request, key: IdemKey = None) -> Any:
        """Ask a cardholder (by handle) for money; the request expires after expires_in_hours."""
        return await write(me, request, key, body.model_dump(mode="json", by_alias=True), threads.create_request, me.id, body.from_,
                           body.amount_minor, body.currency, body.note, dt.timedelta(hours=body.expires_in_hours))

    @app.get("/v1/payment-requests", response_model=list[s.PaymentRequestOut], tags=["payments"], responses=errors)
    async def payment_requests(me: Me, status: Annotated[str | None, Query(pattern="^(open|paid|declined|cancelled|expired)$")] = None) -> Any:
        return await service.store.run_query(threads.list_requests, me.id, status)

    @app.get("/v1/payment-requests/{request_id}", response_model=s.PaymentRequestOut, tags=["payments"], responses=errors)
    async def payment_request(me: Me, request_id: Annotated[int, _id]) -> Any:
        return await service.store.run_query(threads.get_request, request_id, me.id)

    @app.post("/v1/payment-requests/{request_id}/pay", response_model=s.Payment, status_code=201, tags=["payments"], responses=errors)
    async def pay_request(me: Me, request_id: Annotated[int, _id], request: Request, key: IdemKey = None) -> Any:
        """Pay a request (the payer). Paying a paid request again answers its payment and moves nothing."""
        return await transfer(me, request, key, None, kind="p2p", request_id=request_id)

    @app.post("/v1/payment-requests/{request_id}/decline", response_model=s.PaymentRequestOut, tags=["payments"], responses=errors)
    async def decline_request(me: Me, request_id: Annotated[int, _id], request: Request, key: IdemKey = None) -> Any:
        return await write(me, request, key, None, threads.close_request, me.id, request_id, "decline")

    @app.post("/v1/payment-requests/{request_id}/cancel", response_model=s.PaymentRequestOut, tags=["payments"], responses=errors)
    async def cancel_request(me: Me, request_id: Annotated[int, _id], request: Request, key: IdemKey = None) -> Any:
        return await write(me, request, key, None, threads.close_request, me.id, request_id, "cancel")

    # ------------------------------------------------------------------ the feed

    @app.get("/v1/events", response_model=s.EventPage, tags=["feed"], responses=errors)
    async def events(me: Me, after: Annotated[int, Query(ge=0, le=2**62)] = 0, limit: Annotated[int, Query(ge=1, le=500)] = 100) -> Any:
        """The caller's events after an event id, oldest first."""
        page = await service.store.run_query(read_for, me.id, after, limit)
        return {"items": [e.envelope() for e in page], "last_id": page[-1].id if page else after}

    @app.get("/v1/events/stream", tags=["feed"], responses={
        200: {"description": "server-sent events: `id` is the event id, `event` its type, `data` the JSON envelope",
              "content": {"text/event-stream": {"schema": {"type": "string"}}}}, **errors}, response_class=StreamingResponse)
    async def stream(me: Me, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                     after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
                     last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=24)] = None) -> StreamingResponse:
        """The caller's events as they happen (server-sent events); resumes after Last-Event-ID (or ?after=).

        The stream ends when its access token is revoked (sign-out, a reused refresh token, a new password) or
        expires; the app reconnects with a fresh token and Last-Event-ID.
        """
        start = after
        if last_event_id:
            if not last_event_id.isdigit():
                raise ApiError("invalid_request", "Last-Event-ID is an event id (digits)", details={"fields": ["Last-Event-ID"]})
            start = int(last_event_id)
        if service.hub.subscriptions(me.id) >= STREAMS_PER_CARDHOLDER:
            raise ApiError("too_many_streams", f"at most {STREAMS_PER_CARDHOLDER} event streams at once")
        assert creds is not None  # `me` was found from it
        sub = service.open_stream(me.id, creds.credentials)
        position = service.hub.position if start is None else start
        return StreamingResponse(_sse(service, sub, me.id, position, creds.credentials), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ operators

    @app.post("/v1/operator/cardholders", response_model=s.CardholderOut, status_code=201, tags=["operator"], responses=errors)
    async def enroll(op: Op, body: s.NewCardholder, request: Request, key: IdemKey = None) -> Any:
        """Enroll a cardholder for the app: the cardholder, a checking account and the password."""
        password_hash = await asyncio.to_thread(security.hash_password, body.password)
        return await write(op, request, key, body.model_dump(mode="json"), _enroll, body.name, body.handle, body.currency, password_hash)

    @app.put("/v1/operator/cardholders/{cardholder_id}/password", response_model=s.PasswordSet, tags=["operator"], responses=errors)
    async def set_password(op: Op, cardholder_id: Annotated[int, _id], body: s.SetPassword, request: Request, key: IdemKey = None) -> Any:
        """Set a cardholder's password; every token they hold is revoked."""
        password_hash = await asyncio.to_thread(security.hash_password, body.password)
        result = await write(op, request, key, body.model_dump(mode="json"), _set_password, cardholder_id, password_hash)
        service.tokens = security.TokenCache(service.tokens.ttl_s, service.tokens.max_entries)
        service.tokens_revoked()
        return result

    @app.post("/v1/operator/accounts/{account_id}/deposits", response_model=s.Account, status_code=201, tags=["operator"], responses=errors)
    async def deposit(op: Op, account_id: Annotated[int, _id], body: s.Deposit, request: Request, key: IdemKey = None) -> Any:
        """Credit an account from the funding account (e.g. a top-up received)."""
        return await write(op, request, key, body.model_dump(mode="json"), _deposit, account_id, body.amount_minor)

    @app.put("/v1/operator/savings-products", response_model=s.Product, tags=["operator"], responses=errors)
    async def savings_product(op: Op, body: s.NewProduct, request: Request, key: IdemKey = None) -> Any:
        """Create a savings product or change its rate (from the next day accrued)."""
        from processor.savings.products import set_product

        return await write(op, request, key, body.model_dump(mode="json"), _ok(set_product), body.code, body.name, body.currency, body.annual_rate_ppm)

    @app.put("/v1/operator/p2p-limits", response_model=s.P2pLimits, tags=["operator"], responses=errors)
    async def p2p_limits(op: Op, body: s.P2pLimits, request: Request, key: IdemKey = None) -> Any:
        """The per-day limits of payments to people, per sending account (UTC days)."""
        result = await write(op, request, key, body.model_dump(mode="json"), _set_limits, body.daily_limit_minor, body.daily_count)
        service.desk.reload_limits()
        return result

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _ok(body: Callable[..., Any], status: int = 200) -> Callable[..., tuple[int, Any]]:
    def run(conn: Any, *args: Any) -> tuple[int, Any]:
        return status, body(conn, *args)

    return run


def _name_of(conn: Any, cardholder_id: int) -> str:
    from sqlalchemy import select

    from processor.ledger.models import cardholders

    return conn.execute(select(cardholders.c.name).where(cardholders.c.id == cardholder_id)).scalar_one()


def _set_limits(conn: Any, daily_limit_minor: int, daily_count: int) -> tuple[int, dict[str, Any]]:
    from processor.api.payments import DAILY_COUNT_CONFIG, DAILY_LIMIT_CONFIG
    from processor.issuing.config import set_value

    set_value(conn, DAILY_LIMIT_CONFIG, str(daily_limit_minor))
    set_value(conn, DAILY_COUNT_CONFIG, str(daily_count))
    return 200, {"daily_limit_minor": daily_limit_minor, "daily_count": daily_count}


def _sign_in_ok(conn: Any, keys: list[str], cardholder_id: int, handle: str) -> security.TokenPair:
    security.clear_failures(conn, keys[:1])
    return security.issue_tokens(conn, cardholder_id, handle)


def _open_savings(conn: Any, me: int, product: str) -> tuple[int, dict[str, Any]]:
    from processor.savings.products import open_savings

    account_id = open_savings(conn, me, product)
    return 201, views.own_account(conn, me, account_id)


def _enroll(conn: Any, name: str, handle: str, currency: str, password_hash: str) -> tuple[int, dict[str, Any]]:
    from processor.issuing.cardholders import add_cardholder
    from processor.ledger.accounts import add_account

    cardholder_id = add_cardholder(conn, name, handle)
    account_id = add_account(conn, cardholder_id, "checking", currency)
    security.set_password(conn, cardholder_id, password_hash)
    return 201, {"id": cardholder_id, "name": name, "handle": handle, "account_id": account_id}


def _set_password(conn: Any, cardholder_id: int, password_hash: str) -> tuple[int, dict[str, Any]]:
    security.set_password(conn, cardholder_id, password_hash)
    return 200, {"id": cardholder_id, "password_set": True}


def _deposit(conn: Any, account_id: int, amount_minor: int) -> tuple[int, dict[str, Any]]:
    from sqlalchemy import select

    from processor.ledger.accounts import post_deposit
    from processor.ledger.models import accounts

    post_deposit(conn, account_id, amount_minor, "deposit by an operator")
    owner = conn.execute(select(accounts.c.cardholder_id).where(accounts.c.id == account_id)).scalar()
    return 201, views.own_account(conn, owner, account_id)


async def _sse(service: ApiService, sub: Any, me: int, position: int, token: str) -> AsyncIterator[bytes]:
    """Backlog after `position` from the store, then live events from the hub; ends when the reader falls behind
    or the token is no longer live."""
    try:
        yield b"retry: 1000\n\n"
        while not sub.ended:
            page = await service.store.run_query(read_for, me, position, SSE_BACKLOG_PAGE)
            for event in page:
                yield _sse_frame(event)
                position = event.id
            if len(page) < SSE_BACKLOG_PAGE:
                break
        while not sub.overflowed and not sub.ended:
            try:
                async with asyncio.timeout(SSE_KEEPALIVE_S):
                    event = await sub.queue.get()
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if event is None or sub.ended:
                break
            if event.id <= position:
                continue
            position = event.id
            yield _sse_frame(event)
        if sub.ended:
            yield b": the access token was revoked or expired\n\n"
    finally:
        service.close_stream(token, sub)


def _sse_frame(event: Any) -> bytes:
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.to_json()}\n\n".encode()


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document with the API's own error shape in place of its validation-error answers."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path in doc.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            responses.pop("422", None)
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "header" and parameter.get("name") == "Idempotency-Key":
                    # Optional to FastAPI so that its absence gets its own error code; required all the same.
                    parameter["required"] = True
                    parameter["schema"] = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"}
    schemas = doc.get("components", {}).get("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    doc["info"]["x-error-codes"] = {code: {"status": status, "meaning": meaning} for code, (status, meaning) in ERROR_CODES.items()}
    app.openapi_schema = doc
    return doc


__all__ = ["create_app"]
