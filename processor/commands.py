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
from processor.errors import InvalidRequest
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


# ------------------------------------------------------------------ checks of what an operator typed


def amount_minor(text: str, currency: str, what: str = "amount") -> int:
    """An amount in major units ('100.00') as minor units of `currency`; InvalidRequest says what to type."""
    from processor.iso8583.currency import exponent_for_alpha, parse_amount

    try:
        return parse_amount(text, exponent_for_alpha(currency), what=what)
    except KeyError:
        raise InvalidRequest(f"currency {currency} is not supported") from None
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def comma_list(text: str | None, what: str = "list", *, digits: int | None = None) -> tuple[str, ...] | None:
    """'07,05' -> ('07', '05'); '' -> () (none); None stays None. Empty entries, or entries that are not
    `digits` digits long, are refused by name."""
    if text is None:
        return None
    if not text.strip():
        return ()
    items = tuple(part.strip() for part in text.split(","))
    for item in items:
        if not item:
            raise InvalidRequest(f"{what} {text!r} has an empty entry: separate entries with single commas, e.g. 07,05")
        if digits is not None and not (len(item) == digits and item.isdigit()):
            raise InvalidRequest(f"{what}: each entry must be {digits} digits, got {item!r}")
    return items


def count(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def validity_years(text: str) -> int:
    """An argparse type: a validity of 1 to 10 years."""
    if not text.strip().isdigit() or not 1 <= int(text) <= 10:
        raise argparse.ArgumentTypeError(f"expected 1 to 10 years, got {text!r}")
    return int(text)


def listen_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """'HOST:PORT' or ':PORT' -> (host, port) with a port from 0 (any free one) to 65535."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise InvalidRequest(f"expected HOST:PORT with a port from 0 to 65535, got {text!r}")
    return host.strip("[]") or default_host, int(port)
