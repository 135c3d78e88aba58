"""The processor's Mosquitto broker: its folder, its accounts and roles, and running it on a free port.

A broker folder holds

    mosquitto.conf               the shipped configuration (processor/transport/mosquitto.conf), filled in
    accounts.json                the service accounts' passwords (0600; the broker never reads it)
    port                         the port of the running broker
    mosquitto.log                the broker's log
    state/dynamic-security.json  every account (PBKDF2-SHA512 hash), role and ACL (the broker's own, 0600)
    state/mosquitto.db           queued messages and sessions kept across restarts

Accounts and what their roles allow (everything else is denied, subscriptions included):

    engine          subscribe $share/engines/pos/+/request and receive requests; publish pos/+/response[/...];
                    read presence (pos/+/status)
    events          publish under events/
    operator        read events/operators/# and presence
    admin           the dynamic security API ($CONTROL/dynamic-security/v1) only
    <terminal id>   publish pos/<id>/request and pos/<id>/status (its will); read pos/<id>/response[/...]
    cardholder-<n>  read events/cardholders/<n>/#

Each terminal and cardholder account has a role of its own name with literal topics (the plugin of
Mosquitto 2.0 has no %u substitution), and must connect with its user name as client id.

Binding the client id matters: an unbound account could connect with another's client id, and the broker
would then disconnect that other client. The service accounts are unbound and
use random client ids. Mosquitto (when started as root) drops to the `mosquitto` user, so the state folder
is handed to that user.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import glob
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from processor.transport.mqtt import NO_DELAY, SHARE_GROUP, TERMINAL_ID, MqttEndpoint, MqttUnavailable, connect_failure

SERVICE_ACCOUNTS = ("admin", "engine", "events", "operator")
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
PBKDF2_ITERATIONS = 101  # what the plugin itself uses; the passwords are 192-bit random strings, not words
DYNSEC_PLUGIN_GLOBS = (
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
    "/usr/lib/*/mosquitto/mosquitto_dynamic_security.so",
)
START_TIMEOUT_S = 10.0
ACCOUNTS_PER_MESSAGE = 8  # about 1 KB of commands each, against the broker's 16 KB packet limit


class BrokerError(Exception):
    """The broker folder or process is not as a command needs it; the message says what to do."""


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": True, "priority": 0}


def _reads(topic: str) -> list[dict[str, Any]]:
    """Subscribe to a filter within `topic` and receive what is published under it."""
    kind = "subscribePattern" if "#" in topic else "subscribeLiteral"
    return [_acl(kind, topic), _acl("publishClientReceive", topic)]


SERVICE_ROLES: dict[str, list[dict[str, Any]]] = {
    "engine": [
        _acl("subscribeLiteral", f"$share/{SHARE_GROUP}/pos/+/request"),
        _acl("publishClientReceive", "pos/+/request"),
        _acl("publishClientSend", "pos/+/response"),
        _acl("publishClientSend", "pos/+/response/#"),
        *_reads("pos/+/status"),
    ],
    "events": [_acl("publishClientSend", "events/#")],
    "operator": [*_reads("events/operators/#"), *_reads("pos/+/status")],
    "admin": [
        _acl("publishClientSend", f"{CONTROL_TOPIC}/#"),
        *_reads(f"{CONTROL_TOPIC}/#"),
        _acl("publishClientSend", CONTROL_TOPIC),
    ],
}


def terminal_acls(terminal_id: str) -> list[dict[str, Any]]:
    """What terminal `terminal_id` may do: its own request and status topics, its own answers."""
    return [
        _acl("publishClientSend", f"pos/{terminal_id}/request"),
        _acl("publishClientSend", f"pos/{terminal_id}/status"),
        *_reads(f"pos/{terminal_id}/response/#"),
    ]


def cardholder_acls(cardholder_id: int) -> list[dict[str, Any]]:
    """What a cardholder's app may do: read its own events."""
    return _reads(f"events/cardholders/{cardholder_id}/#")


def cardholder_user(cardholder_id: int) -> str:
    return f"cardholder-{cardholder_id}"


def check_terminal_id(terminal_id: str) -> str:
    """A terminal id usable as a broker user and topic level, or ValueError."""
    if not TERMINAL_ID.fullmatch(terminal_id) or terminal_id in SERVICE_ACCOUNTS:
        raise ValueError(
            f"terminal id {terminal_id!r} cannot be a broker account: use letters, digits, '.', '_' or '-' "
            f"(no '/', '+', '#' or spaces), and none of {', '.join(SERVICE_ACCOUNTS)}"
        )
    return terminal_id


def password_entry(password: str) -> dict[str, Any]:
    """The dynamic security plugin's record of a password: PBKDF2-SHA512 over a random 12-byte salt."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": PBKDF2_ITERATIONS,
    }


def new_password() -> str:
    return secrets.token_urlsafe(24)


def dynsec_plugin() -> str:
    """Path of Mosquitto's dynamic security plugin (Debian: package mosquitto)."""
    for pattern in DYNSEC_PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise BrokerError("Mosquitto's dynamic security plugin is not installed: apt-get install mosquitto (2.0 or later)")


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None)
    if found is None:
        raise BrokerError("mosquitto is not installed: apt-get install mosquitto")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class BrokerDir:
    """A broker's folder (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.conf = self.path / "mosquitto.conf"
        self.accounts = self.path / "accounts.json"
        self.port_file = self.path / "port"
        self.log = self.path / "mosquitto.log"
        self.state = self.path / "state"
        self.dynsec = self.state / "dynamic-security.json"

    @classmethod
    def init(cls, path: str | os.PathLike[str]) -> "BrokerDir":
        """Create the folder with the service accounts; refuses a folder that already has a broker."""
        broker = cls(path)
        if broker.accounts.exists() or broker.dynsec.exists():
            raise BrokerError(f"{broker.path} already holds a broker; use it, or choose another folder")
        broker.state.mkdir(parents=True, exist_ok=True)
        passwords = {name: new_password() for name in SERVICE_ACCOUNTS}
        config = {
            "clients": [
                {"username": name, "textName": f"processor {name}", **password_entry(passwords[name]),
                 "roles": [{"rolename": name}]}
                for name in SERVICE_ACCOUNTS
            ],
            "roles": [{"rolename": name, "acls": acls} for name, acls in SERVICE_ROLES.items()],
            "groups": [],
            "defaultACLAccess": {
                "publishClientSend": False,
                "publishClientReceive": False,
                "subscribe": False,
                "unsubscribe": True,
            },
        }
        _write_private(broker.dynsec, json.dumps(config, indent=1))
        _write_private(broker.accounts, json.dumps(passwords, indent=1))
        broker._hand_state_to_broker()
        return broker

    def _hand_state_to_broker(self) -> None:
        """Mosquitto started as root runs as `mosquitto`: it must read and rewrite its state folder."""
        user = _broker_user()
        if user is None:
            return
        self.path.chmod(0o755)
        for path in (self.state, *self.state.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
        self.state.chmod(0o700)

    def check_reachable(self) -> None:
        """BrokerError unless the `mosquitto` user (when the broker will drop to it) can reach the state folder."""
        user = _broker_user()
        if user is None:
            return
        for parent in self.state.resolve().parents:
            info = parent.stat()
            if not info.st_mode & 0o001 and info.st_uid != user.pw_uid:
                raise BrokerError(
                    f"Mosquitto runs as user mosquitto and cannot enter {parent} (mode {info.st_mode & 0o777:o}): "
                    f"put the broker folder where others may pass (e.g. /var/lib or /tmp), or chmod o+x {parent}"
                )

    def password(self, account: str) -> str:
        """A service account's password."""
        if not self.accounts.exists():
            raise BrokerError(f"{self.path} is not a broker folder: create it with `processor broker init --dir {self.path}`")
        passwords = json.loads(self.accounts.read_text(encoding="utf-8"))
        if account not in passwords:
            raise BrokerError(f"no service account {account!r}; there are {', '.join(passwords)}")
        return str(passwords[account])

    def port(self) -> int:
        """The port of the running broker."""
        try:
            return int(self.port_file.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            raise BrokerError(f"the broker of {self.path} is not running: start it with `processor broker run --dir {self.path}`") from None

    def url(self, account: str, *, host: str = "127.0.0.1", port: int | None = None) -> str:
        """mqtt://ACCOUNT:PASSWORD@HOST:PORT of a service account on the running broker."""
        from urllib.parse import quote

        return f"mqtt://{account}:{quote(self.password(account), safe='')}@{host}:{port or self.port()}"

    def render_conf(self, *, host: str, port: int) -> None:
        template = resources.files("processor.transport").joinpath("mosquitto.conf").read_text(encoding="utf-8")
        text = template.format(host=host, port=port, dynsec_plugin=dynsec_plugin(), state_dir=self.state.resolve())
        self.conf.write_text(text, encoding="utf-8")
        self.conf.chmod(0o644)


def _broker_user() -> Any:
    """The `mosquitto` account Mosquitto drops to when started as root; None when it will not drop."""
    if os.geteuid() != 0:
        return None
    try:
        import pwd

        return pwd.getpwnam("mosquitto")
    except KeyError:
        return None


def _write_private(path: Path, text: str) -> None:
    """Write a 0600 file atomically (it never exists with wider permissions)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


@dataclass
class BrokerProcess:
    """A running `mosquitto -c DIR/mosquitto.conf`."""

    broker: BrokerDir
    host: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, account: str) -> str:
        return self.broker.url(account, host=self.host, port=self.port)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (the broker saves its sessions and queues), then SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)
        with contextlib.suppress(OSError):
            self.broker.port_file.unlink()

    def __enter__(self) -> "BrokerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_broker(broker: BrokerDir, *, host: str = "127.0.0.1", port: int = 0) -> BrokerProcess:
    """Start Mosquitto on `port` (0: a free one) and return once it accepts connections."""
    binary = mosquitto_binary()
    if not broker.dynsec.exists():
        raise BrokerError(f"{broker.path} is not a broker folder: create it with `processor broker init --dir {broker.path}`")
    broker.check_reachable()
    attempts = 5 if port == 0 else 1
    last = ""
    for _ in range(attempts):
        chosen = port or free_port(host)
        broker.render_conf(host=host, port=chosen)
        log = open(broker.log, "ab")  # noqa: SIM115 - handed to the child process
        try:
            process = subprocess.Popen([binary, "-c", str(broker.conf)], stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection((host, chosen), timeout=0.2).close()
                broker.port_file.write_text(f"{chosen}\n", encoding="utf-8")
                return BrokerProcess(broker, host, chosen, process)
            except OSError:
                time.sleep(0.05)
        if process.poll() is None:
            process.kill()
            process.wait()
        last = _log_tail(broker.log)
        if "in use" not in last:
            break
    raise BrokerError(f"mosquitto did not start ({last.strip() or 'no output'}); see {broker.log}")


def _log_tail(path: Path, lines: int = 3) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    return ""


class BrokerAdmin:
    """Accounts on a running broker, through the dynamic security plugin's API (as the admin account)."""

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self.endpoint = MqttEndpoint.parse(url)
        self.timeout_s = timeout_s
        self._client: Any = None

    async def __aenter__(self) -> "BrokerAdmin":
        import aiomqtt

        self._client = aiomqtt.Client(
            self.endpoint.host, self.endpoint.port, username=self.endpoint.username, password=self.endpoint.password,
            identifier=f"admin-{secrets.token_hex(6)}", protocol=aiomqtt.ProtocolVersion.V5, timeout=self.timeout_s,
            socket_options=NO_DELAY,
        )
        try:
            await self._client.__aenter__()
            await self._client.subscribe(f"{CONTROL_TOPIC}/response", qos=1)
        except aiomqtt.MqttError as exc:
            raise connect_failure(exc, self.endpoint) from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self._client.__aexit__(None, None, None)

    async def run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send commands in one message; their responses in order (each may carry an "error")."""
        tag = secrets.token_hex(8)
        for i, command in enumerate(commands):
            command["correlationData"] = f"{tag}-{i}"
        await self._client.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)
        async with asyncio.timeout(self.timeout_s):
            async for message in self._client.messages:
                responses = json.loads(message.payload).get("responses", [])
                if responses and str(responses[0].get("correlationData", "")).startswith(tag):
                    return responses
        raise MqttUnavailable("broker closed the connection before answering")

    async def _set_accounts(self, accounts: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, str]:
        """Create each (user name, ACLs) account with a role of the same name and a new password.

        An account that exists gets a new password (the old one stops working) and keeps its role. Each
        account must connect with its user name as client id. A few accounts per message to the broker,
        which keeps each message well under the broker's packet limit.
        """
        passwords: dict[str, str] = {}
        for start in range(0, len(accounts), ACCOUNTS_PER_MESSAGE):
            passwords.update(await self._set_some_accounts(accounts[start:start + ACCOUNTS_PER_MESSAGE]))
        return passwords

    async def _set_some_accounts(self, accounts: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, str]:
        passwords = {username: new_password() for username, _ in accounts}
        commands: list[dict[str, Any]] = []
        for username, acls in accounts:
            commands.append({"command": "createRole", "rolename": username})
            # Adding an ACL the role already has is refused by the plugin, which leaves the role as wanted.
            commands += [{"command": "addRoleACL", "rolename": username, **acl} for acl in acls]
            commands.append({"command": "createClient", "username": username, "password": passwords[username],
                             "clientid": username, "roles": [{"rolename": username}]})
        responses = await self.run(commands)
        existing = [c["username"] for c, r in zip(commands, responses, strict=True)
                    if c["command"] == "createClient" and r.get("error")]
        if existing:
            reset = await self.run([{"command": "setClientPassword", "username": u, "password": passwords[u]}
                                    for u in existing])
            failed = [(u, r["error"]) for u, r in zip(existing, reset, strict=True) if r.get("error")]
            if failed:
                raise BrokerError(f"broker refused the new password of {failed[0][0]}: {failed[0][1]}")
        return passwords

    async def add_terminals(self, terminal_ids: list[str]) -> dict[str, str]:
        """Create (or give new passwords to) terminals' accounts; their passwords by terminal id."""
        return await self._set_accounts([(check_terminal_id(t), terminal_acls(t)) for t in terminal_ids])

    async def add_terminal(self, terminal_id: str) -> str:
        """Create (or give a new password to) terminal `terminal_id`'s account; its password."""
        return (await self.add_terminals([terminal_id]))[terminal_id]

    async def add_cardholder(self, cardholder_id: int) -> str:
        """Create (or give a new password to) a cardholder app's account; its password."""
        user = cardholder_user(cardholder_id)
        return (await self._set_accounts([(user, cardholder_acls(cardholder_id))]))[user]

    async def remove(self, username: str) -> None:
        """Delete an account and its own role; its open connection is closed by the broker."""
        await self.run([{"command": "deleteClient", "username": username},
                        {"command": "deleteRole", "rolename": username}])
