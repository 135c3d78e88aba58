"""The README's network walkthrough with the `hsm-sim` command: CA, certificates, a served HSM, a key
formed by two custodians, an export under it, a revoked operator, and the audit of it all."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from cli_helpers import run_cli


def hsm_sim(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HSM_TLS_DIR": str(cwd / "pki")}
    done = run_cli("hsm-sim", cwd, *args, env=env)  # in the test process; the served HSM is a process of its own
    assert not check or done.returncode == 0, f"hsm-sim {' '.join(args)}: {done.stderr}"
    return done


def _json(*args: str, cwd: Path) -> object:
    return json.loads(hsm_sim(*args, "--json", cwd=cwd).stdout)


@pytest.mark.slow
def test_walkthrough(tmp_path: Path, hsm_sim_serve, served_audit):
    hsm_sim("ca", "init", "pki", "--host", "127.0.0.1", cwd=tmp_path)
    for role, name in (("custodian", "custodian-1"), ("custodian", "custodian-2"), ("operator", "alice")):
        hsm_sim("ca", "issue", "pki", "--role", role, "--name", name, cwd=tmp_path)
    assert (tmp_path / "pki").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "pki" / "alice.key").stat().st_mode & 0o777 == 0o600
    refused = hsm_sim("ca", "issue", "pki", "--role", "admin", "--name", "eve", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and refused.stderr.startswith("hsm-sim: role 'admin' is not one of")

    hsm = ["--hsm", f"tcps://127.0.0.1:{hsm_sim_serve(tmp_path / 'hsm.json', tmp_path / 'pki', tmp_path)}"]
    first = _json("keys", "component", "ZMK", "--algorithm", "AES", "--component", "0F" * 32, *hsm, "--as", "custodian-1",
                  cwd=tmp_path)
    assert first["key"] is None and first["custodians"] == ["custodian-1"]
    same = hsm_sim("keys", "component", "ZMK", "--algorithm", "AES", "--component", "F0" * 32, "--ceremony", first["ceremony"],
                   *hsm, "--as", "custodian-1", cwd=tmp_path, check=False)
    assert same.returncode == 2 and "dual control needs another custodian" in same.stderr
    second = _json("keys", "component", "ZMK", "--algorithm", "AES", "--component", "F0" * 32, "--ceremony", first["ceremony"],
                   *hsm, "--as", "custodian-2", cwd=tmp_path)
    zmk = second["key"]["kcv"]
    assert second["key"]["origin"] == "components"
    cvk = _json("keys", "generate", "CVK", *hsm, "--as", "custodian-2", cwd=tmp_path)["kcv"]
    block = _json("keys", "export", cvk, "--zmk", zmk, *hsm, "--as", "custodian-1", cwd=tmp_path)["key_block"]
    assert block.startswith("D") and block[5:7] == "C0"
    export = hsm_sim("keys", "export", cvk, "--zmk", zmk, *hsm, "--as", "alice", cwd=tmp_path, check=False)
    assert export.returncode == 2 and "role operator may not run export_key" in export.stderr
    hsm_sim("ca", "revoke", "pki", "alice", cwd=tmp_path)
    time.sleep(1.1)  # the server re-reads the revocation list at most once a second
    revoked = hsm_sim("keys", "list", *hsm, "--as", "alice", cwd=tmp_path, check=False)
    assert revoked.returncode == 2 and "revoked" in revoked.stderr
    assert [e["revoked"] for e in _json("ca", "list", "pki", cwd=tmp_path) if e["name"] == "alice"] == [True]

    refusals = _json("audit", "--keystore", "hsm.json", "--refusals", cwd=tmp_path)
    assert [(r["by"], r["cmd"]) for r in refusals] == [
        ("custodian-1", "add_key_component"), ("alice", "export_key"), ("alice", "who_am_i"),
    ]
    # Successful commands reach the log within 50 ms; the audit command is run once they are there.
    served_audit(tmp_path / "hsm.json.audit.jsonl", including={("custodian-2", "add_key_component", "00"), ("custodian-2", "generate_key", "00")})
    text = hsm_sim("audit", "--keystore", "hsm.json", "--who", "custodian-2", cwd=tmp_path).stdout
    assert "cmd=add_key_component" in text and "cmd=generate_key" in text and "alice" not in text
