"""A patch series as mail: an mbox from `git format-patch`, `b4 am` or a saved thread.

Each mail is parsed with Python's `email` package. As `git am` does, a mail is split
into the commit message (before the `---` separator) and the diff; only the diff is
handed to `patch`, so no line of a commit message can ever act as a file header.
The cover letter ([PATCH 0/n]) and replies are skipped; patches are ordered by the
k/n of their `[PATCH vN k/n]` subject tag. Author, subject, date, message and
Message-Id are kept for the build's metadata; the `base-commit:` trailer (b4 and
`git format-patch --base` write it) is recorded for the series.

Everything here is bounded: the file's size, the number of mails and patches, the
MIME nesting, the kept commit message. Nothing here starts a process.
"""

from __future__ import annotations

import contextlib
import email
import email.errors
import email.header
import email.policy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

from lab.errors import UserError, printable

# The largest posted series are a few hundred patches and a few MiB; a thread with
# its replies is larger, but not by orders of magnitude.
MAX_MBOX_BYTES = 64 << 20
MAX_MAILS = 5000
MAX_PATCHES = 1000
MAX_MIME_PARTS = 64
MAX_MIME_DEPTH = 4
MAX_HEADER_BYTES = 64 << 10  # a mail's whole header block
MAX_HEADER_CHARS = 4 << 10  # one header, before RFC 2047 decoding
MAX_MESSAGE_CHARS = 4 << 10  # commit message kept in metadata; the diff is never cut
MBOX_SUFFIXES = (".mbox", ".mbx")

# git mailsplit's rule, not mailbox.mbox's: a new mail starts at a `From ` line that
# carries a date (`From <sha> Mon Sep 17 00:00:00 2001`, `From x@y Thu Nov 26 ...`).
# git format-patch does not escape `From ` at the start of a commit message line, so
# splitting at every `From ` line (Python's mailbox.mbox) would cut such a patch in two.
_FROM_LINE = re.compile(rb"^From \S+ +\S{3} \S{3} +\d{1,2} \d{1,2}:\d{2}(?::\d{2})? ")
# [PATCH], [PATCH v16 07/11], [RFC PATCH mm-unstable v2 3/5], [PATCH RESEND 1/2] ...
_TAG = re.compile(r"\[([^\]]*\bPATCH\b[^\]]*)\]", re.IGNORECASE)
_VERSION = re.compile(r"(?:^|\s)v(\d{1,4})(?=\s|$)", re.IGNORECASE)
_NUMBER = re.compile(r"(?:^|\s)(\d{1,4})/(\d{1,4})(?=\s|$)")
_REPLY = re.compile(r"^\s*(?:re|aw|sv|antw)\s*:", re.IGNORECASE)
_BASE_COMMIT = re.compile(r"^base-commit: ([0-9a-f]{7,64})\s*$", re.MULTILINE)
_MAIL_HEADER = re.compile(rb"^(?:From|Subject|Date|Message-I[Dd]): ")
_HUNK = re.compile(rb"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")


@dataclass(frozen=True)
class MailPatch:
    """One patch mail: what `git am` would commit, and the diff it would apply."""

    index: int  # 1-based position of the mail in the file
    message_id: str
    subject: str  # without the [PATCH ...] tag
    tag: str  # the tag as posted, e.g. "PATCH v16 07/11"
    author: str
    date: str
    message: str  # the commit message (bounded), as `git am` would record it
    version: int  # 1 when the tag has no vN
    number: int  # k of k/n; 1 for an untagged single patch
    total: int  # n of k/n
    diff: bytes  # only the diff part of the mail

    @property
    def label(self) -> str:
        """How an error names this mail: its subject and Message-Id."""
        return _label(self.index, self.subject, self.message_id)


@dataclass(frozen=True)
class MailSeries:
    file: Path
    patches: tuple[MailPatch, ...]
    version: int
    base_commit: str  # "" when no mail carries a base-commit: trailer
    cover_message_id: str  # "" without a cover letter


def _label(index: int, subject: str, message_id: str) -> str:
    shown = printable(subject, 120, one_line=True)
    return f"mail #{index} {shown!r} " + (f"<{message_id}>" if message_id else "(no Message-Id)")


def is_mbox(path: Path) -> bool:
    return path.suffix in MBOX_SUFFIXES and path.is_file()


def find(patches_dir: Path, name: str) -> Path | None:
    """The mbox a series name stands for, or None (then it may be a quilt directory).

    `NAME.mbox`/`NAME.mbx`, a file NAME ending so, or a directory NAME without a
    `series` file holding exactly one mbox (what `b4 am -o DIR` leaves, beside its
    `.cover`).
    """
    direct = patches_dir / name
    if is_mbox(direct):
        return direct
    for suffix in MBOX_SUFFIXES:
        if is_mbox(patches_dir / f"{name}{suffix}"):
            return patches_dir / f"{name}{suffix}"
    if direct.is_dir() and not (direct / "series").exists():
        found = sorted(p for p in direct.iterdir() if is_mbox(p))
        if len(found) > 1:
            raise UserError(
                f"patch series {name!r}: {direct} holds {len(found)} mbox files "
                f"({', '.join(p.name for p in found[:5])}); keep one per series directory"
            )
        if found:
            return found[0]
    return None


def split(data: bytes) -> list[bytes]:
    """The mails of an mbox (or one bare mail, as a single `git format-patch` file is)."""
    mails: list[list[bytes]] = []
    current: list[bytes] = []
    for line in data.splitlines(keepends=True):
        if _FROM_LINE.match(line):
            if current:
                mails.append(current)
                if len(mails) > MAX_MAILS:
                    break
            current = [line]
        else:
            current.append(line)
    if current:
        mails.append(current)
    return [b"".join(m) for m in mails]


def read_bounded(path: Path, limit: int, where: str, what: str) -> bytes:
    """At most `limit` bytes of an untrusted file; larger is an error naming `where`."""
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise UserError(f"{where}: cannot read: {exc.strerror}") from None
    if len(data) > limit:
        raise UserError(f"{where}: larger than {limit >> 20} MiB; not {what}")
    return data


def read(path: Path) -> MailSeries:
    """Parse the mbox at `path` into the ordered patches of one series version."""
    return parse(read_bounded(path, MAX_MBOX_BYTES, str(path), "a patch series"), path)


def parse(data: bytes, path: Path) -> MailSeries:
    patches, base_commits, cover, mails = _collect(data, path)
    if not patches:
        raise UserError(
            f"{path}: no patches in {mails} mail(s); expected git format-patch "
            "or b4 am output (mails with a diff after the '---' line)"
        )
    ordered = _order(patches, path)
    if len(base_commits) > 1:
        (a, wa), (b, wb) = list(base_commits.items())[:2]
        raise UserError(f"{path}: two base-commit: trailers, {a} ({wa}) and {b} ({wb})")
    return MailSeries(
        file=path,
        patches=ordered,
        version=ordered[0].version,
        base_commit=next(iter(base_commits), ""),
        cover_message_id=cover,
    )


def first_patch(data: bytes, path: Path) -> MailPatch | None:
    """The first patch mail in `data` without any series checks (one quilt patch file)."""
    patches = _collect(data, path)[0]
    return patches[0] if patches else None


def _collect(data: bytes, path: Path) -> tuple[list[MailPatch], dict[str, str], str, int]:
    """(patch mails in file order, base-commit -> mail, cover Message-Id, number of mails)."""
    raw_mails = split(data)
    if len(raw_mails) > MAX_MAILS:
        raise UserError(f"{path}: more than {MAX_MAILS} mails; not one patch series")
    patches: list[MailPatch] = []
    base_commits: dict[str, str] = {}  # commit -> the mail that names it
    cover = ""
    for index, raw in enumerate(raw_mails, 1):
        msg = _message(raw, path, index)
        subject = _header(msg, "subject")
        message_id = _header(msg, "message-id").strip().strip("<>")
        where = f"{path}: {_label(index, subject, message_id)}"
        if _REPLY.match(subject):
            continue  # a review reply in a saved thread, not a patch
        body = _body(msg, where)
        for m in _BASE_COMMIT.finditer(body.decode(errors="replace")):
            base_commits.setdefault(m[1], where)
        tag, version, number, total = _tag(subject, where)
        if number == 0:
            cover = message_id
            continue
        message, diff = split_body(body)
        if not diff.strip():
            if tag:
                raise UserError(f"{where}: a [{tag}] mail without a diff; expected a patch")
            continue  # untagged mail without a diff: discussion
        check_diff(diff, where)
        patches.append(
            MailPatch(
                index=index,
                message_id=message_id,
                subject=_TAG.sub("", subject, count=1).strip(),
                tag=tag,
                author=_header(msg, "from"),
                date=_header(msg, "date"),
                message=message.decode(errors="replace")[:MAX_MESSAGE_CHARS].strip(),
                version=version,
                number=number,
                total=total,
                diff=diff,
            )
        )
        if len(patches) > MAX_PATCHES:
            raise UserError(f"{path}: more than {MAX_PATCHES} patches; not one patch series")
    return patches, base_commits, cover, len(raw_mails)


def _parse_mail(raw: bytes) -> Message:
    """Parse one mail with the compat32 policy: headers stay raw strings.

    The default policy parses every header into a structure on access; a 1 MiB
    Subject of encoded words took more than 3 GB, and a 1 MiB From more than a
    minute. Headers are only decoded here, each cut to MAX_HEADER_CHARS first.
    """
    # Drop the mbox `From ` line: the email parser would take it as a bad header.
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    end = raw.find(b"\n\n")
    if (end if end != -1 else len(raw)) > MAX_HEADER_BYTES:
        raise ValueError(f"headers larger than {MAX_HEADER_BYTES >> 10} KiB")
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def _message(raw: bytes, path: Path, index: int) -> Message:
    try:
        return _parse_mail(raw)
    except (RecursionError, ValueError, TypeError) as exc:
        raise UserError(f"{path}: mail #{index}: not a mail: {exc}") from None


def _header(msg: Message, name: str) -> str:
    """One header, RFC 2047 words decoded, as one printable line of at most 500 chars."""
    value = msg.get(name)
    text = str(value)[:MAX_HEADER_CHARS] if value is not None else ""
    # Not decodable (a bad charset or encoding): keep the raw text.
    with contextlib.suppress(
        ValueError, TypeError, LookupError, UnicodeError, email.errors.HeaderParseError
    ):
        text = str(email.header.make_header(email.header.decode_header(text)))
    return printable(" ".join(text.split()), 500, one_line=True)


def _body(msg: Message, where: str) -> bytes:
    """The text of the mail: its text/* parts in order (a patch may be an attachment)."""
    out: list[bytes] = []
    for part in _leaves(msg, where, 0, [0]):
        if part.get_content_maintype() != "text":
            continue
        try:
            payload = part.get_payload(decode=True)
        except (ValueError, TypeError, AssertionError) as exc:
            raise UserError(f"{where}: undecodable body: {exc}") from None
        if isinstance(payload, bytes):
            out.append(payload.replace(b"\r\n", b"\n"))
    return b"\n".join(out)


def _leaves(msg: Message, where: str, depth: int, count: list[int]) -> Iterator[Message]:
    if depth > MAX_MIME_DEPTH:
        raise UserError(f"{where}: MIME parts nested deeper than {MAX_MIME_DEPTH}")
    count[0] += 1
    if count[0] > MAX_MIME_PARTS:
        raise UserError(f"{where}: more than {MAX_MIME_PARTS} MIME parts")
    if msg.is_multipart():
        payload = msg.get_payload()
        for part in payload if isinstance(payload, list) else []:
            if isinstance(part, Message):
                yield from _leaves(part, where, depth + 1, count)
    else:
        yield msg


def _tag(subject: str, where: str) -> tuple[str, int, int, int]:
    """(tag, version, k, n) of a subject; ("", 1, 1, 1) for a mail without [PATCH]."""
    m = _TAG.search(subject)
    if m is None:
        return "", 1, 1, 1
    tag = m[1].strip()
    v = _VERSION.search(tag)
    n = _NUMBER.search(tag)
    version = int(v[1]) if v else 1
    if n is None:
        return tag, version, 1, 1
    number, total = int(n[1]), int(n[2])
    if total == 0 or number > total:
        raise UserError(f"{where}: [{tag}]: {number}/{total} is not a valid k/n")
    return tag, version, number, total


def split_body(body: bytes) -> tuple[bytes, bytes]:
    """(commit message, diff) of a mail body, the way `git am` reads it.

    The message ends at the `---` separator line git format-patch writes before the
    diffstat; the diff starts at the first real diff header after it, so a commit
    message that quotes `--- a/file`, `+++ b/file` and `@@` lines is never a diff.
    Without a separator, the diff starts at the first real diff header. A real header
    is `diff -` (`diff --git`), or `--- ` immediately followed by `+++ ` and `@@`.
    """
    lines = body.splitlines(keepends=True)
    sep = _separator(lines)
    message_end = sep if sep is not None else len(lines)
    start = _diff_start(lines, sep + 1 if sep is not None else 0)
    if start is None:
        return b"".join(lines[:message_end]), b""
    if sep is None:
        message_end = start
    diff = lines[start:]
    # git format-patch ends a mail with a signature: `-- ` then the git version.
    for i in range(len(diff) - 1, max(-1, len(diff) - 8), -1):
        if diff[i].rstrip(b"\n") == b"-- " and not any(
            ln[:1] in (b" ", b"+", b"-", b"@", b"\\", b"d") for ln in diff[i + 1 :]
        ):
            diff = diff[:i]
            break
    return b"".join(lines[:message_end]), b"".join(diff)


def _separator(lines: list[bytes]) -> int | None:
    """The `---` line that ends the commit message, or None.

    Not one inside a diff: after a `diff -` line (git am's message would have ended
    there already), or within the counted lines of a hunk (a removed `--` line reads
    `---`). A hunk quoted in the message ends where its @@ counts say, so the
    separator after it still counts.
    """
    old = new = 0  # lines still owed by the current hunk
    for i, ln in enumerate(lines):
        if old > 0 or new > 0:
            c = ln[:1]
            if c in (b" ", b"\n", b"\r"):
                old, new = old - 1, new - 1
            elif c == b"-":
                old -= 1
            elif c == b"+":
                new -= 1
            elif c != b"\\":
                old = new = 0  # not a diff line: the quote was cut short
            if old > 0 or new > 0 or c in (b"-", b"+", b" "):
                continue
        if ln.startswith(b"diff -"):
            return None
        if ln.rstrip() == b"---":
            return i
        if m := _HUNK.match(ln):
            old = int(m[1]) if m[1] is not None else 1
            new = int(m[2]) if m[2] is not None else 1
    return None


def diff_of_file(raw: bytes) -> bytes:
    """The bytes of a quilt patch file that `patch` should see.

    A patch file in git format-patch form is a mail: only its diff part is a diff, as
    in an mbox. Any other file (a plain diff, quilt's description above a diff) is
    handed over whole, as before.
    """
    first = raw.split(b"\n", 1)[0]
    if not (_FROM_LINE.match(first + b"\n") or _MAIL_HEADER.match(first)):
        return raw
    try:
        msg = _parse_mail(raw)
    except (RecursionError, ValueError, TypeError):
        return raw
    if not msg.get("subject"):
        return raw
    try:
        body = _body(msg, "patch file")
    except UserError:
        return raw
    return split_body(body)[1] or raw


def _diff_start(lines: list[bytes], begin: int) -> int | None:
    for i in range(begin, len(lines)):
        ln = lines[i]
        if ln.startswith(b"diff -"):  # diff --git, diff -u, diff -Nurp
            return i
        if (
            ln.startswith(b"--- ")
            and i + 2 < len(lines)
            and lines[i + 1].startswith(b"+++ ")
            and lines[i + 2].startswith(b"@@ ")
        ):
            return i
    return None


def check_diff(diff: bytes, where: str) -> None:
    """A diff whose hunks do not hold the lines their headers count is corrupt
    (a mailer wrapped or stripped lines); `patch` would reject it with less to go on."""
    if b"GIT binary patch" in diff:
        raise UserError(f"{where}: a binary patch; the lab applies text diffs with patch(1)")
    lines = diff.splitlines()
    i = 0
    hunks = 0
    while i < len(lines):
        m = _HUNK.match(lines[i])
        if m is None:
            i += 1
            continue
        hunks += 1
        old = int(m[1]) if m[1] is not None else 1
        new = int(m[2]) if m[2] is not None else 1
        header_line = i + 1
        i += 1
        while old > 0 or new > 0:
            if i >= len(lines):
                raise UserError(
                    f"{where}: corrupt diff: hunk at diff line {header_line} ends early "
                    f"({old} old and {new} new lines missing)"
                )
            c = lines[i][:1]
            if c in (b" ", b""):  # an empty line is a context line whose space was lost
                old -= 1
                new -= 1
            elif c == b"-":
                old -= 1
            elif c == b"+":
                new -= 1
            elif c != b"\\":
                shown = printable(lines[i][:80].decode(errors="replace"), one_line=True)
                raise UserError(
                    f"{where}: corrupt diff: line {i + 1} inside the hunk at diff line "
                    f"{header_line} is not a diff line: {shown!r}"
                )
            if old < 0 or new < 0:
                raise UserError(
                    f"{where}: corrupt diff: the hunk at diff line {header_line} holds more "
                    "lines than its @@ header counts"
                )
            i += 1
    if hunks == 0 and b"rename from " not in diff and b"mode " not in diff:
        raise UserError(f"{where}: corrupt diff: no hunk (@@ line) after the diff header")


def _order(patches: list[MailPatch], path: Path) -> tuple[MailPatch, ...]:
    versions = sorted({p.version for p in patches})
    if len(versions) > 1:
        first = {v: next(p for p in patches if p.version == v) for v in versions}
        shown = ", ".join(f"v{v} ({first[v].label})" for v in versions[:4])
        raise UserError(
            f"{path}: patches of {len(versions)} versions of a series: {shown}; "
            "keep one version per mbox (b4 am -v N)"
        )
    totals = {p.total for p in patches}
    if len(totals) > 1:
        odd = next(p for p in patches if p.total != patches[0].total)
        raise UserError(
            f"{path}: {odd.label} is [{odd.tag}] but {patches[0].label} says "
            f"{patches[0].number}/{patches[0].total}; the k/n totals disagree"
        )
    total = patches[0].total
    by_number: dict[int, MailPatch] = {}
    for p in patches:
        if p.number in by_number:
            raise UserError(
                f"{path}: {p.label} is patch {p.number}/{total} again "
                f"(also {by_number[p.number].label}); duplicate k/n"
            )
        by_number[p.number] = p
    if len(patches) > 1 or total > 1:
        missing = [k for k in range(1, total + 1) if k not in by_number]
        if missing:
            shown = ", ".join(f"{k}/{total}" for k in missing[:10])
            raise UserError(
                f"{path}: patch {shown} of v{versions[0]} missing "
                f"(have {len(patches)} of {total}, e.g. {patches[0].label})"
            )
    return tuple(by_number[k] for k in sorted(by_number))
