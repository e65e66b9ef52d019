"""`lab series show [NAME]` and `lab series fetch MSGID`: series as kernel developers have them.

A series under kernels/patches/ is a quilt directory (a `series` file listing patch
files) or an mbox (git format-patch, `b4 am`, a saved thread). `fetch` runs `b4 am`,
which needs the network (lore.kernel.org); the fetched mbox is checked like any other
series before it is put in place.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from lab import cache, prereqs
from lab.build import mbox, patches
from lab.cli.common import _load
from lab.config import NAME_RULE, valid_name
from lab.errors import UserError, printable

_HUNK_POS = re.compile(r"^@@ -\d+(?:,\d+)? \+\d+(?:,\d+)? @@")
FETCH_TIMEOUT = 300.0
# What b4 (python-requests) prints when lore.kernel.org cannot be reached.
_NO_NETWORK = (
    "ConnectionError",
    "Max retries exceeded",
    "Name or service not known",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ProxyError",
)  # seconds b4 may take for one thread
# A Message-Id as lore prints it (with or without <>), or a lore URL; never an option.
_MSGID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.!#$%&'*+=?^_`{|}~/-]*@[A-Za-z0-9][A-Za-z0-9.:_-]*")
_LORE_URL = re.compile(r"https://lore\.kernel\.org/[A-Za-z0-9._/@%+=-]+")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    se = sub.add_parser("series", help="patch series: show one, fetch one with b4")
    ssub = se.add_subparsers(dest="series_command", required=True, metavar="SUBCOMMAND")
    sh = ssub.add_parser("show", help="the patches of a series: subject, author, message id, files")
    sh.add_argument("name", nargs="?", default="", help="a series under kernels/patches/")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=cmd_series_show)
    cm = ssub.add_parser("compare", help="two versions of a series side by side, by subject")
    cm.add_argument("a", help="a series name, e.g. secretmem-v15")
    cm.add_argument("b", help="another, e.g. secretmem-v16")
    cm.set_defaults(func=cmd_series_compare)
    fe = ssub.add_parser("fetch", help="b4 am MSGID into kernels/patches/NAME (needs network)")
    fe.add_argument("msgid", help="the Message-Id of any mail of the thread, or a lore URL")
    fe.add_argument("--name", default="", help="series name (default: from the message id)")
    fe.add_argument("--version", "-v", type=int, default=0, help="b4 am -v N: that version")
    fe.set_defaults(func=cmd_series_fetch)


def _mail_of(p: patches.Patch) -> mbox.MailPatch | None:
    """A patch's mail: from its mbox, or a quilt patch file in git format-patch form."""
    if p.mail is not None:
        return p.mail
    try:
        return mbox.first_patch(p.file_bytes(), p.path)
    except UserError:
        return None  # not a mail: only the file name is known


def _patch_info(p: patches.Patch) -> dict[str, object]:
    """What `show` prints of one patch; a quilt patch that is a mail shows its headers too."""
    mail = _mail_of(p)
    info: dict[str, object] = {"patch": p.name, "sha256": p.sha256}
    if mail is not None:
        info |= {
            "subject": mail.subject,
            "author": mail.author,
            "message_id": mail.message_id,
            "tag": mail.tag,
        }
    info["files"] = patches.touched_files(p.read().decode(errors="replace"))
    return info


def cmd_series_show(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if not args.name:
        names = patches.available(cfg.patches_dir)
        print("\n".join(names) if names else f"no patch series under {cfg.patches_dir}")
        return 0
    series = patches.load_series(cfg.patches_dir, (args.name,))
    infos = [_patch_info(p) for p in series.patches]
    if args.json:
        print(json.dumps({"series": series.identity(), "patches": infos}, indent=2))
        return 0
    for src in series.sources:
        extra = [f"v{src.version}"] if src.version else []
        extra += [f"base-commit {src.base_commit}"] if src.base_commit else []
        extra += [f"cover <{src.cover_message_id}>"] if src.cover_message_id else []
        print(
            printable(
                f"{src.name}: {src.kind} {src.path}, {len(infos)} patches"
                + "".join(f", {e}" for e in extra),
                one_line=True,
            )
        )
    for i, info in enumerate(infos, 1):
        print(printable(f"{i:3d}. {info.get('subject') or info['patch']}", one_line=True))
        for key in ("author", "message_id"):
            if info.get(key):
                print(printable(f"       {key.replace('_', '-')}: {info[key]}", one_line=True))
        files = info["files"]
        assert isinstance(files, list)
        print(printable(f"       files: {', '.join(files) or '(none)'}", one_line=True))
    return 0


def _title_and_diff(p: patches.Patch) -> tuple[str, str]:
    mail = _mail_of(p)
    # As git range-diff: blob `index` lines and hunk positions are not the change.
    body = "".join(
        _HUNK_POS.sub("@@", ln)
        for ln in p.read().decode(errors="replace").splitlines(True)
        if not ln.startswith("index ")
    )
    return (mail.subject if mail else p.name), cache.digest(body)


def cmd_series_compare(args: argparse.Namespace) -> int:
    """git range-diff's summary: `=` same diff, `!` changed, `<`/`>` only on one side."""
    cfg = _load(args)
    sides = []
    for name in (args.a, args.b):
        series = patches.load_series(cfg.patches_dir, (name,))
        # Subject and digest of the diff part: a commit message or a blob index line
        # that changed does not make a patch different.
        sides.append([_title_and_diff(p) for p in series.patches])
    for x in patches.pair(*sides):
        left = f"{x.a}" if x.a else "-"
        right = f"{x.b}" if x.b else "-"
        print(printable(f"{left:>3}: {x.mark} {right:>3}: {x.title}", one_line=True))
    return 0


def _msgid(value: str) -> str:
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    if _MSGID.fullmatch(value) or _LORE_URL.fullmatch(value):
        return value
    raise UserError(
        f"series fetch: {value!r} is not a Message-Id (like 20210121122723.3446-8-rppt@kernel.org)"
        " or a https://lore.kernel.org/ URL"
    )


def cmd_series_fetch(args: argparse.Namespace) -> int:
    cfg = _load(args)
    msgid = _msgid(args.msgid)
    name = args.name or re.sub(r"[^A-Za-z0-9._+-]+", "-", msgid.rsplit("/", 1)[-1])[:64]
    if not valid_name(name) or name.startswith("."):
        raise UserError(f"series fetch --name: {name!r} is not a valid series name; {NAME_RULE}")
    dest = cfg.patches_dir / name
    if dest.exists() or mbox.find(cfg.patches_dir, name) is not None:
        raise UserError(f"series fetch: {dest} exists; pick another --name or remove it")
    b4 = shutil.which(prereqs.program("b4"))
    if b4 is None:
        raise UserError(
            "series fetch: b4 is not installed (apt-get install b4, or pip install b4); "
            "it also needs network access to lore.kernel.org. Offline: save the thread as "
            "an mbox in "
            f"{cfg.patches_dir}/{name}.mbox"
        )
    if args.version < 0:
        raise UserError(f"series fetch --version: {args.version} is not a version number")
    cfg.patches_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cfg.patches_dir))
    try:
        argv = [b4, "am", "--outdir", str(tmp)]
        if args.version:
            argv += ["-v", str(args.version)]
        argv += ["--", msgid]  # a message id never reads as an option
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, errors="replace", timeout=FETCH_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            raise UserError(
                f"series fetch: b4 am {msgid} took longer than {FETCH_TIMEOUT:g} s; "
                "b4 needs network access to lore.kernel.org"
            ) from None
        found = sorted(p for p in tmp.iterdir() if mbox.is_mbox(p))
        if proc.returncode != 0 or not found:
            said = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            last = printable(said[-1], 200, one_line=True) if said else "no output"
            said_all = proc.stderr + proc.stdout
            if any(m in said_all for m in _NO_NETWORK):
                raise UserError(
                    f"series fetch: b4 am {msgid}: cannot reach lore.kernel.org (no network "
                    f"access?); b4 said: {last}"
                )
            raise UserError(
                f"series fetch: b4 am {msgid} failed (exit {proc.returncode}): {last}; "
                "b4 needs network access to lore.kernel.org"
            )
        fetched = mbox.read(found[0])  # checked like any series before it is kept
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"{name}: v{fetched.version}, {len(fetched.patches)} patches"
        + (f", base-commit {fetched.base_commit}" if fetched.base_commit else "")
        + f" -> {dest}; show it with: lab series show {name}"
    )
    return 0
