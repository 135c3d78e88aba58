"""What an operator command is made of, for `processor/cli.py` and the packages that add commands to it.

A command that returns data is `async def command(rt: Runtime, args) -> dict`, registered with the
`data_command` that `processor.cli.build_parser` hands to each package's `register(sub, data_command)`;
`group(sub, "card", ...)` reaches the subcommands of a group another package may already have made.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hsm_sim import HsmApi
from processor.config import Settings
from processor.issuing.keys import IssuerKeys, load_issuer_keys
from processor.ledger import Store


@dataclass
class Runtime:
    """The open store and HSM a command works with."""

    settings: Settings
    store: Store
    hsm: HsmApi
    _keys: IssuerKeys | None = field(default=None, repr=False)

    async def issuer_keys(self) -> IssuerKeys:
        """The issuer's keys (`processor init`), checked against the HSM once per command."""
        if self._keys is None:
            self._keys = await load_issuer_keys(self.store, self.hsm)
        return self._keys


Command = Callable[[Runtime, argparse.Namespace], Awaitable[dict[str, Any]]]
DataCommand = Callable[[Any, str, Command, str], argparse.ArgumentParser]


def group(sub: Any, name: str, help: str) -> Any:
    """The subcommands of `name`, reusing the group when another module already added it (e.g. `card`)."""
    parser = sub.choices.get(name)
    if parser is None:
        return sub.add_parser(name, help=help).add_subparsers(dest=f"{name}_command", required=True)
    for action in parser._actions:  # argparse offers no public way back to a parser's subcommands
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError(f"command {name!r} exists without subcommands")
