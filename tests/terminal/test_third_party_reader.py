"""A third-party PC/SC program reads our virtual card: pcsc-tools' `scriptor` sends the APDUs an EMV
reader sends (SELECT PSE, READ RECORD, SELECT AID, GET PROCESSING OPTIONS, READ RECORD, GENERATE AC
with a well-formed CDOL1, GET DATA) through pcscd and vpcd, in T=0 and in T=1.

In T=0 scriptor is driven the way a T=0 reader works: after 61xx it sends GET RESPONSE for xx bytes,
after 6Cxx the same command again with Le = xx. In T=1 every answer comes whole, with 90 00."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading

import pytest
from test_pcsc_vpcd import _served

from terminal_sim.emv import tlv
from terminal_sim.emv.card import VirtualCard

pytestmark = [pytest.mark.pcsc, pytest.mark.filterwarnings("ignore:.*TripleDES.*")]


def _scriptor() -> str:
    path = shutil.which("scriptor")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("pcsc-tools (scriptor) is not installed: scripts/setup test installs it")
        pytest.skip("pcsc-tools (scriptor) is not installed")
    return path


def _spaced(hex_bytes: str) -> str:
    return " ".join(hex_bytes[i : i + 2] for i in range(0, len(hex_bytes), 2))


def _emv_script(profile) -> list[str]:
    cdol1_length = sum(length for _, length in tlv.parse_dol(bytes.fromhex(profile.cdol1)))
    return [
        "00A404000E315041592E5359532E444446303100",  # SELECT 1PAY.SYS.DDF01
        "00B2010C00",  # READ RECORD 1 of the directory (SFI 1)
        "00A4040007A000000003101000",  # SELECT the application
        "80A8000002830000",  # GET PROCESSING OPTIONS (no PDOL on the contact interface)
        "00B2010C00",
        "00B2020C00",
        "00B2011400",  # the AFL's records: SFI 1 records 1-2, SFI 2 record 1
        f"80AE8000{cdol1_length:02X}{'00' * cdol1_length}00",  # GENERATE AC, ARQC requested
        "80CA9F3600",  # GET DATA: ATC
    ]


class ScriptorSession:
    """scriptor reading commands from a pipe, one at a time, so each next command can depend on the answer."""

    def __init__(self, reader: str, protocol: str) -> None:
        self.proc = subprocess.Popen(
            [_scriptor(), "-u", "-r", reader, "-p", protocol],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._watchdog = threading.Timer(30.0, self.proc.kill)
        self._watchdog.start()
        self.exchanges = 0

    def send(self, apdu: str) -> tuple[bytes, bytes]:
        """One command; its answer as (data, SW1 SW2)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(_spaced(apdu) + "\n")
        self.proc.stdin.flush()
        answer = ""
        while True:
            line = self.proc.stdout.readline()
            assert line, "scriptor ended before answering"
            if line.startswith("<") or answer:
                answer += line.lstrip("<")
                if " : " in line:
                    break
        self.exchanges += 1
        raw = bytes.fromhex("".join(answer.split(" : ")[0].split()))
        return raw[:-2], raw[-2:]

    def close(self) -> str:
        """End of input: scriptor exits; its standard error."""
        try:
            _, err = self.proc.communicate(timeout=10)
        finally:
            self._watchdog.cancel()
        return err


def _t0_exchange(session: ScriptorSession, apdu: str) -> tuple[bytes, bytes, list[int]]:
    """What a T=0 reader does with one command: follow 61xx with GET RESPONSE and 6Cxx with Le = xx."""
    data, sw = session.send(apdu)
    procedure = []
    out = b""
    for _ in range(8):
        if sw[0] == 0x6C:
            procedure.append(0x6C)
            data, sw = session.send(apdu[:-2] + f"{sw[1]:02X}")
            continue
        out += data
        if sw[0] == 0x61:
            procedure.append(0x61)
            data, sw = session.send(f"00C00000{sw[1]:02X}")
            continue
        return out, sw, procedure
    raise AssertionError(f"{apdu}: no end to 61xx/6Cxx")


def test_scriptor_reads_the_t0_card_like_a_t0_reader(emv, pcscd):
    profile = emv.build_profile(18)
    with _served(VirtualCard(profile), protocol="T=0"):
        session = ScriptorSession(pcscd, "T=0")
        try:
            answers = [_t0_exchange(session, apdu) for apdu in _emv_script(profile)]
        finally:
            err = session.close()
    assert "Trying T=0 protocol" in err
    for data, sw, _ in answers:
        assert sw == b"\x90\x00" and data, answers
    # Every command that sends data and gets data back went through 61xx; every READ RECORD and GET DATA
    # sent with Le = 00 got 6Cxx first, as ISO 7816-3 has a T=0 card answer them.
    assert [procedure for _, _, procedure in answers] == [[0x61], [0x6C], [0x61], [0x61], [0x6C], [0x6C], [0x6C], [0x61], [0x6C]]
    generate_ac = tlv.flatten(tlv.parse(answers[7][0]))
    assert len(generate_ac["9F26"]) == 8 and generate_ac["9F36"] == answers[8][0][3:5]


def test_scriptor_reads_the_t1_card_in_one_exchange_per_command(emv, pcscd, tmp_path):
    profile = emv.build_profile(18)
    script = _emv_script(profile)
    (tmp_path / "emv.apdu").write_text("\n".join(_spaced(a) for a in script) + "\n")
    with _served(VirtualCard(profile), protocol="T=1"):
        proc = subprocess.run(
            [_scriptor(), "-r", pcscd, "-p", "T=1", str(tmp_path / "emv.apdu")], capture_output=True, text=True, timeout=30
        )
    assert "Using T=1 protocol" in proc.stdout, proc.stdout + proc.stderr
    # scriptor prints each answer after "<", wrapped over lines, ending with " : " and the status word's meaning.
    answers = re.findall(r"^<([^:]*?) : ([^\n]*)$", proc.stdout, re.M)
    assert len(answers) == len(script), proc.stdout + proc.stderr
    for data, meaning in answers:
        assert data.split()[-2:] == ["90", "00"] and meaning == "Normal processing.", (data, meaning)
    generate_ac = " ".join(answers[7][0].split())
    assert "9F 26 08" in generate_ac and "9F 36 02" in generate_ac, generate_ac


@pytest.mark.parametrize(("served", "asked"), [("T=0", "T=1"), ("T=1", "T=0")])
def test_pcscd_refuses_a_protocol_the_atr_does_not_offer(emv, pcscd, served, asked):
    with _served(VirtualCard(emv.build_profile(18)), protocol=served):
        proc = subprocess.run([_scriptor(), "-r", pcscd, "-p", asked], input="80 CA 9F 36 00\n",
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "protocol mismatch" in (proc.stdout + proc.stderr).lower()
