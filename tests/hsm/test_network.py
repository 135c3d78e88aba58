"""The HSM over mutual TLS: same answers as in process, specific statuses for bad input, and it keeps serving."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hsm_sim import MAX_PAN_FINGERPRINTS, ClientTls, Hsm, HsmError, connect
from hsm_sim.client import HsmClient
from hsm_sim.crypto import pinblock
from hsm_sim.crypto.des import tdes_ecb_encrypt
from hsm_sim.pki import ServerTls
from hsm_sim.protocol import decode_answer, encode_request
from hsm_sim.server import HsmServer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
PAN = "4761739001010010"
TPK_COMPONENTS = ["1C" * 16, "02" * 16]
TPK = bytes(a ^ b for a, b in zip(bytes.fromhex(TPK_COMPONENTS[0]), bytes.fromhex(TPK_COMPONENTS[1])))


async def test_every_path_gives_the_same_answers(served, client):
    local = served.hsm
    cvk, pvk, tak = [(await local.generate_key(t)).kcv for t in ("CVK", "PVK", "TAK")]
    tpk = (await local.form_key_from_components("TPK", TPK_COMPONENTS)).kcv
    await local.generate_key("DEK", "AES")
    await local.generate_key("FPK")
    engine, issuer, operator = await client("engine-1"), await client("issuer-1"), await client("alice")

    assert await issuer.generate_cvv(cvk, PAN, "3012", "000") == await local.generate_cvv(cvk, PAN, "3012", "000")
    cvv2 = await local.generate_cvv(cvk, PAN, "3012", "000")
    assert await engine.verify_cvv(cvk, PAN, "3012", "000", cvv2) is True
    assert await engine.verify_cvv(cvk, PAN, "3012", "000", "000" if cvv2 != "000" else "111") is False
    pvv = await issuer.generate_pin_verification("1234", PAN, pvk, "pvv")
    assert pvv == await local.generate_pin_verification("1234", PAN, pvk, "pvv")
    for pin, expected in (("1234", True), ("9999", False)):
        block = tdes_ecb_encrypt(TPK, pinblock.encode_pin_block(pin, PAN, 0)).hex()
        assert await engine.verify_pin(block, PAN, tpk, 0, pvk, method="pvv", verification_value=pvv) is expected
    vault = await issuer.tokenize_pan(PAN)
    assert await engine.fingerprint_pan(PAN) == await local.fingerprint_pan(PAN) == [(1, vault.fingerprint)]
    assert await operator.reveal_pan(vault.sealed_pan, vault.data_key_version, operator="alice", reason="test") == PAN
    assert {k.kcv for k in await engine.list_keys()} == {k.kcv for k in await local.list_keys()}
    assert await engine.key_info(cvk) == await local.key_info(cvk)
    mac = await engine.generate_mac(tak, b"\x00\x01message")
    assert mac == await local.generate_mac(tak, b"\x00\x01message") and await engine.verify_mac(tak, b"\x00\x01message", mac)


async def test_a_chunk_of_pans_is_fingerprinted_in_one_command_as_one_by_one(served, client):
    local = served.hsm
    await local.generate_key("DEK", "AES")
    await local.generate_key("FPK")
    await local.rotate_tokenization_keys()  # two fingerprint key versions: each PAN gets both, newest first
    engine, operator = await client("engine-1"), await client("alice")
    most = MAX_PAN_FINGERPRINTS // 2
    pans = [f"476173900101{i:04d}" for i in range(most)]
    batch = await engine.fingerprint_pans(pans)
    assert batch == [await local.fingerprint_pan(pan) for pan in pans]
    assert [len(one) for one in batch] == [2] * most
    for call, status in (
        (lambda: engine.fingerprint_pans([*pans, PAN]), "15"),  # one more than an answer holds
        (lambda: engine.fingerprint_pans([]), "15"),
        (lambda: engine.fingerprint_pans([PAN, "4761abc"]), "15"),
        (lambda: operator.fingerprint_pans([PAN]), "17"),  # an operator may reveal one PAN, not look up cards
    ):
        with pytest.raises(HsmError) as info:
            await call()
        assert info.value.code == status, info.value


async def test_statuses_for_bad_input(served, client):
    cvk = (await served.hsm.generate_key("CVK")).kcv
    pvk = (await served.hsm.generate_key("PVK")).kcv
    engine, issuer = await client("engine-1"), await client("issuer-1")
    cases = [
        (lambda: engine.verify_pin("00" * 8, PAN, cvk, 0, pvk, method="pvv", verification_value="1234"), "11"),
        (lambda: issuer.generate_cvv("ABCDEF", PAN, "3012", "000"), "10"),
        (lambda: issuer.generate_pin_verification("12a4", PAN, pvk, "pvv"), "23"),
        (lambda: issuer.generate_cvv(cvk, PAN, "30X2", "000"), "15"),
        (lambda: engine.call("verify_cvv", cvk, PAN), "15"),  # missing arguments
    ]
    for call, status in cases:
        with pytest.raises(HsmError) as info:
            await call()
        assert info.value.code == status, info.value


async def _raw(served, name: str = "engine-1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection as `name` that speaks frames by hand."""
    ctx = ClientTls.from_dir(served.pki, name).context()
    return await asyncio.open_connection("127.0.0.1", served.server.port, ssl=ctx, server_hostname="127.0.0.1")


async def _answer(reader: asyncio.StreamReader) -> tuple[str, str, str, dict]:
    length = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 5), "big")
    return decode_answer(await asyncio.wait_for(reader.readexactly(length), 5))


async def test_protocol_errors_are_answered_and_the_connection_keeps_serving(served):
    reader, writer = await _raw(served)
    try:
        writer.write(encode_request("0001", "QQ", [], {}))
        assert (await _answer(reader))[:3] == ("0001", "QR", "68")
        garbage = b"0002CW{not json"
        writer.write(len(garbage).to_bytes(2, "big") + garbage)
        assert (await _answer(reader))[:3] == ("0002", "CX", "15")
        writer.write(encode_request("0003", "ID", [], {}))
        header, code, status, body = await _answer(reader)
        assert (header, code, status) == ("0003", "IE", "00") and body["result"]["name"] == "engine-1"
    finally:
        writer.close()


async def test_oversized_and_truncated_frames_close_only_that_connection(served, client):
    reader, writer = await _raw(served)
    writer.write((60_000).to_bytes(2, "big") + b"0001ID")
    assert (await _answer(reader))[2] == "80"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    reader, writer = await _raw(served)
    writer.write((100).to_bytes(2, "big") + b"0001ID")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after the frame timeout
    engine = await client("engine-1")
    assert (await engine.who_am_i())["role"] == "engine"


async def test_timeout_and_lost_server_are_clear_errors_and_the_client_reconnects(tmp_path: Path, pki: Path):
    tls = ClientTls.from_dir(pki, "engine-1")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    with pytest.raises(HsmError) as info:  # accepted by the kernel, never answered: no TLS handshake
        await HsmClient.connect("127.0.0.1", port, tls=tls.context(), timeout_s=0.3)
    assert info.value.code == "91"
    listener.close()
    with pytest.raises(HsmError) as info:
        await connect(f"tcps://127.0.0.1:{port}", tls=tls)
    assert info.value.code == "91"

    hsm = Hsm.open(tmp_path / "ks.json")
    server = HsmServer(hsm, tls=ServerTls.from_dir(pki))
    await server.start("127.0.0.1", 0)
    port = server.port
    engine = await connect(f"tcps://127.0.0.1:{port}", tls=tls)
    assert (await engine.who_am_i())["name"] == "engine-1"
    await server.close()
    await asyncio.sleep(0.1)
    with pytest.raises(HsmError) as info:
        await engine.who_am_i()
    assert info.value.code == "91"
    await server.start("127.0.0.1", port)
    assert (await engine.who_am_i())["name"] == "engine-1"  # the next call reconnects
    await engine.close()
    await server.close()
    await hsm.close()


def test_hsm_sim_serve_subprocess(tmp_path: Path, pki: Path, hsm_sim_serve, served_audit):
    keystore = tmp_path / "ks.json"
    url = f"tcps://127.0.0.1:{hsm_sim_serve(keystore, pki, tmp_path)}"

    async def use() -> None:
        custodian = await connect(url, tls=ClientTls.from_dir(pki, "custodian-1"))
        cvk = (await custodian.generate_key("CVK")).kcv
        await custodian.close()
        engine = await connect(url, tls=ClientTls.from_dir(pki, "engine-1"))
        assert await engine.verify_cvv(cvk, PAN, "3012", "000", "123") in (True, False)
        with pytest.raises(HsmError):
            await engine.generate_cvv(cvk, PAN, "3012", "000")
        await engine.close()
        with pytest.raises(HsmError):  # no certificate, no TLS: nothing
            plain = await connect(url.replace("tcps", "tcp"))
            await plain.list_keys()

    asyncio.run(use())
    assert keystore.stat().st_mode & 0o777 == 0o600
    audit_path = tmp_path / "ks.json.audit.jsonl"
    assert audit_path.stat().st_mode & 0o777 == 0o600
    expected = {("custodian-1", "generate_key", "00"), ("engine-1", "generate_cvv", "17"), ("-", "connect", "17")}
    lines = served_audit(audit_path, including=expected)
    assert {(line["by"], line["cmd"], line["status"]) for line in lines} >= expected
    audit = subprocess.run(
        [sys.executable, "-m", "hsm_sim.cli", "audit", "--keystore", str(keystore), "--refusals", "--json"],
        capture_output=True, text=True, check=True, env={**os.environ},
    )
    refusals = json.loads(audit.stdout)
    assert [r["cmd"] for r in refusals] == ["generate_cvv", "connect"] and all(r["status"] == "17" for r in refusals)
