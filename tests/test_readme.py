"""The README as a new operator uses it: every ```sh block, pasted top to bottom into one shell in a fresh
folder with the installed programs on the path, exits 0; and `.gitignore` covers everything they leave there.

A block that starts a server, or needs a running engine or card reader, is marked `<!-- not run: why -->`
on the line before its fence (the README says so too); every other block runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```sh\n(.*?)^```$", re.S | re.M)
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->")


def sh_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(line, commands, reason not run or None) of every ```sh block."""
    blocks = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        previous = text[: match.start()].splitlines()[-1:]
        marker = NOT_RUN.fullmatch(previous[0]) if previous else None
        blocks.append((line, match.group(1), marker.group(1) if marker else None))
    return blocks


def test_the_marker_is_read_only_on_the_line_before_a_block() -> None:
    text = "<!-- not run: a server -->\n```sh\nserve\n```\n\ntext <!-- not run: no -->\n\n```sh\ntrue\n```\n"
    assert sh_blocks(text) == [(2, "serve\n", "a server"), (8, "true\n", None)]


def test_most_of_the_readme_runs() -> None:
    blocks = sh_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert sum(1 for *_, reason in blocks if reason is None) >= 3
    assert all(reason.strip() for *_, reason in blocks if reason is not None)


@pytest.mark.skipif(shutil.which("jq") is None and not os.environ.get("CI"), reason="the walkthrough keeps ids with jq")
def test_every_readme_block_runs_as_pasted(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    runnable = [(line, body) for line, body, reason in sh_blocks((ROOT / "README.md").read_text(encoding="utf-8")) if reason is None]
    # One shell, as a person pasting block after block: variables set by one block serve the next. Each
    # block announces itself, so a failure names its line.
    script = ["set -euo pipefail"]
    for line, body in runnable:
        script += [f"echo '>>> README.md line {line}' >&2", body]
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PROCESSOR_", "HSM_", "TERMINAL_SIM_"))},
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "HSM_LMK_FILE": str(tmp_path / "lmk" / "lmk.json"),  # outside the working folder, as the LMK must be
    }
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    failed_at = [line for line in done.stderr.splitlines() if line.startswith(">>> README.md")][-1:]
    assert done.returncode == 0, f"{failed_at}: exit {done.returncode}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr

    # Nothing the commands left in the working folder would be committed by `git add -A`.
    shutil.copy(ROOT / ".gitignore", work / ".gitignore")
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=work, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    assert status == ["?? .gitignore"]
