"""PROTOCOL.md lists every host command with the arguments the HSM really takes, and every status."""

from __future__ import annotations

import inspect
from pathlib import Path

import hsm_sim
from hsm_sim import errors
from hsm_sim.hsm import COMMANDS, Hsm
from hsm_sim.protocol import answer_code

DOC = (Path(hsm_sim.__file__).parent / "PROTOCOL.md").read_text()


def _arguments(name: str) -> str:
    parameters = list(inspect.signature(getattr(Hsm, name)).parameters.values())[1:]
    parts, keyword_only = [], False
    for p in parameters:
        if p.kind is p.KEYWORD_ONLY and not keyword_only:
            parts.append("*")
            keyword_only = True
        annotation = str(p.annotation).replace(" | ", " or ")
        default = "" if p.default is p.empty else f" = {p.default}"
        parts.append(f"{p.name}: {annotation}{default}")
    return "(" + ", ".join(parts) + ")"


def command_rows() -> list[str]:
    return [f"| `{code}` | `{answer_code(code)}` | `{name}` | `{_arguments(name)}` |" for code, name in COMMANDS.items()]


def test_every_command_is_documented_with_its_arguments():
    missing = [row for row in command_rows() if row not in DOC]
    assert not missing, "PROTOCOL.md's command table should read:\n" + "\n".join(command_rows())


def test_no_documented_command_is_gone():
    documented = [line.split("`")[1] for line in DOC.splitlines() if line.startswith("| `") and line.count("`") >= 8]
    assert documented == list(COMMANDS)


def test_every_status_is_documented():
    statuses = {value for name, value in vars(errors).items() if name.isupper() and isinstance(value, str) and len(value) == 2}
    assert all(f"| `{status}` |" in DOC for status in statuses), sorted(statuses)


def role_rows() -> list[str]:
    from hsm_sim.access import ROLES

    shared = {"who_am_i", "key_info", "list_keys"}
    return [
        f"| {role} | {', '.join(f'`{name}`' for name in COMMANDS.values() if name in commands and name not in shared)} |"
        for role, commands in ROLES.items()
    ]


def test_the_roles_table_is_the_hsms():
    assert all(row in DOC for row in role_rows()), "PROTOCOL.md's roles table should read:\n" + "\n".join(role_rows())
