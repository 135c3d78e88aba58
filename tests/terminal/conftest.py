"""Fixtures for the card, kernel and PC/SC tests: card profiles and a real pcscd."""

from __future__ import annotations

import datetime
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pyemv
import pytest
from psec.cvv import generate_cvv

from terminal_sim.emv.card import CardProfile, make_track2

ISSUER_MK_AC = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
CVK = bytes.fromhex("89ABCDEF0123456776543210FEDCBA98")
PAN = "4761739001010010"
TOKEN_PAN = "4895370012345671"
PSN = "01"
EXPIRY = "2812"
TRANSPORT_KEY = bytes(range(32))
TXN_DATE = datetime.date(2026, 11, 25)
UN = bytes.fromhex("1A2B3C4D")

PCSCD = "/usr/sbin/pcscd"
VPCD_DRIVER = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"
READER = "Virtual PCD 00 00"


def issuer_cvn(cvn: int, pan: str = PAN, psn: str = PSN):
    """The issuer's view of a card: pyemv's CVN object from the issuer master key."""
    cls = pyemv.cvn.VisaCVN10 if cvn == 10 else pyemv.cvn.VisaCVN18
    return cls(ISSUER_MK_AC, ISSUER_MK_AC, ISSUER_MK_AC, pan, psn)


def build_profile(cvn: int = 18, *, contactless: bool = False, token: bool = False, **extra) -> CardProfile:
    """A personalised profile whose ICC master key the issuer can derive."""
    presented = TOKEN_PAN if token else PAN
    icvv = generate_cvv(CVK, presented, EXPIRY, "999")
    fields = dict(
        aid="A0000000031010",
        label="VISA DEBIT",
        pan=PAN,
        psn=PSN,
        expiry=EXPIRY,
        effective="2311",
        track2=make_track2(presented, EXPIRY, "201", f"0000{icvv}00"),
        cardholder_name="DOE/JANE",
        cvn=cvn,
        icc_mk_ac=issuer_cvn(cvn, presented).icc_mk_ac,
        contactless=contactless,
        token_pan=TOKEN_PAN if token else None,
    )
    fields.update(extra)
    return CardProfile(**fields)


@pytest.fixture(scope="session")
def emv() -> SimpleNamespace:
    """Test constants and the profile builder, shared by the EMV and PC/SC tests."""
    return SimpleNamespace(
        ISSUER_MK_AC=ISSUER_MK_AC,
        PAN=PAN,
        TOKEN_PAN=TOKEN_PAN,
        PSN=PSN,
        EXPIRY=EXPIRY,
        TRANSPORT_KEY=TRANSPORT_KEY,
        TXN_DATE=TXN_DATE,
        UN=UN,
        build_profile=build_profile,
        issuer_cvn=issuer_cvn,
    )


def _pcsc_unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"PC/SC test environment incomplete: {reason}")
    pytest.skip(reason)


def _reader_listed() -> bool:
    from terminal_sim.pcsc import list_readers

    return READER in list_readers()


@pytest.fixture(scope="session")
def pcscd_daemon() -> Iterator[str]:
    """A running pcscd with the vpcd driver; started (and stopped by PID) when absent."""
    if not os.path.exists(PCSCD) or shutil.which(PCSCD) is None:
        _pcsc_unavailable(f"{PCSCD} is not installed")
    if not os.path.exists(VPCD_DRIVER):
        _pcsc_unavailable(f"the vpcd driver {VPCD_DRIVER} is not installed")
    try:
        import smartcard  # noqa: F401
    except ImportError:
        _pcsc_unavailable("pyscard is not installed")
    proc: subprocess.Popen[bytes] | None = None
    if not _reader_listed():
        proc = subprocess.Popen(
            [PCSCD, "--foreground"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10.0
        while not _reader_listed():
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                _pcsc_unavailable(f"pcscd exited with {proc.returncode}: {err.strip()[:300]}")
            if time.monotonic() > deadline:
                proc.terminate()
                proc.wait(5)
                _pcsc_unavailable(f"pcscd did not list {READER!r} within 10 s")
            time.sleep(0.1)
    try:
        yield READER
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


VPCD_LOCK = Path(os.environ.get("TMPDIR", "/tmp")) / "processor-tests-vpcd.lock"


@pytest.fixture
def pcscd(pcscd_daemon: str) -> Iterator[str]:
    """The vpcd reader, held for one test: the machine has one pcscd and one vpcd port, so test runs
    started from several checkouts at once take turns (an exclusive lock on a file in TMPDIR)."""
    with VPCD_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield pcscd_daemon
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
