"""Everything the HSM holds for a client or writes for itself has a bound: frames both ways, the answers
that grow with the key store (paged), the audit log (rotated), and idle connections (closed)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hsm_sim import ClientTls, Hsm, HsmError, all_keys, connect
from hsm_sim.audit import AuditLog, read, rotated
from hsm_sim.client import HsmClient
from hsm_sim.framing import FrameTooLarge
from hsm_sim.hsm import FINGERPRINT_VERSIONS, KEY_PAGE
from hsm_sim.pki import ServerTls
from hsm_sim.protocol import MAX_FRAME_BYTES, encode_answer
from hsm_sim.server import HsmServer, ServerLimits

PAN = "4761739001010010"


async def test_list_keys_pages_so_an_answer_fits_a_frame_however_many_keys(served, client):
    for _ in range(KEY_PAGE + 20):
        await served.hsm.generate_key("CVK")
    await served.hsm.generate_key("DEK", "AES")
    custodian = await client("custodian-1")
    first = await custodian.list_keys()
    assert len(first) == KEY_PAGE
    assert len(await custodian.list_keys(offset=KEY_PAGE)) == 21
    everything = await all_keys(custodian)
    assert [k.kcv for k in everything] == [k.kcv for k in await all_keys(served.hsm)] and len(everything) == KEY_PAGE + 21
    assert [k.key_type for k in await all_keys(custodian, "DEK")] == ["DEK"]
    for bad in ({"limit": KEY_PAGE + 1}, {"limit": 0}, {"offset": -1}, {"limit": "all"}):
        with pytest.raises(HsmError) as info:
            await custodian.list_keys(**bad)
        assert info.value.code == "15", bad
    assert "limit must be 1 to 50" in str((await _error(custodian.list_keys(limit=KEY_PAGE + 1))))


async def _error(call) -> HsmError:
    try:
        await call
    except HsmError as exc:
        return exc
    raise AssertionError("no error")


async def test_an_answer_over_the_frame_limit_is_refused_with_a_clear_status(tmp_path: Path, pki: Path):
    hsm = Hsm.open(tmp_path / "ks.json")
    for _ in range(KEY_PAGE):
        await hsm.generate_key("CVK")
    server = HsmServer(hsm, tls=ServerTls.from_dir(pki), limits=ServerLimits(max_frame_bytes=2048))
    await server.start("127.0.0.1", 0)
    try:
        custodian = await connect(f"tcps://127.0.0.1:{server.port}", tls=ClientTls.from_dir(pki, "custodian-1"))
        error = await _error(custodian.list_keys())
        assert error.code == "80" and "the limit is 2048" in error.message and "offset and limit" in error.message
        assert len(await custodian.list_keys(limit=5)) == 5  # the connection serves on
        await custodian.close()
    finally:
        await server.close()
        await hsm.close()
    with pytest.raises(FrameTooLarge):
        encode_answer("0001", "KL", "00", {"result": "x" * MAX_FRAME_BYTES})


async def test_the_client_refuses_an_oversized_answer_frame():
    async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"\xff\xff" + b"0" * 1000)  # announces 65535 bytes
        await writer.drain()
        await asyncio.sleep(5)

    server = await asyncio.start_server(liar, "127.0.0.1", 0)
    try:
        hsm = await HsmClient.connect("127.0.0.1", server.sockets[0].getsockname()[1], timeout_s=3)
        error = await _error(hsm.who_am_i())
        assert error.code == "80" and "answer frame of 65535 bytes, the limit is 16384" in error.message
        await hsm.close()
    finally:
        server.close()


async def test_fingerprints_are_bounded_however_often_the_keys_rotate():
    hsm = Hsm.ephemeral()
    await hsm.generate_key("DEK", "AES")
    await hsm.generate_key("FPK")
    for _ in range(FINGERPRINT_VERSIONS + 3):
        await hsm.rotate_tokenization_keys()
    newest = (await hsm.tokenize_pan(PAN)).fingerprint_version
    versions = [v for v, _ in await hsm.fingerprint_pan(PAN)]
    assert versions == list(range(newest, newest - FINGERPRINT_VERSIONS, -1))


async def test_an_idle_client_is_disconnected_and_its_next_call_reconnects(tmp_path: Path, pki: Path):
    hsm = Hsm.open(tmp_path / "ks.json")
    server = HsmServer(hsm, tls=ServerTls.from_dir(pki), limits=ServerLimits(idle_timeout_s=0.3))
    await server.start("127.0.0.1", 0)
    try:
        engine = await connect(f"tcps://127.0.0.1:{server.port}", tls=ClientTls.from_dir(pki, "engine-1"))
        assert len(server.connections) == 1
        await asyncio.sleep(0.8)
        assert len(server.connections) == 0
        assert (await engine.who_am_i())["name"] == "engine-1"
        await engine.close()
    finally:
        await server.close()
        await hsm.close()


def test_the_audit_log_rotates_at_its_bound_and_is_read_across_its_files(tmp_path: Path):
    path = tmp_path / "audit" / "hsm.audit.jsonl"
    audit = AuditLog(path, max_bytes=4096, keep=2)
    for i in range(300):
        audit.write("engine-1", "engine", "verify_cvv", "00", (f"{i:06X}",))
    audit.close()
    assert [p.name for p in rotated(path)] == ["hsm.audit.jsonl.2", "hsm.audit.jsonl.1", "hsm.audit.jsonl"]
    assert not path.with_name("hsm.audit.jsonl.3").exists()
    for part in rotated(path):
        assert part.stat().st_size <= 4096 and part.stat().st_mode & 0o777 == 0o600
    kept = [record["keys"][0] for record in read(path)]
    assert kept[-1] == f"{299:06X}" and kept == [f"{i:06X}" for i in range(300 - len(kept), 300)]  # the newest, in order
    assert 40 < len(kept) < 300

    env = {**os.environ, "HSM_AUDIT_MAX_BYTES": "4096"}
    shown = subprocess.run([sys.executable, "-m", "hsm_sim.cli", "audit", "--file", str(path), "--limit", "0", "--json"],
                           env=env, capture_output=True, text=True)
    assert shown.returncode == 0 and len(json.loads(shown.stdout)) == len(kept)


def test_the_audit_bound_from_the_environment_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HSM_AUDIT_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match="HSM_AUDIT_MAX_BYTES='lots' must be a whole number of at least 4096"):
        AuditLog(tmp_path / "a.jsonl")
    monkeypatch.setenv("HSM_AUDIT_MAX_BYTES", "8192")
    monkeypatch.setenv("HSM_AUDIT_KEEP", "3")
    audit = AuditLog(tmp_path / "a.jsonl")
    assert (audit.max_bytes, audit.keep) == (8192, 3)
    audit.close()
