"""The operator CLI against `hsm-sim serve`: each command reaches the HSM with the certificate of the role
it needs (custodian for init, issuer for cards, operator for reveal, key-loader for terminals)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from cli_helpers import PROGRAMS, run_cli

pytestmark = pytest.mark.slow


def _run(module: str, *args: str, env: dict[str, str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The program `python -m module` is, run in the test process (cli_helpers); the HSM it talks to is
    `hsm-sim serve` in a process of its own."""
    program = next(name for name, of in PROGRAMS.items() if of == module)
    done = run_cli(program, cwd, *args, env=env)
    assert not check or done.returncode == 0, f"{module} {' '.join(args)}: {done.stderr}"
    return done


@pytest.fixture
def deployment(tmp_path: Path, hsm_sim_serve) -> tuple[dict[str, str], Path]:
    env = {**os.environ, "PROCESSOR_DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"}
    _run("hsm_sim.cli", "ca", "init", "pki", env=env, cwd=tmp_path)
    for role, name in (("engine", "engine"), ("issuer", "issuer"), ("custodian", "custodian"), ("custodian", "custodian-2"),
                       ("key-loader", "key-loader"), ("operator", "alice")):
        _run("hsm_sim.cli", "ca", "issue", "pki", "--role", role, "--name", name, env=env, cwd=tmp_path)
    port = hsm_sim_serve(tmp_path / "hsm.json", tmp_path / "pki", tmp_path)
    env.update(PROCESSOR_HSM_URL=f"tcps://127.0.0.1:{port}", PROCESSOR_HSM_TLS_DIR=str(tmp_path / "pki"))
    return env, tmp_path


def test_each_command_runs_as_its_role(deployment, served_audit):
    env, cwd = deployment

    def processor(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run("processor.cli", *args, env=env, cwd=cwd, check=check)

    def data(*args: str) -> dict:
        return json.loads(processor(*args, "--json").stdout)

    data("init")
    holder = data("cardholder", "create", "--name", "Ada", "--handle", "ada")["id"]
    account = data("account", "open", "--cardholder", str(holder), "--deposit", "100.00")["id"]
    card = data("card", "issue", "--account", str(account), "--pin", "1234")
    revealed = data("card", "reveal", str(card["id"]), "--operator", "alice", "--reason", "TICKET-7")
    assert revealed["pan"] == card["pan"]
    stranger = processor("card", "reveal", str(card["id"]), "--operator", "mallory", "--reason", "x", check=False)
    assert stranger.returncode == 2 and "no HSM certificate for mallory" in stranger.stderr and "Traceback" not in stranger.stderr
    terminal = data("terminal", "add", "--id", "SHOP0001", "--merchant", "SHOP00000000001", "--mcc", "5411")
    assert len(terminal["ipek"]) == 32
    # Bulk provisioning issues cards as the issuer and takes the terminals' IPEKs as the key loader.
    provisioned = data("provision", "--cardholders", "1", "--terminals", "2")
    assert len(provisioned["cards"]) == 1 and [len(t["ipek"]) for t in provisioned["terminals"]] == [32, 32]

    formed = processor("bureau", "key", check=False)
    assert formed.returncode == 2 and "dual control" in formed.stderr
    hsm = ["--hsm", env["PROCESSOR_HSM_URL"], "--tls", "pki"]
    first = json.loads(_run("hsm_sim.cli", "keys", "component", "KEK", "--algorithm", "AES", "--component", "3C" * 32,
                            *hsm, "--as", "custodian", "--json", env=env, cwd=cwd).stdout)
    second = json.loads(_run("hsm_sim.cli", "keys", "component", "KEK", "--algorithm", "AES", "--component", "A5" * 32,
                             "--ceremony", first["ceremony"], *hsm, "--as", "custodian-2", "--json", env=env, cwd=cwd).stdout)
    assert data("bureau", "key", "--kcv", second["key"]["kcv"])["kcv"] == second["key"]["kcv"]
    assert data("card", "personalize", str(card["id"]), "--bureau-dir", "bureau")["cvn"] == 18

    expected = {("custodian", "generate_key", "00"), ("issuer", "generate_cvv", "00"), ("issuer", "tokenize_pan", "00"),
                ("alice", "reveal_pan", "00"), ("key-loader", "inject_ipek", "00"), ("issuer", "personalization_data", "00")}
    audit = served_audit(cwd / "hsm.json.audit.jsonl", including=expected)
    assert {(line["by"], line["cmd"], line["status"]) for line in audit} >= expected
    ipeks = [line["by"] for line in audit if line["cmd"] == "inject_ipek"]
    assert ipeks == ["key-loader"] * 3  # terminal add, then provision's two terminals: no other identity got one
    assert card["pan"] not in (cwd / "hsm.json.audit.jsonl").read_text()
