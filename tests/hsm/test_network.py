"""The HSM over TCP: same answers as in process, specific statuses for bad input, and it keeps serving."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hsm_sim import Hsm, HsmError, connect
from hsm_sim.client import HsmClient
from hsm_sim.crypto import pinblock
from hsm_sim.crypto.des import tdes_ecb_encrypt
from hsm_sim.protocol import decode_answer, encode_request
from hsm_sim.server import HsmServer, ServerLimits

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
PAN = "4761739001010010"


@pytest.fixture
async def served(tmp_path: Path):
    hsm = Hsm.open(tmp_path / "ks.json")
    server = HsmServer(hsm, limits=ServerLimits(frame_timeout_s=0.3))
    await server.start("127.0.0.1", 0)
    yield hsm, server
    await server.close()
    await hsm.close()


@pytest.fixture(params=["in_process", "tcp"])
async def hsm(request, served):
    local, server = served
    if request.param == "in_process":
        yield local
    else:
        client = await HsmClient.connect("127.0.0.1", server.port, timeout_s=5.0)
        yield client
        await client.close()


async def test_every_path_gives_the_same_answers(hsm):
    cvk = (await hsm.generate_key("CVK")).kcv
    tpk = (await hsm.form_key_from_components("TPK", ["1C" * 16, "02" * 16])).kcv
    pvk = (await hsm.generate_key("PVK")).kcv
    await hsm.generate_key("DEK", "AES")
    await hsm.generate_key("FPK")
    cvv2 = await hsm.generate_cvv(cvk, PAN, "3012", "000")
    assert await hsm.verify_cvv(cvk, PAN, "3012", "000", cvv2) is True
    assert await hsm.verify_cvv(cvk, PAN, "3012", "000", "000" if cvv2 != "000" else "111") is False
    pvv = await hsm.generate_pin_verification("1234", PAN, pvk, "pvv")
    tpk_key = bytes(a ^ b for a, b in zip(bytes.fromhex("1C" * 16), bytes.fromhex("02" * 16)))
    for pin, expected in (("1234", True), ("9999", False)):
        block = tdes_ecb_encrypt(tpk_key, pinblock.encode_pin_block(pin, PAN, 0)).hex()
        assert await hsm.verify_pin(block, PAN, tpk, 0, pvk, method="pvv", verification_value=pvv) is expected
    vault = await hsm.tokenize_pan(PAN)
    assert await hsm.fingerprint_pan(PAN) == [(1, vault.fingerprint)]
    assert await hsm.reveal_pan(vault.sealed_pan, vault.data_key_version, operator="ops", reason="test") == PAN
    assert {k.kcv for k in await hsm.list_keys()} >= {cvk, tpk, pvk}
    assert await hsm.generate_mac((await hsm.generate_key("TAK")).kcv, b"\x00\x01message") != ""


async def test_statuses_for_bad_input(hsm):
    cvk = (await hsm.generate_key("CVK")).kcv
    pvk = (await hsm.generate_key("PVK")).kcv
    cases = [
        (lambda: hsm.verify_pin("00" * 8, PAN, cvk, 0, pvk, method="pvv", verification_value="1234"), "11"),
        (lambda: hsm.generate_cvv("ABCDEF", PAN, "3012", "000"), "10"),
        (lambda: hsm.generate_pin_verification("12a4", PAN, pvk, "pvv"), "23"),
        (lambda: hsm.inject_ipek(cvk, "FFFF9876543210E00000"), "11"),
        (lambda: hsm.generate_cvv(cvk, PAN, "30X2", "000"), "15"),
    ]
    for call, status in cases:
        with pytest.raises(HsmError) as info:
            await call()
        assert info.value.code == status, info.value


async def _raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _answer(reader: asyncio.StreamReader) -> tuple[str, str, str, dict]:
    length = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 5), "big")
    return decode_answer(await asyncio.wait_for(reader.readexactly(length), 5))


async def test_protocol_errors_are_answered_and_the_connection_keeps_serving(served):
    _, server = served
    reader, writer = await _raw(server.port)
    try:
        writer.write(encode_request("0001", "QQ", [], {}))
        assert (await _answer(reader))[:3] == ("0001", "QR", "68")
        garbage = b"0002CW{not json"
        writer.write(len(garbage).to_bytes(2, "big") + garbage)
        assert (await _answer(reader))[:3] == ("0002", "CX", "15")
        writer.write(encode_request("0003", "NC", [], {}))
        header, code, status, body = await _answer(reader)
        assert (header, code, status) == ("0003", "ND", "00") and "lmk_kcv" in body["result"]
    finally:
        writer.close()


async def test_oversized_and_truncated_frames_close_only_that_connection(served):
    _, server = served
    reader, writer = await _raw(server.port)
    writer.write((60_000).to_bytes(2, "big") + b"0001NC")
    assert (await _answer(reader))[2] == "80"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    reader, writer = await _raw(server.port)
    writer.write((100).to_bytes(2, "big") + b"0001NC")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after the frame timeout
    client = await HsmClient.connect("127.0.0.1", server.port)
    try:
        assert (await client.diagnostics())["keys"] >= 0
    finally:
        await client.close()


async def test_timeout_and_lost_server_are_clear_errors_and_the_client_reconnects(tmp_path: Path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = await HsmClient.connect("127.0.0.1", port, timeout_s=0.3)  # accepted by the kernel, never answered
    with pytest.raises(HsmError) as info:
        await client.diagnostics()
    assert info.value.code == "90"
    await client.close()
    listener.close()
    with pytest.raises(HsmError) as info:
        await HsmClient.connect("127.0.0.1", port, timeout_s=0.3)
    assert info.value.code == "91"

    hsm = Hsm.open(tmp_path / "ks.json")
    server = HsmServer(hsm)
    await server.start("127.0.0.1", 0)
    port = server.port
    client = await HsmClient.connect("127.0.0.1", port)
    assert "lmk_kcv" in await client.diagnostics()
    await server.close()
    await asyncio.sleep(0.1)
    with pytest.raises(HsmError) as info:
        await client.diagnostics()
    assert info.value.code == "91"
    await server.start("127.0.0.1", port)
    assert "lmk_kcv" in await client.diagnostics()  # the next call reconnects
    await client.close()
    await server.close()
    await hsm.close()


def test_hsm_sim_serve_subprocess_and_connect_url(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hsm_sim.cli", "serve", "--port", str(port), "--keystore", str(tmp_path / "ks.json")],
        stdout=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)

        async def use() -> None:
            hsm = await connect(f"tcp://127.0.0.1:{port}")
            cvk = (await hsm.generate_key("CVK")).kcv
            assert await hsm.verify_cvv(cvk, PAN, "3012", "000", await hsm.generate_cvv(cvk, PAN, "3012", "000"))
            await hsm.close()

        asyncio.run(use())
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0, "SIGTERM stops the server cleanly"
    assert (tmp_path / "ks.json").stat().st_mode & 0o777 == 0o600
    audit = (tmp_path / "ks.json.audit.jsonl").read_text()
    assert PAN not in audit and "generate_cvv" in audit
    assert all(json.loads(line)["status"] in ("00", "01") for line in audit.splitlines())
