"""`HsmClient`: the host commands of `HsmApi`, answered by `hsm-sim serve` over one pipelined connection."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from typing import Any

from hsm_sim import errors as st
from hsm_sim.errors import HsmError
from hsm_sim.framing import FrameDecoder, FrameTooLarge
from hsm_sim.crypto.pin import DEFAULT_DECIMALIZATION
from hsm_sim.hsm import CODE_OF, KEY_PAGE, KeyCeremony, RequestChecks, TokenizedPan
from hsm_sim.keystore import KeyInfo
from hsm_sim.protocol import MAX_FRAME_BYTES, ProtocolError, decode_answer, encode_request


READ_BYTES = 256 * 1024


class HsmClient:
    """Connect with `await HsmClient.connect(host, port, tls=...)`; every call has a timeout and a clear HsmError.

    With `tls` (the client's certificate, see pki.ClientTls) the connection is mutually authenticated TLS
    and `connect` asks the HSM who it takes the client for (`identity`), so a refused certificate is
    reported at once; without it the connection is plain TCP, which `hsm-sim serve` refuses.
    """

    def __init__(
        self, host: str, port: int, *, tls: ssl.SSLContext | None = None, timeout_s: float = 5.0, max_in_flight: int = 256
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.timeout_s = timeout_s
        self.identity: dict[str, Any] | None = None
        self._slots = asyncio.Semaphore(max_in_flight)
        self._headers = itertools.count(1)
        self._pending: dict[str, asyncio.Future[tuple[str, dict[str, Any]]]] = {}
        self._outbox: list[bytes] = []
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

    @classmethod
    async def connect(
        cls, host: str, port: int, *, tls: ssl.SSLContext | None = None, timeout_s: float = 5.0, max_in_flight: int = 256
    ) -> "HsmClient":
        client = cls(host, port, tls=tls, timeout_s=timeout_s, max_in_flight=max_in_flight)
        try:
            await client._ensure_connected()
            if tls is not None:
                client.identity = await client.who_am_i()
        except BaseException:
            await client.close()
            raise
        return client

    async def _ensure_connected(self) -> asyncio.StreamWriter:
        if self._writer is not None and not self._writer.is_closing():
            return self._writer
        async with self._connecting:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            where = f"{self.host}:{self.port}"
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None),
                    self.timeout_s,
                )
            except ssl.SSLCertVerificationError as exc:
                raise HsmError(st.CONNECTION_ERROR, f"the HSM at {where} is not the one the CA vouches for: {exc.verify_message}") from None
            except ssl.SSLError as exc:
                raise HsmError(st.NOT_PERMITTED, f"the HSM at {where} refused the connection: {_reason(exc)}") from None
            except (OSError, TimeoutError) as exc:
                raise HsmError(st.CONNECTION_ERROR, f"cannot reach the HSM at {where}: {exc.__class__.__name__}") from None
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read(reader))
            return writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        error = HsmError(st.CONNECTION_ERROR, f"connection to the HSM at {self.host}:{self.port} lost")
        decoder = FrameDecoder(MAX_FRAME_BYTES)
        try:
            # Answers arrive many to a read when requests are pipelined: cut every complete frame per read.
            while chunk := await reader.read(READ_BYTES):
                for payload in decoder.feed(chunk):
                    try:
                        tag, _, status, body = decode_answer(payload)
                    except ProtocolError:
                        continue
                    future = self._pending.pop(tag, None)
                    if future is not None and not future.done():
                        future.set_result((status, body))
        except FrameTooLarge as exc:
            error = HsmError(st.FRAME_ERROR, f"the HSM at {self.host}:{self.port} sent an answer {exc}: connection closed")
        except ssl.SSLError as exc:
            # TLS 1.3 finishes the client's side of the handshake before the HSM has checked its
            # certificate: a refused certificate arrives as an alert on the first read.
            error = HsmError(st.NOT_PERMITTED, f"the HSM at {self.host}:{self.port} refused this client: {_reason(exc)}")
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

    def _send(self, writer: asyncio.StreamWriter, frame: bytes) -> None:
        """Queue a frame; the frames of one turn of the loop go out in one write (one TLS record, one send).

        The in-flight semaphore bounds what can be queued, so there is no unbounded buffer to drain.
        """
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush, writer)
        self._outbox.append(frame)

    def _flush(self, writer: asyncio.StreamWriter) -> None:
        frames, self._outbox = self._outbox, []
        if not writer.is_closing():
            writer.write(b"".join(frames))

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Send one host command and wait for its answer: the result as JSON, or HsmError."""
        code = CODE_OF[name]
        try:
            # One deadline for the whole call: waiting for a free in-flight slot, connecting, the answer.
            async with asyncio.timeout(self.timeout_s), self._slots:
                writer = self._writer
                if writer is None or writer.is_closing():
                    writer = await self._ensure_connected()
                header = f"{next(self._headers) % 10_000:04d}"
                while header in self._pending:
                    header = f"{next(self._headers) % 10_000:04d}"
                future: asyncio.Future[tuple[str, dict[str, Any]]] = asyncio.get_running_loop().create_future()
                self._pending[header] = future
                try:
                    self._send(writer, encode_request(header, code, list(args), kwargs))
                    status, body = await future
                finally:
                    self._pending.pop(header, None)
        except TimeoutError:
            raise HsmError(st.TIMEOUT, f"{name}: no answer from the HSM within {self.timeout_s:g} s") from None
        except (ConnectionError, OSError):
            raise HsmError(st.CONNECTION_ERROR, f"{name}: connection to the HSM lost") from None
        except ProtocolError as exc:
            raise HsmError(exc.status, f"{name}: {exc}") from None
        if status == st.VERIFICATION_FAILED:
            return body.get("result", False)
        if status != st.OK:
            raise HsmError(status, body.get("error", f"{name} refused"))
        return body.get("result")

    # ------------------------------------------------------------ host commands (HsmApi)

    async def generate_key(self, key_type: str, algorithm: str = "TDES", *, key_bits: int | None = None) -> KeyInfo:
        return KeyInfo(**await self.call("generate_key", key_type, algorithm, key_bits=key_bits))

    async def import_key(self, key_type: str, key_block: str, zmk: str) -> KeyInfo:
        return KeyInfo(**await self.call("import_key", key_type, key_block, zmk))

    async def export_key(self, kcv: str, zmk: str, *, version: str | None = None) -> str:
        return str(await self.call("export_key", kcv, zmk, version=version))

    async def form_key_from_components(self, key_type: str, components: list[str], algorithm: str = "TDES") -> KeyInfo:
        return KeyInfo(**await self.call("form_key_from_components", key_type, components, algorithm))

    async def add_key_component(
        self, key_type: str, component: str, algorithm: str = "TDES", *, ceremony: str | None = None
    ) -> KeyCeremony:
        result = await self.call("add_key_component", key_type, component, algorithm, ceremony=ceremony)
        key = result.pop("key")
        return KeyCeremony(**result, key=KeyInfo(**key) if key else None)

    async def key_info(self, kcv: str) -> KeyInfo:
        return KeyInfo(**await self.call("key_info", kcv))

    async def list_keys(self, key_type: str | None = None, *, offset: int = 0, limit: int = KEY_PAGE) -> list[KeyInfo]:
        return [KeyInfo(**item) for item in await self.call("list_keys", key_type, offset=offset, limit=limit)]

    async def generate_pin_verification(
        self,
        pin_value: str,
        pan: str,
        pvk: str,
        method: str = "pvv",
        *,
        pvki: int = 1,
        validation_data: str | None = None,
        dectab: str = DEFAULT_DECIMALIZATION,
    ) -> str:
        return str(
            await self.call(
                "generate_pin_verification", pin_value, pan, pvk, method, pvki=pvki, validation_data=validation_data, dectab=dectab
            )
        )

    async def translate_pin(
        self, pin_block: str, pan: str, source_key: str, source_format: int, dest_key: str, dest_format: int, *, ksn: str | None = None
    ) -> str:
        return str(await self.call("translate_pin", pin_block, pan, source_key, source_format, dest_key, dest_format, ksn=ksn))

    async def verify_pin(
        self,
        pin_block: str,
        pan: str,
        pin_key: str,
        pin_format: int,
        pvk: str,
        *,
        method: str,
        verification_value: str,
        ksn: str | None = None,
        pvki: int = 1,
        validation_data: str | None = None,
        dectab: str = DEFAULT_DECIMALIZATION,
    ) -> bool:
        return bool(
            await self.call(
                "verify_pin", pin_block, pan, pin_key, pin_format, pvk, method=method, verification_value=verification_value,
                ksn=ksn, pvki=pvki, validation_data=validation_data, dectab=dectab,
            )
        )

    async def generate_cvv(self, cvk: str, pan: str, expiry_yymm: str, service_code: str) -> str:
        return str(await self.call("generate_cvv", cvk, pan, expiry_yymm, service_code))

    async def verify_cvv(self, cvk: str, pan: str, expiry_yymm: str, service_code: str, cvv: str) -> bool:
        return bool(await self.call("verify_cvv", cvk, pan, expiry_yymm, service_code, cvv))

    async def inject_ipek(self, bdk: str, ksn: str) -> str:
        return str(await self.call("inject_ipek", bdk, ksn))

    async def inject_aes_initial_key(self, bdk: str, initial_key_id: str) -> str:
        return str(await self.call("inject_aes_initial_key", bdk, initial_key_id))

    async def verify_arqc(
        self,
        imk: str,
        pan: str,
        psn: str,
        atc: str,
        arqc: str,
        transaction_data: str,
        *,
        cvn: int,
        unpredictable_number: str | None = None,
        arc: str | None = None,
        csu: str | None = None,
    ) -> tuple[bool, str | None]:
        ok, arpc = await self.call(
            "verify_arqc", imk, pan, psn, atc, arqc, transaction_data, cvn=cvn, unpredictable_number=unpredictable_number,
            arc=arc, csu=csu,
        )
        return bool(ok), arpc

    async def personalization_data(
        self,
        imk: str,
        cvk: str,
        sealed_pan: str,
        data_key_version: int,
        psn: str,
        expiry_yymm: str,
        transport_key: str,
        *,
        cvn: int,
    ) -> dict[str, str]:
        return dict(
            await self.call(
                "personalization_data", imk, cvk, sealed_pan, data_key_version, psn, expiry_yymm, transport_key, cvn=cvn
            )
        )

    async def generate_mac(self, key: str, data: bytes, *, algorithm: str | None = None, ksn: str | None = None) -> str:
        return str(await self.call("generate_mac", key, data, algorithm=algorithm, ksn=ksn))

    async def verify_mac(
        self, key: str, data: bytes, mac_value: str, *, algorithm: str | None = None, ksn: str | None = None
    ) -> bool:
        return bool(await self.call("verify_mac", key, data, mac_value, algorithm=algorithm, ksn=ksn))

    async def verify_request(
        self,
        key: str,
        data: bytes,
        mac_value: str,
        *,
        ksn: str | None = None,
        pan: str | None = None,
        cvk: str | None = None,
        cvvs: list[list[str]] | None = None,
    ) -> RequestChecks:
        found = await self.call("verify_request", key, data, mac_value, ksn=ksn, pan=pan, cvk=cvk, cvvs=cvvs)
        return RequestChecks(
            bool(found["mac_ok"]),
            [(int(version), str(fingerprint)) for version, fingerprint in found["fingerprints"]],
            [bool(ok) for ok in found["cvvs"]],
        )

    async def tokenize_pan(self, pan: str) -> TokenizedPan:
        return TokenizedPan(**await self.call("tokenize_pan", pan))

    async def fingerprint_pan(self, pan: str) -> list[tuple[int, str]]:
        return [(int(version), str(fingerprint)) for version, fingerprint in await self.call("fingerprint_pan", pan)]

    async def fingerprint_pans(self, pans: list[str]) -> list[list[tuple[int, str]]]:
        return [
            [(int(version), str(fingerprint)) for version, fingerprint in one]
            for one in await self.call("fingerprint_pans", list(pans))
        ]

    async def reveal_pan(self, sealed_pan: str, data_key_version: int, *, operator: str, reason: str) -> str:
        return str(await self.call("reveal_pan", sealed_pan, data_key_version, operator=operator, reason=reason))

    async def reseal_pan(self, sealed_pan: str, data_key_version: int) -> TokenizedPan:
        return TokenizedPan(**await self.call("reseal_pan", sealed_pan, data_key_version))

    async def rotate_tokenization_keys(self) -> tuple[int, int]:
        dek_version, fpk_version = await self.call("rotate_tokenization_keys")
        return int(dek_version), int(fpk_version)

    async def diagnostics(self) -> dict[str, Any]:
        return dict(await self.call("diagnostics"))

    async def who_am_i(self) -> dict[str, Any]:
        return dict(await self.call("who_am_i"))

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


def _reason(exc: ssl.SSLError) -> str:
    """'tlsv13 alert certificate required' rather than OpenSSL's full line with its source location."""
    reason = getattr(exc, "reason", None)
    return str(reason).replace("_", " ").lower() if reason else exc.__class__.__name__
