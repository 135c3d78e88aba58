"""The virtual card through pyscard -> pcscd -> vpcd, and the vpcd wire protocol."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from pyemv.ac import generate_arpc_1
from pyemv.kd import derive_common_sk

from terminal_sim.emv import tlv
from terminal_sim.emv.atr import build_atr
from terminal_sim.emv.card import VirtualCard
from terminal_sim.emv.kernel import complete, read_card
from terminal_sim.pcsc import PcscError, PcscReader, list_readers
from terminal_sim.vpcd import VpcdCardServer, VpcdError, card_protocol

pytestmark = pytest.mark.filterwarnings("ignore:.*TripleDES.*")


def _pcscd_sees(reader: str, atr: bytes | None, timeout_s: float = 10.0) -> None:
    """Wait until pcscd reports `reader` holding a card with this ATR, or empty (atr None).

    pcscd learns of a card arriving or leaving by polling the driver: a card served right after
    another one left must wait for pcscd to have seen both, or pcscd still describes the old one.
    """
    from smartcard import scard

    _, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            _, states = scard.SCardGetStatusChange(context, 0, [(reader, scard.SCARD_STATE_UNAWARE)])
            _, state, seen = states[0]
            if atr is None and state & scard.SCARD_STATE_EMPTY:
                return
            if atr is not None and state & scard.SCARD_STATE_PRESENT and bytes(seen) == atr:
                return
            assert time.monotonic() < deadline, f"pcscd did not see {reader} {'empty' if atr is None else 'with ' + atr.hex()}"
            time.sleep(0.05)
    finally:
        scard.SCardReleaseContext(context)


@contextlib.contextmanager
def _served(card, protocol: str = "T=0", reader: str | None = "Virtual PCD 00 00") -> Iterator[VpcdCardServer]:
    """The card in the vpcd reader for the block; with `reader`, only once pcscd describes it, and until it saw it go."""
    server = VpcdCardServer(card, max_connect_attempts=30, retry_delay_s=0.1, protocol=protocol)
    server.start()
    try:
        assert server.wait_connected(5.0), f"card did not reach vpcd: {server.error}"
        if reader is not None:
            _pcscd_sees(reader, server.atr)
        yield server
    finally:
        server.stop()
        if reader is not None:
            _pcscd_sees(reader, None)


@contextlib.contextmanager
def _reader(name: str, protocol: str | None = None) -> Iterator[PcscReader]:
    reader = PcscReader(name, protocol)
    reader.connect(timeout_s=10.0)
    try:
        yield reader
    finally:
        reader.disconnect()


def _read(emv, transmit, contactless: bool):
    return read_card(
        transmit,
        contactless=contactless,
        amount_minor=4_200,
        currency_numeric="978",
        country_numeric="250",
        unpredictable_number=emv.UN,
        date=emv.TXN_DATE,
    )


def _issuer(emv, t: dict[str, bytes]) -> tuple[bytes, bytes]:
    """ARQC and issuer authentication data (91, ARPC method 1) as the issuer computes them for CVN 18."""
    c = emv.issuer_cvn(18)
    kw = {f"tag_{k.lower()}": t[k] for k in ("9F02", "9F03", "9F1A", "95", "5F2A", "9A", "9C", "9F37", "82", "9F36")}
    arqc = c.generate_ac(**kw, tag_9f10=t["9F10"])
    sk = derive_common_sk(c.icc_mk_ac, t["9F36"] + bytes(6))
    return arqc, generate_arpc_1(sk, t["9F26"], b"00") + b"00"


@pytest.mark.pcsc
@pytest.mark.parametrize("protocol", ["T=0", "T=1"])
def test_contact_transaction_end_to_end_through_pcscd(emv, pcscd, tmp_path, protocol):
    state = tmp_path / "card-state.json"
    card = VirtualCard(emv.build_profile(18), state)
    with _served(card, protocol) as server, _reader(pcscd, protocol) as reader:
        assert (reader.atr, reader.protocol) == (build_atr(protocol), protocol)
        result = _read(emv, reader.transmit, contactless=False)
        de55 = tlv.flatten(tlv.parse(result.de55()))
        arqc, issuer_auth = _issuer(emv, de55)
        assert de55["9F26"] == arqc
        assert result.pan == emv.PAN
        assert complete(reader.transmit, tlv.encode("91", issuer_auth), True, read_result=result) == "TC"
        assert server.apdus_served >= 8
    assert json.loads(state.read_text())["atc"] == 1


@pytest.mark.pcsc
def test_contactless_transaction_and_bad_arpc_through_pcscd(emv, pcscd):
    with _served(VirtualCard(emv.build_profile(18, contactless=True)), card_protocol(True)), _reader(pcscd) as reader:
        result = _read(emv, reader.transmit, contactless=True)
        assert result.icc_tags["9F26"] == _issuer(emv, result.icc_tags)[0]
    card = VirtualCard(emv.build_profile(18))
    with _served(card), _reader(pcscd) as reader:
        result = _read(emv, reader.transmit, contactless=False)
        _, issuer_auth = _issuer(emv, result.icc_tags)
        forged = bytes([issuer_auth[0] ^ 0xFF]) + issuer_auth[1:]
        assert complete(reader.transmit, {"91": forged}, True, read_result=result) == "AAC"


@pytest.mark.pcsc
def test_reader_follows_61xx_and_6cxx(emv, pcscd):
    with _served(VirtualCard(emv.build_profile(18)), "T=0"), _reader(pcscd) as reader:
        assert reader.protocol == "T=0"
        fci = reader.transmit(bytes.fromhex("00A4040007A000000003101000"))
        assert fci[-2:] == b"\x90\x00" and tlv.parse(fci[:-2])[0].tag == "6F"
        assert reader.transmit(bytes.fromhex("80A8000002830000"))[-2:] == b"\x90\x00"
        record = reader.transmit(bytes.fromhex("00B2010C05"))  # Le too short: card says 6Cxx
        assert record[-2:] == b"\x90\x00"
        assert tlv.find(tlv.parse(record[:-2]), "57") is not None
        assert reader.transmit(bytes.fromhex("0012000000")) == b"\x6d\x00"


@pytest.mark.pcsc
def test_pyscard_sees_t0_procedure_bytes_and_whole_t1_answers(emv, pcscd):
    """Through pyscard alone (no help from our reader class): what each protocol puts on the wire."""
    from smartcard.CardConnection import CardConnection
    from smartcard.System import readers

    select = list(bytes.fromhex("00A4040007A000000003101000"))
    get_atc = list(bytes.fromhex("80CA9F3600"))
    for protocol, wanted in (("T=0", CardConnection.T0_protocol), ("T=1", CardConnection.T1_protocol)):
        with _served(VirtualCard(emv.build_profile(18)), protocol) as server:
            with _reader(pcscd):
                pass
            connection = next(r for r in readers() if str(r) == pcscd).createConnection()
            connection.connect(protocol=wanted)
            try:
                assert bytes(connection.getATR()) == server.atr and connection.getProtocol() == wanted
                data, sw1, sw2 = connection.transmit(select)
                if protocol == "T=0":
                    assert (data, sw1) == ([], 0x61)
                    data, sw1, sw2 = connection.transmit([0x00, 0xC0, 0x00, 0x00, sw2])
                assert (sw1, sw2) == (0x90, 0x00) and data[0] == 0x6F
                data, sw1, sw2 = connection.transmit(get_atc)
                if protocol == "T=0":
                    assert (data, sw1, sw2) == ([], 0x6C, 5)
                    data, sw1, sw2 = connection.transmit(get_atc[:-1] + [sw2])
                assert (sw1, sw2) == (0x90, 0x00) and data[:3] == [0x9F, 0x36, 0x02]
            finally:
                connection.disconnect()
                connection.release()


@pytest.mark.pcsc
def test_removed_card_is_reported_within_the_timeout(emv, pcscd):
    assert pcscd in list_readers()
    with _served(VirtualCard(emv.build_profile(18))), _reader(pcscd) as reader:
        assert reader.transmit(bytes.fromhex("80CA9F3600"))[-2:] == b"\x90\x00"
    with pytest.raises(PcscError, match="no card within 0.5 s"):
        PcscReader(pcscd).connect(timeout_s=0.5)
    with pytest.raises(PcscError, match="not connected"):
        PcscReader(pcscd).transmit(bytes.fromhex("80CA9F3600"))


# ---- vpcd wire protocol against a plain TCP listener ----------------------


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(2, "big") + payload


def _recv_frame(conn: socket.socket) -> bytes:
    header = conn.recv(2, socket.MSG_WAITALL)
    return conn.recv(int.from_bytes(header, "big"), socket.MSG_WAITALL)


def test_card_speaks_vpcd_and_reconnects_after_the_reader_drops(emv):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5.0)
    port = listener.getsockname()[1]
    card = VirtualCard(emv.build_profile(18))
    answers: list[bytes] = []

    def reader_side() -> None:
        for _ in range(2):  # the second session proves the reconnect
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5.0)
                conn.sendall(_frame(b"\x01"))  # power on: no answer expected
                conn.sendall(_frame(b"\x04"))
                answers.append(_recv_frame(conn))
                conn.sendall(_frame(bytes.fromhex("80CA9F3600")))
                answers.append(_recv_frame(conn))

    thread = threading.Thread(target=reader_side)
    thread.start()
    server = VpcdCardServer(card, port=port, retry_delay_s=0.05)
    with server:
        thread.join(10.0)
    listener.close()
    assert not thread.is_alive()
    # T=0: GET DATA with Le = 00 (256) is answered 6Cxx with the length the card has.
    assert answers == [build_atr("T=0"), bytes.fromhex("6C05")] * 2
    assert server.connections >= 2 and server.apdus_served == 2


def test_card_gives_up_after_bounded_connection_attempts(emv):
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # closed again: nothing listens there
    server = VpcdCardServer(VirtualCard(emv.build_profile(18)), port=port, max_connect_attempts=3, retry_delay_s=0.01)
    server.start()
    assert server.wait_connected(2.0) is False
    server.stop()
    assert isinstance(server.error, VpcdError)
    assert "refused 3 connection attempts" in str(server.error)


def test_serve_card_loads_a_sealed_profile_and_stops_on_sigterm(emv, tmp_path):
    profile_path = tmp_path / "card.json"
    emv.build_profile(10).save(profile_path, emv.TRANSPORT_KEY)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10.0)
    port = listener.getsockname()[1]
    code = (
        "import sys; from pathlib import Path; from terminal_sim.vpcd import serve_card; "
        f"serve_card(Path({str(profile_path)!r}), Path({str(tmp_path / 'state.json')!r}), port={port})"
    )
    env = dict(os.environ, TERMINAL_SIM_TRANSPORT_KEY=emv.TRANSPORT_KEY.hex())
    proc = subprocess.Popen([sys.executable, "-W", "ignore", "-c", code], env=env, stderr=subprocess.PIPE)
    try:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5.0)
            conn.sendall(_frame(b"\x04"))
            assert _recv_frame(conn) == build_atr("T=0")
            conn.sendall(_frame(bytes.fromhex("00A4040007A000000003101000")))
            waiting = _recv_frame(conn)
            assert waiting[0] == 0x61
            conn.sendall(_frame(bytes([0x00, 0xC0, 0x00, 0x00, waiting[1]])))
            assert _recv_frame(conn)[-2:] == b"\x90\x00"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(5.0) == 0, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5.0)
