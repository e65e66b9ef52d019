"""`lab hosts check`, and the SSH lab hosts a matrix run uses: the one CLI module that
imports lab.hosts, so SSH stays a plug-in the run stage knows only as `Worker`s."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

from lab import config
from lab.cli import jsonout
from lab.cli.common import _load
from lab.config import hosts
from lab.errors import UserError, printable
from lab.run.orchestrate import OpenWorkers
from lab.run.workers import Worker


def declared(cfg: config.LabConfig) -> list[hosts.Host]:
    """lab.toml's [[hosts]], validated (a typo there is an error on every run)."""
    return hosts.parse(cfg.extra.get("hosts"), cfg.file, list(cfg.arches))


def chosen(cfg: config.LabConfig, names: str) -> list[hosts.Host]:
    """The hosts `--hosts NAME,...|all` selects; none without the option."""
    every = declared(cfg)
    return hosts.select(every, names, cfg.file) if names else []


def opener(cfg: config.LabConfig, lab_hosts: Sequence[hosts.Host]) -> OpenWorkers | None:
    """What run_matrix calls to open the hosts' workers (None: local slots only)."""
    if not lab_hosts:
        return None

    def open_workers(log: Callable[[str], None]) -> tuple[list[Worker], dict[str, Any]]:
        from lab.hosts import ssh  # fabric is loaded only when a run uses hosts

        workers, failed = ssh.open_workers(cfg, lab_hosts, log)
        record: dict[str, Any] = {}
        for h in lab_hosts:
            w = next((x for x in workers if x.name == h.name), None)
            record[h.name] = {
                "address": h.target,
                "capacity": h.capacity,
                "arches": sorted(w.arches) if w else list(h.arches),
                "python": w.info.python_version if w else None,
                "status": "ok" if w else f"unusable: {failed.get(h.name, '')}",
            }
        return list(workers), record

    return open_workers


def cmd_hosts_check(args: argparse.Namespace) -> int:
    from lab.hosts import check as hosts_check
    from lab.hosts import ssh

    cfg = _load(args)
    every = declared(cfg)
    if not every:
        raise UserError(f"{cfg.file}: no [[hosts]] declared (see docs/scaling.md)")
    picked = hosts.select(every, args.hosts, cfg.file) if args.hosts else every
    answers: dict[str, list[hosts_check.CheckLine]] = {}

    def one(h: hosts.Host) -> None:
        answers[h.name] = hosts_check.check(cfg, h, upload=not args.no_upload)

    ssh.each_host(picked, one)
    if args.json:
        doc = jsonout.hosts_check(picked, answers)
        print(json.dumps(doc, indent=2))
        return 0 if doc["ok"] else 2
    ok = True
    for h in picked:
        arches = ", ".join(h.arches) if h.arches else "all"
        print(f"host {h.name} ({h.target}; capacity {h.capacity}; arches {arches})")
        for line in answers.get(h.name, [hosts_check.CheckLine("check", False, "no answer")]):
            ok = ok and line.ok
            detail = printable(line.detail, one_line=True)  # holds what the host said
            print(f"  {'ok  ' if line.ok else 'FAIL'} {line.label:<11} {detail}")
    return 0 if ok else 2
