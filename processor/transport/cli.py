"""Operator commands for the broker and the terminals' presence on it.

`register(sub, data_command)` adds to the `processor` parser:

    processor broker init|run|url       the broker's folder, running Mosquitto with it on a free port, a service URL
    processor broker terminal ID        a registered terminal's broker account (password shown once)
    processor broker cardholder HANDLE  a cardholder app's account, to read its own events
    processor terminal list             registered terminals, with which are online on the broker
    processor events publish            the outbox's events, published to the broker after commit (runs until stopped)
    processor events status             how far the publisher is: its position, the newest event, the backlog

`init`, `run` and `url` need no database: they set `standalone` instead of `func`.
"""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Callable
from typing import Any

from processor import issuing
from processor.errors import ConfigurationError, NotFound
from processor.commands import DataCommand, Runtime, group

DEFAULT_DIR = "broker"


def _broker(args: argparse.Namespace) -> Any:
    from processor.transport.broker import BrokerDir

    return BrokerDir(args.dir)


def cmd_broker_init(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    from processor.transport.broker import SERVICE_ACCOUNTS, BrokerDir

    broker = BrokerDir.init(args.dir)
    return {
        "directory": str(broker.path.resolve()),
        "service_accounts": list(SERVICE_ACCOUNTS),
        "passwords_file": str(broker.accounts.resolve()),
        "start_with": f"processor broker run --dir {args.dir}",
    }


def cmd_broker_run(args: argparse.Namespace, settings: Any) -> int:
    """Run Mosquitto in the foreground until SIGINT or SIGTERM."""
    from processor.transport.broker import start_broker

    broker = _broker(args)
    process = start_broker(broker, host=args.host, port=args.port)
    stop = {"signal": False}

    def _stop(signum: int, frame: object) -> None:
        stop["signal"] = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop)
    print(f"broker listening on {process.host}:{process.port} (log: {broker.log})", flush=True)
    print(f"engines: PROCESSOR_MQTT_URL=$(processor broker url --dir {args.dir})", flush=True)
    try:
        while not stop["signal"] and process.process.poll() is None:
            try:
                process.process.wait(timeout=0.5)
            except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: still running
                continue
    finally:
        process.stop()
    code = process.process.returncode
    return 0 if stop["signal"] else (code or 1)


def cmd_broker_url(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    return {"account": args.account, "url": _broker(args).url(args.account, host=args.host)}


async def cmd_broker_terminal(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.transport.broker import BrokerAdmin, check_terminal_id

    terminal = await issuing.terminals.get(rt.store, args.terminal_id)
    if terminal is None:
        raise NotFound(f"terminal {args.terminal_id!r} is not registered: `processor terminal add` first")
    try:
        check_terminal_id(args.terminal_id)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    broker = _broker(args)
    async with BrokerAdmin(broker.url("admin")) as admin:
        password = await admin.add_terminal(args.terminal_id)
    return {
        "terminal_id": args.terminal_id,
        "username": args.terminal_id,
        "client_id": args.terminal_id,
        "mqtt_password": password,
        "broker": f"127.0.0.1:{broker.port()}",
    }


async def cmd_broker_cardholder(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.transport.broker import BrokerAdmin, cardholder_user

    cardholder = await issuing.cardholders.find_by_handle(rt.store, args.handle)
    if cardholder is None:
        raise NotFound(f"no cardholder with handle {args.handle!r}")
    broker = _broker(args)
    async with BrokerAdmin(broker.url("admin")) as admin:
        password = await admin.add_cardholder(cardholder.id)
    user = cardholder_user(cardholder.id)
    return {
        "cardholder_id": cardholder.id,
        "username": user,
        "client_id": user,
        "mqtt_password": password,
        "topics": f"events/cardholders/{cardholder.id}/#",
        "broker": f"127.0.0.1:{broker.port()}",
    }


async def cmd_terminal_list(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.transport.mqtt import read_presence

    terminals = await issuing.terminals.list_all(rt.store, limit=args.limit, merchant_id=args.merchant)
    presence: dict[str, str] | None = None
    if rt.settings.mqtt_url:
        presence = await read_presence(rt.settings.mqtt_url)
    rows = [
        {
            "terminal_id": t.terminal_id,
            "merchant_id": t.merchant_id,
            "mcc": t.mcc,
            "status": t.status,
            "chip_reader": t.chip_capable,
            "online": None if presence is None else presence.get(t.terminal_id) == "online",
            "presence": "unknown" if presence is None else presence.get(t.terminal_id, "never connected"),
        }
        for t in terminals
    ]
    if not args.json:
        return _terminal_table(rows, broker=presence is not None)  # type: ignore[return-value]  # printed as is
    return {"terminals": rows, "online": sum(1 for r in rows if r["online"])}


def _terminal_table(rows: list[dict[str, Any]], *, broker: bool) -> str:
    lines = [f"{'terminal':<9} {'merchant':<16} {'mcc':<5} {'status':<9} {'chip':<5} presence"]
    lines += [
        f"{r['terminal_id']:<9} {r['merchant_id']:<16} {r['mcc']:<5} {r['status']:<9} "
        f"{'yes' if r['chip_reader'] else 'no':<5} {r['presence']}"
        for r in rows
    ]
    online = sum(1 for r in rows if r["online"])
    lines.append(f"{len(rows)} terminal(s), {online} online" if broker
                 else f"{len(rows)} terminal(s); presence unknown: set PROCESSOR_MQTT_URL to the broker")
    return "\n".join(lines)


def cmd_events_publish(args: argparse.Namespace, settings: Any) -> int:
    """Publish the outbox to the broker until SIGINT or SIGTERM, with a progress line every few seconds."""
    import asyncio

    url = args.mqtt or os.environ.get("PROCESSOR_EVENTS_MQTT_URL")
    if not url:
        raise ConfigurationError("no broker: give --mqtt URL (`processor broker url events` prints it) "
                                 "or set PROCESSOR_EVENTS_MQTT_URL")
    from processor.transport.mqtt import MqttEndpoint

    try:
        MqttEndpoint.parse(url)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    if args.batch < 1 or args.batch > 1000:
        raise ConfigurationError(f"--batch must be 1 to 1000 events, not {args.batch}")
    return asyncio.run(_publish(args, settings, url))


async def _publish(args: argparse.Namespace, settings: Any, url: str) -> int:
    import asyncio
    import contextlib
    import time

    from rich.console import Console

    from processor.ledger import Store
    from processor.logs import FLUSH_INTERVAL_S, configure
    from processor.transport.publisher import EventPublisher, PublisherLimits, PublisherStats

    console = Console(stderr=True, highlight=False)
    handler = configure(settings.log_file)

    async def flush_logs() -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            handler.flush()

    flusher = asyncio.create_task(flush_logs())
    shown = {"at": 0.0}

    def progress(stats: PublisherStats) -> None:
        now = time.monotonic()
        if now - shown["at"] < args.progress_s:
            return
        shown["at"] = now
        state = "connected" if stats.connected else f"broker unreachable ({stats.last_error})"
        console.print(f"events: position {stats.position}, newest {stats.newest}, backlog {stats.backlog}, "
                      f"published {stats.events} ({stats.messages} messages), {state}")

    store = await Store.open(settings.db_url)
    publisher = EventPublisher(store, url, name=args.name, limits=PublisherLimits(batch=args.batch), on_progress=progress)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, publisher.stop)
    try:
        console.print(f"publishing events as {args.name!r} to {publisher.endpoint.safe()}")
        await publisher.run_as_the_one()
    finally:
        await store.close()
        flusher.cancel()
        handler.flush()
    console.print(f"stopped at event {publisher.stats.position}; published {publisher.stats.events} event(s)")
    return 0


async def cmd_events_status(rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    from processor.transport.publisher import publisher_status

    return await publisher_status(rt.store, args.name)


def register(sub: Any, data_command: DataCommand) -> None:
    """Add `broker ...` and `terminal list` to the `processor` command parser."""
    default_dir = os.environ.get("PROCESSOR_BROKER_DIR") or DEFAULT_DIR
    br = group(sub, "broker", "the MQTT broker: its accounts and ACLs")

    def standalone(name: str, func: Callable[..., Any], help: str) -> argparse.ArgumentParser:
        p = br.add_parser(name, help=help)
        p.add_argument("--dir", default=default_dir, help=f"the broker's folder (default: PROCESSOR_BROKER_DIR or ./{DEFAULT_DIR})")
        p.set_defaults(func=None, standalone=func)
        return p

    p = standalone("init", cmd_broker_init, "create the broker's folder: configuration and service accounts")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p = standalone("run", cmd_broker_run, "run Mosquitto with the folder's configuration until stopped")
    p.add_argument("--host", default="127.0.0.1", help="the broker's address")
    p.add_argument("--port", type=int, default=0, help="listen port (default: a free one, written to DIR/port)")
    p = standalone("url", cmd_broker_url, "a service account's broker URL (for PROCESSOR_MQTT_URL), with its password")
    p.add_argument("account", nargs="?", default="engine", choices=("engine", "events", "operator", "admin"),
                   help="which service account")
    p.add_argument("--host", default="127.0.0.1", help="the broker's address")
    p.add_argument("--json", action="store_true", help="print one JSON document")

    p = data_command(br, "terminal", cmd_broker_terminal, "a registered terminal's broker account (password shown once)")
    p.add_argument("terminal_id", help="a registered terminal (DE 41)")
    p.add_argument("--dir", default=default_dir, help="the broker's folder")
    p = data_command(br, "cardholder", cmd_broker_cardholder, "a cardholder app's account for its own events (password shown once)")
    p.add_argument("handle", help="the cardholder's handle")
    p.add_argument("--dir", default=default_dir, help="the broker's folder")

    te = group(sub, "terminal", "terminals")
    p = data_command(te, "list", cmd_terminal_list, "registered terminals, and which are online on the broker")
    p.add_argument("--limit", type=int, default=10_000, help="at most this many terminals")
    p.add_argument("--merchant", help="only this merchant's terminals (DE 42), e.g. the one `processor provision` made")

    from processor.transport.publisher import DEFAULT_CONSUMER

    ev = group(sub, "events", "events on the broker")
    p = ev.add_parser("publish", help="publish the outbox's events to the broker after commit, until stopped")
    p.add_argument("--mqtt", help="the broker's events account, mqtt://events:PASSWORD@HOST:PORT "
                   "(default: PROCESSOR_EVENTS_MQTT_URL; `processor broker url events` prints it)")
    p.add_argument("--name", default=DEFAULT_CONSUMER, help=f"the consumer position to publish from (default {DEFAULT_CONSUMER})")
    p.add_argument("--batch", type=int, default=500, help="events read and published at once, 1-1000 (default 500)")
    p.add_argument("--progress-s", type=float, default=10.0, help="seconds between progress lines (default 10)")
    p.set_defaults(func=None, run=cmd_events_publish)
    p = data_command(ev, "status", cmd_events_status, "how far the publisher is: position, newest event, backlog")
    p.add_argument("--name", default=DEFAULT_CONSUMER, help=f"the consumer (default {DEFAULT_CONSUMER})")


def run_standalone(args: argparse.Namespace, settings: Any) -> int:
    """Run a command that needs no database; prints its result like the data commands."""
    import json

    result = args.standalone(args, settings)
    if isinstance(result, int):
        return result
    if getattr(args, "json", False):
        print(json.dumps(result))
    elif set(result) == {"account", "url"}:
        print(result["url"])
    else:
        for key, value in result.items():
            print(f"{key:>16}: {value}")
    return 0


__all__ = ["register", "run_standalone"]
