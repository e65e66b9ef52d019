"""SSH lab hosts: `[[hosts]]` in lab.toml, parsed into frozen dataclasses. Pure.

A lab host runs matrix cells for the controller (the machine running `lab matrix`):
it needs only python3 >= 3.11 and QEMU; the controller ships everything else (see
lab.hosts.ssh). This module only turns the table into validated data; connecting is
lab.hosts.ssh's business. Reference: docs/lab-toml.md, docs/scaling.md.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.config.tomlread import Table
from lab.errors import UserError

POLICIES = ("strict", "accept-new")
DEFAULT_LAB_DIR = "~/.cache/lab-remote"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Host:
    name: str  # the lab's name for it: in --hosts, cell.json's lab_host, messages
    address: str  # hostname or IP address
    port: int
    user: str
    key_file: Path  # private key; key authentication is the only method used
    known_hosts: Path  # OpenSSH known_hosts file the host key is checked against
    host_key_policy: str  # strict | accept-new
    capacity: int  # cells it runs at once
    arches: tuple[str, ...]  # arch names it serves; empty: every arch of lab.toml
    build: bool  # a build host (see docs/scaling.md; kernels are built locally today)
    lab_dir: str  # remote working directory ("~/" is the remote user's home)
    python: str  # the remote python3 (>= 3.11)

    @property
    def target(self) -> str:
        """user@address:port, for messages (never credentials)."""
        return f"{self.user}@{self.address}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH and paramiko name this host in known_hosts."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    def serves(self, arch: str) -> bool:
        return not self.arches or arch in self.arches


def _path(root: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else root / p


def parse(raw: object, file: Path, arch_names: Collection[str] = ()) -> list[Host]:
    """`[[hosts]]` entries; strict: unknown keys and bad values name file and key."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise UserError(f"{file}: hosts must be an array of tables ([[hosts]])")
    root = file.resolve().parent
    out: list[Host] = []
    for i, entry in enumerate(raw):
        t = Table(file, f"hosts[{i}]", dict(entry))
        name = t.string("name")
        if not _NAME.match(name):
            t.fail_key("name", f"{name!r} is not a valid host name; use letters, digits, . _ -")
        if name == "local":
            t.fail_key("name", "'local' is reserved for this machine")
        address = t.string("address")
        if not address or any(c.isspace() for c in address) or address.startswith("-"):
            t.fail_key("address", f"{address!r} is not a host name or IP address")
        port = t.integer("port", 22, minimum=1)
        if port > 65535:
            t.fail_key("port", f"{port} is too large; must be <= 65535")
        user = t.string("user", "") or getpass.getuser()
        key_file = _path(root, t.string("key_file"))
        known_hosts = _path(root, t.string("known_hosts", "~/.ssh/known_hosts"))
        policy = t.string("host_key_policy", "strict", choices=POLICIES)
        capacity = t.integer("capacity", 1, minimum=1)
        arches = t.strings("arches", ())
        for a in arches:
            if arch_names and a not in arch_names:
                t.fail_key("arches", f"unknown arch {a!r}; valid: {', '.join(arch_names)}")
        build = t.boolean("build", False)
        lab_dir = t.string("lab_dir", DEFAULT_LAB_DIR)
        if not lab_dir:
            t.fail_key("lab_dir", "must not be empty")
        python = t.string("python", "python3")
        if not python:
            t.fail_key("python", "must not be empty")
        t.done()
        if any(h.name == name for h in out):
            t.fail_key("name", f"duplicate host name {name!r}")
        out.append(
            Host(
                name=name,
                address=address,
                port=port,
                user=user,
                key_file=key_file,
                known_hosts=known_hosts,
                host_key_policy=policy,
                capacity=capacity,
                arches=arches,
                build=build,
                lab_dir=lab_dir,
                python=python,
            )
        )
    return out


def select(hosts: Sequence[Host], spec: str, file: Path) -> list[Host]:
    """`--hosts NAME,...` or `all`; an unknown name is an error listing the valid ones."""
    names = [n for n in (x.strip() for x in spec.split(",")) if n]
    if not hosts:
        raise UserError(f"{file}: --hosts {spec!r}: no [[hosts]] declared")
    if names == ["all"]:
        return list(hosts)
    by_name = {h.name: h for h in hosts}
    chosen: list[Host] = []
    for n in names:
        if n not in by_name:
            raise UserError(f"{file}: unknown host {n!r}; valid: all, {', '.join(by_name)}")
        if by_name[n] not in chosen:
            chosen.append(by_name[n])
    if not chosen:
        raise UserError(f"--hosts {spec!r}: name at least one host, or 'all'")
    return chosen
