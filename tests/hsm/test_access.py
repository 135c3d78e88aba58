"""The HSM as a boundary: every client proves who it is, may run only its role's commands, and every
refusal is audited with who, what and why. Tried as an attacker would: anonymous, wrong role, forged,
expired and revoked certificates, plain TCP, and a captured session replayed."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path

import pytest

from hsm_sim import ROLES, ClientTls, HsmError, connect
from hsm_sim.client import HsmClient
from hsm_sim.crypto.des import kcv
from hsm_sim.pki import init_ca, issue, revoke
from hsm_sim.protocol import encode_request

PAN = "4761739001010010"


async def _keys(served) -> dict[str, str]:
    """An issuer's keys, made in process as `processor init` does before the HSM is served."""
    hsm = served.hsm
    keys = {t: (await hsm.generate_key(t)).kcv for t in ("CVK", "PVK", "BDK", "IMK-AC", "TAK")}
    keys["ZMK"] = (await hsm.form_key_from_components("ZMK", ["11" * 32, "22" * 32], "AES")).kcv
    await hsm.generate_key("DEK", "AES")
    await hsm.generate_key("FPK")
    return keys


async def test_each_role_runs_its_commands_and_is_refused_the_rest(served, client):
    keys = await _keys(served)
    engine, issuer, operator = await client("engine-1"), await client("issuer-1"), await client("alice")
    custodian, loader = await client("custodian-1"), await client("loader-1")
    assert engine.identity == {"name": "engine-1", "role": "engine", "commands": sorted(engine.identity["commands"], key=engine.identity["commands"].index)}

    cvv2 = await issuer.generate_cvv(keys["CVK"], PAN, "3012", "000")
    assert await engine.verify_cvv(keys["CVK"], PAN, "3012", "000", cvv2) is True
    vault = await issuer.tokenize_pan(PAN)
    assert await operator.reveal_pan(vault.sealed_pan, vault.data_key_version, operator="alice", reason="TICKET-42") == PAN
    assert len(await loader.inject_ipek(keys["BDK"], "FFFF9876543210E00000")) == 32
    assert (await custodian.export_key(keys["CVK"], keys["ZMK"])).startswith("D")

    refused = [
        (engine, lambda: engine.reveal_pan(vault.sealed_pan, vault.data_key_version, operator="engine-1", reason="x")),
        (engine, lambda: engine.export_key(keys["CVK"], keys["ZMK"])),
        (engine, lambda: engine.form_key_from_components("ZPK", ["1C" * 16, "02" * 16])),
        (engine, lambda: engine.add_key_component("ZPK", "1C" * 16)),
        (engine, lambda: engine.generate_cvv(keys["CVK"], PAN, "3012", "000")),
        (engine, lambda: engine.inject_ipek(keys["BDK"], "FFFF9876543210E00000")),
        (engine, lambda: engine.translate_pin("00" * 8, PAN, keys["BDK"], 0, keys["BDK"], 0)),
        (operator, lambda: operator.export_key(keys["CVK"], keys["ZMK"])),
        (operator, lambda: operator.list_keys()),
        (issuer, lambda: issuer.reveal_pan(vault.sealed_pan, vault.data_key_version, operator="issuer-1", reason="x")),
        (loader, lambda: loader.generate_key("ZMK")),
        (custodian, lambda: custodian.reveal_pan(vault.sealed_pan, vault.data_key_version, operator="custodian-1", reason="x")),
        (custodian, lambda: custodian.verify_cvv(keys["CVK"], PAN, "3012", "000", cvv2)),
    ]
    for who, call in refused:
        with pytest.raises(HsmError) as info:
            await call()
        assert info.value.code == "17" and "may not run" in info.value.message, info.value
    lines = served.refusals()
    assert [(line["by"], line["cmd"]) for line in lines] == [
        ("engine-1", "reveal_pan"), ("engine-1", "export_key"), ("engine-1", "form_key_from_components"),
        ("engine-1", "add_key_component"), ("engine-1", "generate_cvv"), ("engine-1", "inject_ipek"),
        ("engine-1", "translate_pin"), ("alice", "export_key"), ("alice", "list_keys"), ("issuer-1", "reveal_pan"),
        ("loader-1", "generate_key"), ("custodian-1", "reveal_pan"), ("custodian-1", "verify_cvv"),
    ]
    assert all(line["why"].startswith(f"role {line['role']} may not run") for line in lines)
    # Still connected: a refusal ends nothing but the command.
    assert await engine.verify_cvv(keys["CVK"], PAN, "3012", "000", cvv2) is True


def test_no_role_may_learn_a_clear_key_pin_or_ipek_but_the_key_loader():
    revealing = {"inject_ipek", "inject_aes_initial_key"}  # a terminal's initial key, for injection
    for role, commands in ROLES.items():
        assert not (commands & revealing) or role == "key-loader", role
    assert "form_key_from_components" not in set().union(*ROLES.values())  # one party holding every component
    assert ROLES["operator"] == {"who_am_i", "reveal_pan"}
    assert not ROLES["engine"] & {"generate_cvv", "generate_pin_verification", "translate_pin", "export_key", "reveal_pan"}


async def test_an_operator_reveals_only_in_their_own_name(served, client):
    await _keys(served)
    vault = await served.hsm.tokenize_pan(PAN)
    operator = await client("alice")
    with pytest.raises(HsmError) as info:
        await operator.reveal_pan(vault.sealed_pan, vault.data_key_version, operator="mallory", reason="TICKET-1")
    assert info.value.code == "17" and "in the name of 'mallory'" in info.value.message
    assert await operator.reveal_pan(vault.sealed_pan, vault.data_key_version, operator="alice", reason="TICKET-2") == PAN
    lines = served.audit()
    assert {"by": "alice", "cmd": "reveal_pan", "status": "00", "operator": "alice", "reason": "TICKET-2"}.items() <= lines[-1].items()
    assert lines[-2]["why"].endswith("in the name of 'mallory'")


async def test_forming_a_key_from_components_needs_two_custodians(served, client):
    first, second = await client("custodian-1"), await client("custodian-2")
    opened = await first.add_key_component("ZMK", "11" * 32, "AES")
    assert opened.key is None and opened.custodians == ["custodian-1"]
    with pytest.raises(HsmError) as info:
        await first.add_key_component("ZMK", "22" * 32, "AES", ceremony=opened.ceremony)
    assert info.value.code == "17" and "dual control needs another custodian" in info.value.message
    with pytest.raises(HsmError) as info:
        await second.add_key_component("ZMK", "22" * 16, "AES", ceremony=opened.ceremony)
    assert info.value.code == "15" and "forms a 256-bit AES ZMK" in info.value.message
    formed = await second.add_key_component("ZMK", "22" * 32, "AES", ceremony=opened.ceremony)
    assert formed.custodians == ["custodian-1", "custodian-2"] and formed.key is not None
    assert formed.key.origin == "components" and formed.key.kcv == kcv(bytes.fromhex("33" * 32), "AES")
    assert formed.component_kcvs == [kcv(bytes.fromhex("11" * 32), "AES"), kcv(bytes.fromhex("22" * 32), "AES")]
    cvk = (await first.generate_key("CVK")).kcv
    assert (await second.export_key(cvk, formed.key.kcv)).startswith("D")
    with pytest.raises(HsmError) as info:
        await second.add_key_component("ZMK", "33" * 32, "AES", ceremony=opened.ceremony)
    assert info.value.code == "15" and "no open ceremony" in info.value.message


async def test_an_anonymous_client_gets_nothing_but_a_refusal(served):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(served.pki / "ca.pem")
    with pytest.raises(HsmError) as info:
        await HsmClient.connect("127.0.0.1", served.server.port, tls=ctx)
    assert info.value.code == "17" and "no client certificate" in info.value.message
    assert served.refusals()[-1] == {**served.refusals()[-1], "by": "anonymous", "cmd": "who_am_i", "why": "no client certificate"}


async def test_plain_tcp_gets_no_answer_at_all(served):
    reader, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
    writer.write(encode_request("0001", "KL", [], {}))
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert served.refusals()[-1]["cmd"] == "connect" and "wrong version number" in served.refusals()[-1]["why"]
    reader, writer = await asyncio.open_connection("127.0.0.1", served.server.port)  # connects, says nothing
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert "no TLS handshake within" in served.refusals()[-1]["why"]


async def _refused_certificate(served, tls: ClientTls) -> HsmError:
    with pytest.raises(HsmError) as info:
        await connect(served.url, tls=tls)
    return info.value


async def test_a_forged_certificate_is_refused(served, tmp_path):
    forger = init_ca(tmp_path / "forger")  # another CA, issuing the engine's very name and role
    issue(forger, role="engine", name="engine-1")
    error = await _refused_certificate(served, ClientTls(served.pki / "ca.pem", forger / "engine-1.pem", forger / "engine-1.key"))
    assert error.code == "17" and "unknown ca" in error.message
    line = served.refusals()[-1]
    assert line["cmd"] == "connect" and "unable to get local issuer certificate" in line["why"] and line["peer"]


async def test_an_expired_certificate_is_refused(served, tmp_path):
    import shutil

    folder = tmp_path / "pki"
    shutil.copytree(served.pki, folder)
    now = dt.datetime.now(dt.UTC)
    issue(folder, role="engine", name="engine-old", valid_from=now - dt.timedelta(days=400), valid_until=now - dt.timedelta(days=35))
    error = await _refused_certificate(served, ClientTls.from_dir(folder, "engine-old"))
    assert error.code == "17" and "expired" in error.message
    assert "certificate has expired" in served.refusals()[-1]["why"]


async def test_a_revoked_client_is_refused_at_once_even_mid_connection(tmp_path):
    from hsm_sim import Hsm
    from hsm_sim.pki import ServerTls
    from hsm_sim.server import HsmServer

    pki = init_ca(tmp_path / "pki")
    issue(pki, role="engine", name="engine-9")
    hsm = Hsm.open(tmp_path / "ks.json")
    cvk = (await hsm.generate_key("CVK")).kcv
    server = HsmServer(hsm, tls=ServerTls.from_dir(pki))
    await server.start("127.0.0.1", 0)
    url = f"tcps://127.0.0.1:{server.port}"
    try:
        engine = await connect(url, tls=ClientTls.from_dir(pki, "engine-9"))
        assert await engine.verify_cvv(cvk, PAN, "3012", "000", "000") in (True, False)
        revoke(pki, "engine-9")
        await asyncio.sleep(1.1)  # the server re-reads the CRL at most once a second
        with pytest.raises(HsmError) as info:
            await engine.verify_cvv(cvk, PAN, "3012", "000", "000")
        assert info.value.code == "17" and "revoked" in info.value.message
        await engine.close()
        with pytest.raises(HsmError) as info:
            await connect(url, tls=ClientTls.from_dir(pki, "engine-9"))
        assert info.value.code == "17" and "revoked" in info.value.message
        hsm.audit.flush()
        refusals = [line for line in map(__import__("json").loads, (tmp_path / "ks.json.audit.jsonl").read_text().splitlines())
                    if line["status"] == "17"]
        assert [(r["by"], r["cmd"]) for r in refusals] == [("engine-9", "verify_cvv"), ("engine-9", "who_am_i")]
        assert all("was revoked" in r["why"] for r in refusals)
    finally:
        await server.close()
        await hsm.close()


async def test_a_captured_session_replayed_on_a_new_connection_does_nothing(served, client):
    """An attacker records a custodian's whole TCP stream and plays it again: the HSM runs nothing."""
    captured = bytearray()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", served.server.port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bool) -> None:
            while data := await src.read(65536):
                if record:
                    captured.extend(data)
                dst.write(data)
            dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False), return_exceptions=True)

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
    proxy_url = f"tcps://127.0.0.1:{proxy.sockets[0].getsockname()[1]}"
    custodian = await connect(proxy_url, tls=ClientTls.from_dir(served.pki, "custodian-1"))
    await custodian.generate_key("CVK")
    await custodian.close()
    proxy.close()
    keys_before = len(await served.hsm.list_keys())
    commands_before = served.server.commands

    reader, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
    writer.write(bytes(captured))
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert len(await served.hsm.list_keys()) == keys_before and served.server.commands == commands_before
    assert b"CVK" not in answer and len(answer) < 2000  # the server's handshake and an alert, nothing more
    line = served.refusals()[-1]
    assert line["cmd"] == "connect" and line["by"] == "-"


async def test_the_client_checks_the_hsm_too(served, tmp_path):
    impostor = init_ca(tmp_path / "impostor")
    issue(impostor, role="engine", name="engine-1")
    tls = ClientTls(impostor / "ca.pem", served.pki / "engine-1.pem", served.pki / "engine-1.key")
    with pytest.raises(HsmError) as info:
        await connect(served.url, tls=tls)
    assert info.value.code == "91" and "not the one the CA vouches for" in info.value.message


async def test_tcps_needs_a_certificate():
    with pytest.raises(HsmError) as info:
        await connect("tcps://127.0.0.1:1")
    assert info.value.code == "15" and "certificate" in info.value.message


def test_file_permissions_of_the_pki(pki: Path):
    assert pki.stat().st_mode & 0o777 == 0o700
    for path in pki.glob("*.key"):
        assert path.stat().st_mode & 0o777 == 0o600, path


async def test_the_engine_never_obtains_an_ipek_a_clear_key_or_a_clear_pin(served, client):
    """Every command outside the engine's role is refused whatever its arguments, and every command in it,
    run with every key the HSM holds in every argument slot, answers nothing that is a clear key, an
    IPEK, a DUKPT working key or the PIN."""
    from hsm_sim import COMMANDS
    from hsm_sim.crypto import dukpt, pinblock
    from hsm_sim.crypto.des import tdes_ecb_encrypt
    from hsm_sim.crypto.mac import retail_mac

    components = {"CVK": ["4F" * 16, "10" * 16], "PVK": ["3B" * 16, "08" * 16], "BDK": ["01" * 16, "F2" * 16],
                  "TPK": ["1C" * 16, "02" * 16], "TAK": ["5A" * 16, "06" * 16], "IMK-AC": ["5D" * 16, "20" * 16],
                  "ZMK": ["11" * 16, "24" * 16]}
    clear = {t: bytes(a ^ b for a, b in zip(*(bytes.fromhex(c) for c in parts))) for t, parts in components.items()}
    kcvs = {t: (await served.hsm.form_key_from_components(t, parts)).kcv for t, parts in components.items()}
    await served.hsm.generate_key("DEK", "AES")
    await served.hsm.generate_key("FPK")
    pin, ksn = "482190735", "FFFF9876543210E00003"
    ipek = dukpt.derive_ipek(clear["BDK"], bytes.fromhex(ksn))
    transaction_key = dukpt.derive_transaction_key(ipek, bytes.fromhex(ksn))
    working = [dukpt.pin_encryption_key(transaction_key), dukpt.mac_request_key(transaction_key), dukpt.mac_response_key(transaction_key)]
    secrets = [k.hex().upper() for k in [*clear.values(), ipek, *working]]
    tpk_block = tdes_ecb_encrypt(clear["TPK"], pinblock.encode_pin_block(pin, PAN, 0)).hex().upper()
    dukpt_block = tdes_ecb_encrypt(working[0], pinblock.encode_pin_block(pin, PAN, 0)).hex().upper()
    signed = retail_mac(working[1], b"\x00" * 16).hex().upper()
    engine = await client("engine-1")

    for name in COMMANDS.values():
        if name not in ROLES["engine"]:
            with pytest.raises(HsmError) as info:
                await engine.call(name)
            assert info.value.code == "17", name

    answers: list[str] = []

    async def run(name: str, *args: object, **kwargs: object) -> None:
        try:
            answers.append(repr(await engine.call(name, *args, **kwargs)))
        except HsmError as exc:
            answers.append(exc.message)

    for key in kcvs.values():
        for other in kcvs.values():
            for block in (tpk_block, dukpt_block):
                for extra in ({}, {"ksn": ksn}):
                    await run("verify_pin", block, PAN, key, 0, other, method="pvv", verification_value="1234", **extra)
        for extra in ({}, {"ksn": ksn}):
            await run("generate_mac", key, b"\x00" * 16, **extra)
            await run("verify_mac", key, b"\x00" * 16, "00" * 8, **extra)
            await run("verify_request", key, b"\x00" * 16, "00" * 8, pan=PAN, cvk=key, cvvs=[["3012", "000", "123"]], **extra)
        # A request whose MAC verifies: the fingerprint and the CVV answer run, with every key as the CVK.
        await run("verify_request", kcvs["BDK"], b"\x00" * 16, signed, ksn=ksn, pan=PAN, cvk=key, cvvs=[["3012", "000", "123"]])
        await run("verify_cvv", key, PAN, "3012", "000", "123")
        await run("verify_arqc", key, PAN, "00", "0001", "00" * 8, "00" * 29, cvn=18, arc="3030")
        await run("key_info", key)
    await run("list_keys")
    await run("tokenize_pan", PAN)
    await run("fingerprint_pan", PAN)
    await run("fingerprint_pans", [PAN, PAN])
    await run("who_am_i")
    # A command added to the engine's role must be tried here too.
    assert ROLES["engine"] == {"verify_pin", "generate_mac", "verify_mac", "verify_request", "verify_cvv", "verify_arqc",
                               "key_info", "list_keys", "tokenize_pan", "fingerprint_pan", "fingerprint_pans", "who_am_i"}
    text = "\n".join(answers).upper()
    assert len(answers) == len(kcvs) * 38 + 5 and "FALSE" in text and "FINGERPRINT" in text  # the commands ran
    assert "{'MAC_OK': TRUE, 'FINGERPRINTS': [[1, '" in text  # verify_request ran its parts too
    assert not [s for s in secrets if s in text]
    assert pin not in text
