"""A third-party PC/SC program reads our virtual card: pcsc-tools' `scriptor` sends the APDUs an EMV
reader sends (SELECT PSE, READ RECORD, SELECT AID, GET PROCESSING OPTIONS, READ RECORD, GENERATE AC
with a well-formed CDOL1) through pcscd and vpcd, and every answer is a normal one (90 00)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from test_pcsc_vpcd import _reader, _served

from terminal_sim.emv import tlv
from terminal_sim.emv.card import VirtualCard

pytestmark = [pytest.mark.pcsc, pytest.mark.filterwarnings("ignore:.*TripleDES.*")]


def _apdu(hex_bytes: str) -> str:
    return " ".join(hex_bytes[i : i + 2] for i in range(0, len(hex_bytes), 2))


def test_scriptor_reads_the_card_like_a_real_one(emv, pcscd, tmp_path):
    if shutil.which("scriptor") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("pcsc-tools (scriptor) is not installed: scripts/setup test installs it")
        pytest.skip("pcsc-tools (scriptor) is not installed")
    profile = emv.build_profile(18)
    cdol1_length = sum(length for _, length in tlv.parse_dol(bytes.fromhex(profile.cdol1)))
    cdol1_data = "00" * cdol1_length
    script = [
        "00A404000E315041592E5359532E444446303100",  # SELECT 1PAY.SYS.DDF01
        "00B2010C00",  # READ RECORD 1 of the directory (SFI 1)
        "00A4040007A000000003101000",  # SELECT the application
        "80A8000002830000",  # GET PROCESSING OPTIONS (no PDOL on the contact interface)
        "00B2010C00",
        "00B2020C00",
        "00B2011400",  # the AFL's records: SFI 1 records 1-2, SFI 2 record 1
        f"80AE8000{cdol1_length:02X}{cdol1_data}00",  # GENERATE AC, ARQC requested
        "80CA9F3600",  # GET DATA: ATC
    ]
    (tmp_path / "emv.apdu").write_text("\n".join(_apdu(a) for a in script) + "\n")
    with _served(VirtualCard(profile)):
        with _reader(pcscd):
            pass  # pcscd has seen the card (scriptor does not wait for one)
        proc = subprocess.run(
            ["scriptor", "-r", pcscd, str(tmp_path / "emv.apdu")], capture_output=True, text=True, timeout=30
        )
    # scriptor prints each answer after "<", wrapped over lines, ending with " : " and the status word's meaning.
    answers = re.findall(r"^<([^:]*?) : ([^\n]*)$", proc.stdout, re.M)
    assert len(answers) == len(script), proc.stdout + proc.stderr
    for data, meaning in answers:
        assert data.split()[-2:] == ["90", "00"] and meaning == "Normal processing.", (data, meaning)
    generate_ac = " ".join(answers[7][0].split())
    assert "9F 26 08" in generate_ac and "9F 36 02" in generate_ac, generate_ac
