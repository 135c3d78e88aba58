"""What the processor writes holds card or key data: created 0600, in folders it makes 0700, while a
folder the operator already has (the working directory) is left as it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import run_cli

pytestmark = pytest.mark.slow


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_files_the_processor_writes_are_owner_only(tmp_path: Path):
    cwd = tmp_path / "work"
    cwd.mkdir()
    cwd.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCESSOR_")}
    env["PROCESSOR_LOG_FILE"] = str(cwd / "processor.log")

    def processor(*args: str) -> dict:
        done = run_cli("processor", cwd, *args, "--json", env=env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    processor("init")
    holder = processor("cardholder", "create", "--name", "Ada", "--handle", "ada")["id"]
    account = processor("account", "open", "--cardholder", str(holder), "--deposit", "10.00")["id"]
    processor("bureau", "key")
    card = processor("card", "issue", "--account", str(account), "--pin", "1234", "--chip", "--bureau-dir", "bureau/records")
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from processor.logs import configure; "
                    "configure(Path(sys.argv[1])).close()", str(cwd / "engine.log")], check=True, env=env)

    assert _mode(cwd) == 0o755, "the operator's own folder is not changed"
    written = [cwd / "processor.db", cwd / "hsm-keystore.json", cwd / "hsm-keystore.json.audit.jsonl",
               cwd / card["bureau_file"], cwd / "engine.log"]
    written += [p for p in cwd.glob("processor.db-*")]
    for path in written:
        assert _mode(path) == 0o600, path
    for folder in (cwd / "bureau", cwd / "bureau" / "records"):
        assert _mode(folder) == 0o700, folder
