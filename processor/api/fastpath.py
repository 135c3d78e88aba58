"""`POST /v1/payments` without the framework in the way: the one route that carries the app's load.

An ASGI wrapper answers it directly: the same checks in the same order as the documented route (caller,
body against the same pydantic model, Idempotency-Key), the same answers and error shape, and the same
transfer desk. It skips FastAPI's dependency solving and response rendering, which cost more CPU than the
payment itself. Every other request goes to the FastAPI application untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from processor.api import idempotency as idem
from processor.api.errors import ApiError
from processor.api.payments import REVOKED, Transfer
from processor.api.security import token_hash
from processor.api.schemas import NewPayment
from processor.api.threads import normalize_handle
from processor.ledger.errors import StoreBusy, StoreClosed

PATH = "/v1/payments"
_REPLAYED = {"Idempotent-Replayed": "true"}
BODY_MAX_BYTES = 16_384

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class PaymentsFastPath:
    """Wraps the API's ASGI app; answers POST /v1/payments itself."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], service: Any) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            status, body, headers = await self._pay(scope, receive)
        except ApiError as err:
            status, body, headers = err.status, err.body(), err.headers
        except (StoreBusy, StoreClosed):
            err = ApiError("service_unavailable", "the store is busy; retry with the same Idempotency-Key", headers={"Retry-After": "1"})
            status, body, headers = err.status, err.body(), err.headers
        payload = (body if isinstance(body, str) else idem.encode(body)).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        if headers:
            raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})

    async def _pay(self, scope: Scope, receive: Receive) -> tuple[int, dict[str, Any] | str, dict[str, str]]:
        """The answer's status, body (as JSON text when the desk encoded it already) and extra headers."""
        authorization = idem_key = None
        for name, value in scope["headers"]:  # names arrive lower-cased (ASGI)
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"idempotency-key":
                idem_key = value.decode("latin-1")
        principal, hashed = await self._caller(authorization)
        raw = await _read_body(receive)
        try:
            body = NewPayment.model_validate_json(raw or b"null")
        except ValidationError as exc:
            fields = sorted({".".join(str(p) for p in e.get("loc", ())) or "body" for e in exc.errors()})
            problems = [f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg', 'invalid')}" for e in exc.errors()][:10]
            raise ApiError("invalid_request", "; ".join(problems)[:500], details={"fields": fields}) from None
        key = idem.check_key(idem_key)
        payload = body.model_dump(mode="json")
        transfer = Transfer(kind="p2p", payer_id=principal.id, principal=principal.key, idem_key=key,
                            rhash=idem.request_hash("POST", PATH, payload), amount_minor=body.amount_minor,
                            currency=body.currency, note=body.note, payee_handle=normalize_handle(body.to), token_hash=hashed)
        answer = await self.service.desk.submit(transfer)
        body = answer.body if answer.encoded is None else answer.encoded
        if answer.status == REVOKED.status:
            return answer.status, body, REVOKED.headers
        return answer.status, body, (_REPLAYED if answer.replayed else {})

    async def _caller(self, authorization: str | None) -> tuple[Any, str]:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token or len(token) > 200:
            raise ApiError("unauthenticated", "send Authorization: Bearer <access token>", headers={"WWW-Authenticate": "Bearer"})
        token = token.strip()
        principal = await self.service.principal(token, checked_in_write=True)
        if principal is None:
            raise ApiError("unauthenticated", "unknown, expired or revoked token; refresh or sign in again",
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if principal.role != "cardholder":
            raise ApiError("forbidden", "this route is for cardholders")
        return principal, token_hash(token)


async def _read_body(receive: Receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError("invalid_request", "the client went away before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > BODY_MAX_BYTES:
            raise ApiError("invalid_request", f"a payment's body is at most {BODY_MAX_BYTES} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
