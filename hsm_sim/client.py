"""`HsmClient`: the same coroutines as `Hsm`, answered by `hsm-sim serve` over one pipelined connection."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

from hsm_sim import errors as st
from hsm_sim.errors import HsmError
from hsm_sim.hsm import CODE_OF, TokenizedPan
from hsm_sim.keystore import KeyInfo
from hsm_sim.protocol import ProtocolError, decode_answer, encode_request

_KEY_INFO_RESULTS = frozenset({"generate_key", "import_key", "form_key_from_components", "key_info"})
_TUPLE_RESULTS = frozenset({"verify_arqc", "rotate_tokenization_keys"})


def _convert(name: str, result: Any) -> Any:
    if name in _KEY_INFO_RESULTS:
        return KeyInfo(**result)
    if name == "list_keys":
        return [KeyInfo(**item) for item in result]
    if name in ("tokenize_pan", "reseal_pan"):
        return TokenizedPan(**result)
    if name == "fingerprint_pan":
        return [tuple(item) for item in result]
    if name in _TUPLE_RESULTS:
        return tuple(result)
    return result


class HsmClient:
    """Connect with `await HsmClient.connect(host, port)`; every call has a timeout and a clear HsmError."""

    def __init__(self, host: str, port: int, *, timeout_s: float = 5.0, max_in_flight: int = 256) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_in_flight)
        self._headers = itertools.count(1)
        self._pending: dict[str, asyncio.Future[tuple[str, dict[str, Any]]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

    @classmethod
    async def connect(cls, host: str, port: int, *, timeout_s: float = 5.0, max_in_flight: int = 256) -> "HsmClient":
        client = cls(host, port, timeout_s=timeout_s, max_in_flight=max_in_flight)
        await client._ensure_connected()
        return client

    async def _ensure_connected(self) -> asyncio.StreamWriter:
        if self._writer is not None and not self._writer.is_closing():
            return self._writer
        async with self._connecting:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout_s)
            except (OSError, TimeoutError) as exc:
                raise HsmError(st.CONNECTION_ERROR, f"cannot reach the HSM at {self.host}:{self.port}: {exc.__class__.__name__}") from None
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read(reader))
            return writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        error = HsmError(st.CONNECTION_ERROR, f"connection to the HSM at {self.host}:{self.port} lost")
        try:
            while True:
                header = await reader.readexactly(2)
                payload = await reader.readexactly(int.from_bytes(header, "big"))
                try:
                    tag, _, status, body = decode_answer(payload)
                except ProtocolError:
                    continue
                future = self._pending.pop(tag, None)
                if future is not None and not future.done():
                    future.set_result((status, body))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            if self._writer is not None:
                self._writer.close()
            self._writer = None
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)
            self._pending.clear()

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Send one host command and wait for its answer."""
        code = CODE_OF[name]
        async with self._slots:
            writer = await self._ensure_connected()
            header = f"{next(self._headers) % 10_000:04d}"
            while header in self._pending:
                header = f"{next(self._headers) % 10_000:04d}"
            future: asyncio.Future[tuple[str, dict[str, Any]]] = asyncio.get_running_loop().create_future()
            self._pending[header] = future
            try:
                async with asyncio.timeout(self.timeout_s):
                    writer.write(encode_request(header, code, list(args), kwargs))
                    await writer.drain()
                    status, body = await future
            except TimeoutError:
                raise HsmError(st.TIMEOUT, f"{name}: no answer from the HSM within {self.timeout_s:g} s") from None
            except (ConnectionError, OSError):
                raise HsmError(st.CONNECTION_ERROR, f"{name}: connection to the HSM lost") from None
            except ProtocolError as exc:
                raise HsmError(exc.status, f"{name}: {exc}") from None
            finally:
                self._pending.pop(header, None)
        if status == st.VERIFICATION_FAILED:
            return _convert(name, body.get("result", False))
        if status != st.OK:
            raise HsmError(status, body.get("error", f"{name} refused"))
        return _convert(name, body.get("result"))

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def __aenter__(self) -> "HsmClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _method(name: str) -> Any:
    async def method(self: HsmClient, *args: Any, **kwargs: Any) -> Any:
        return await self.call(name, *args, **kwargs)

    method.__name__ = name
    method.__qualname__ = f"HsmClient.{name}"
    method.__doc__ = f"The `{name}` host command ({CODE_OF[name]}), answered by the HSM server."
    return method


for _name in CODE_OF:
    setattr(HsmClient, _name, _method(_name))
