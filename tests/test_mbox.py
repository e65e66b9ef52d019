"""Series as mail: mboxes made by `git format-patch` in a scratch repository.

The mbox is applied like `git am` would: cover letter skipped, patches in k/n order,
only each mail's diff part handed to patch(1); commit messages, authors and
Message-Ids land in the series' metadata.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lab.build import mbox, patches
from lab.build.source import Source
from lab.errors import UserError

REPO = Path(__file__).resolve().parent.parent
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ann Author",
    "GIT_AUTHOR_EMAIL": "ann@example.org",
    "GIT_COMMITTER_NAME": "Ann Author",
    "GIT_COMMITTER_EMAIL": "ann@example.org",
    "GIT_AUTHOR_DATE": "2021-01-21T12:27:23+00:00",
    "GIT_COMMITTER_DATE": "2021-01-21T12:27:23+00:00",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    ).stdout


# The second commit's message quotes a diff that would overwrite a file outside the
# tree, and starts a line with "From " (which a naive mbox split cuts at).
HOSTILE_MESSAGE = """\
mm/secretmem: take the old diff back

From the review of v2: the earlier version did this, quoted here:

--- a/../victim
+++ b/../victim
@@ -1 +1 @@
-secret
+owned

which must never be applied.
"""


def scratch_repo(tmp_path: Path) -> tuple[Path, str]:
    """A git repo with a base commit and three patch commits; returns (repo, base sha)."""
    repo = tmp_path / "repo"
    (repo / "mm").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "mm" / "secretmem.c").write_text("line one\nline two\nline three\n")
    (repo / "mm" / "Kconfig").write_text("config SECRETMEM\n\tdef_bool y\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "base")
    base = git(repo, "rev-parse", "HEAD").strip()
    (repo / "mm" / "secretmem.c").write_text("line one\nline TWO\nline three\n")
    git(repo, "commit", "-q", "-am", "mm/secretmem: first change\n\nWhy: a test.")
    (repo / "mm" / "Kconfig").write_text("config SECRETMEM\n\tdef_bool y\n\thelp\n\t  lab\n")
    git(repo, "commit", "-q", "-am", HOSTILE_MESSAGE)
    # 8bit mail content: the bytes must survive the mail parser unchanged.
    (repo / "mm" / "new.c").write_bytes("new file µ ünïcode\n".encode())
    git(repo, "add", "mm/new.c")
    git(
        repo,
        "-c",
        "user.name=Bob Other",
        "-c",
        "user.email=bob@example.org",
        "commit",
        "-q",
        "--author=Bob Other <bob@example.org>",
        "-m",
        "mm: add new.c",
    )
    return repo, base


def format_patch(repo: Path, base: str, *extra: str, head: str = "HEAD") -> bytes:
    """git format-patch --stdout of base..HEAD: the mbox `git send-email` would post."""
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(
        [
            *("git", "-C", str(repo), "format-patch", "--stdout", "--thread", f"--base={base}"),
            *extra,
            f"{base}..{head}",
        ],
        check=True,
        capture_output=True,
        env=env,
    ).stdout


def pristine(tmp_path: Path, repo: Path, base: str) -> Source:
    tree = tmp_path / "pristine"
    tree.mkdir()
    subprocess.run(f"git -C {repo} archive {base} | tar -x -C {tree}", shell=True, check=True)
    for f in (tree / "mm").iterdir():
        os.chmod(f, 0o444)
    return Source("test:1", tree, "test tree")


@pytest.fixture
def series_setup(tmp_path: Path) -> tuple[Path, Path, str, bytes]:
    repo, base = scratch_repo(tmp_path)
    data = format_patch(repo, base, "--cover-letter", "-v3")
    pdir = tmp_path / "patches"
    pdir.mkdir()
    return repo, pdir, base, data


def _mails(data: bytes) -> list[bytes]:
    return mbox.split(data)


def test_format_patch_mbox_is_read_in_order_with_identity(
    series_setup: tuple[Path, Path, str, bytes],
) -> None:
    _repo, pdir, base, data = series_setup
    mails = _mails(data)
    assert len(mails) == 4  # cover + 3, although a commit message line starts with "From "
    # A saved thread is in arrival order: shuffle the patches.
    (pdir / "s.mbox").write_bytes(b"".join([mails[3], mails[1], mails[0], mails[2]]))
    series = patches.load_series(pdir, ("s",))
    subjects = [p.mail.subject for p in series.patches if p.mail]
    assert subjects == [
        "mm/secretmem: first change",
        "mm/secretmem: take the old diff back",
        "mm: add new.c",
    ]
    first = series.patches[0].mail
    assert first is not None
    assert first.tag == "PATCH v3 1/3"
    assert first.author == "Ann Author <ann@example.org>"
    assert first.message_id and "@" in first.message_id
    assert first.message == "Why: a test."
    assert series.patches[2].mail and series.patches[2].mail.author.startswith("Bob Other")
    (src,) = series.sources
    assert (src.kind, src.version, src.base_commit) == ("mbox", 3, base)
    assert src.cover_message_id
    described = series.describe()
    assert [d["message_id"] for d in described] == [
        p.mail.message_id for p in series.patches if p.mail
    ]
    assert series.identity()[0]["base_commit"] == base
    # The whole message, "From the review" line included, is the commit message.
    hostile = series.patches[1].mail
    assert hostile is not None and "From the review of v2" in hostile.message
    assert b"victim" not in hostile.diff and hostile.diff.startswith(b"diff --git a/mm/Kconfig")


def test_mbox_builds_the_same_tree_as_the_quilt_directory(
    tmp_path: Path, series_setup: tuple[Path, Path, str, bytes]
) -> None:
    """Acceptance 1 in small: the mbox and the quilt directory of one series give the
    same patched tree bytes (same tree, same config, same toolchain: same image)."""
    repo, pdir, base, data = series_setup
    (pdir / "s.mbx").write_bytes(data)
    quilt = pdir / "q"
    quilt.mkdir()
    env = {**os.environ, **GIT_ENV}
    subprocess.run(
        ["git", "-C", str(repo), "format-patch", "-q", "-o", str(quilt), f"{base}..HEAD"],
        check=True,
        env=env,
    )
    (quilt / "series").write_text("\n".join(sorted(p.name for p in quilt.glob("*.patch"))) + "\n")
    victim = tmp_path / "victim"
    victim.write_text("secret\n")
    victim.chmod(0o600)
    src = pristine(tmp_path, repo, base)
    log: list[str] = []
    from_mbox = patches.apply(src, patches.load_series(pdir, ("s",)), tmp_path / "c1", log.append)
    from_quilt = patches.apply(src, patches.load_series(pdir, ("q",)), tmp_path / "c2", log.append)
    files = sorted(str(p.relative_to(from_mbox)) for p in from_mbox.rglob("*") if p.is_file())
    assert files == sorted(
        str(p.relative_to(from_quilt)) for p in from_quilt.rglob("*") if p.is_file()
    )
    assert files == ["mm/Kconfig", "mm/new.c", "mm/secretmem.c"]
    for f in files:
        assert (from_mbox / f).read_bytes() == (from_quilt / f).read_bytes()
        assert (from_mbox / f).read_bytes() == (repo / f).read_bytes()
    assert victim.read_text() == "secret\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_b4_style_directory_is_a_series(
    tmp_path: Path, series_setup: tuple[Path, Path, str, bytes]
) -> None:
    """`b4 am -o DIR` leaves DIR/<name>.mbx beside DIR/<name>.cover."""
    _repo, pdir, _base, data = series_setup
    d = pdir / "secretmem-v3"
    d.mkdir()
    (d / "v3_20210121_ann_first_change.mbx").write_bytes(data)
    (d / "v3_20210121_ann_first_change.cover").write_bytes(_mails(data)[0])
    assert len(patches.load_series(pdir, ("secretmem-v3",)).patches) == 3
    assert "secretmem-v3" in patches.available(pdir)


def _bad(pdir: Path, data: bytes) -> str:
    (pdir / "bad.mbox").write_bytes(data)
    with pytest.raises(UserError) as exc:
        patches.load_series(pdir, ("bad",))
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_mbox_with_only_a_cover_letter(series_setup: tuple[Path, Path, str, bytes]) -> None:
    _repo, pdir, _base, data = series_setup
    msg = _bad(pdir, _mails(data)[0])
    assert "no patches in 1 mail(s)" in msg and "bad.mbox" in msg


def test_missing_patch_names_the_mail(series_setup: tuple[Path, Path, str, bytes]) -> None:
    _repo, pdir, _base, data = series_setup
    m = _mails(data)
    msg = _bad(pdir, m[0] + m[1] + m[3])
    assert "patch 2/3 of v3 missing" in msg and "mm/secretmem: first change" in msg
    assert "@" in msg  # the Message-Id


def test_two_versions_in_one_mbox(
    tmp_path: Path, series_setup: tuple[Path, Path, str, bytes]
) -> None:
    repo, pdir, base, data = series_setup
    v4 = format_patch(repo, base, "-v4")
    msg = _bad(pdir, data + v4)
    assert "2 versions" in msg and "v3 (mail #2" in msg and "v4 (mail #5" in msg


def test_duplicate_k_of_n(series_setup: tuple[Path, Path, str, bytes]) -> None:
    _repo, pdir, _base, data = series_setup
    m = _mails(data)
    msg = _bad(pdir, m[1] + m[2] + m[2] + m[3])
    assert "patch 2/3 again" in msg and "take the old diff back" in msg


def test_corrupt_diff_names_the_mail(series_setup: tuple[Path, Path, str, bytes]) -> None:
    _repo, pdir, _base, data = series_setup
    m = _mails(data)
    # A mailer dropped a context line of the first patch's hunk.
    broken = m[1].replace(b"\n line three\n", b"\n", 1)
    assert broken != m[1]
    msg = _bad(pdir, m[0] + broken + m[2] + m[3])
    assert "corrupt diff" in msg and "mm/secretmem: first change" in msg


def test_patch_mail_without_diff(series_setup: tuple[Path, Path, str, bytes]) -> None:
    _repo, pdir, _base, data = series_setup
    m = _mails(data)
    cut = m[1].split(b"\n---\n", 1)[0] + b"\n"
    msg = _bad(pdir, cut + m[2] + m[3])
    assert "without a diff" in msg and "[PATCH v3 1/3]" in msg


def test_mime_bounds(tmp_path: Path) -> None:
    inner = b"Content-Type: text/plain\n\nx\n"
    body = inner
    for i in range(mbox.MAX_MIME_DEPTH + 3):
        body = (
            f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n'.encode()
            + body
            + f"\n--b{i}--\n".encode()
        )
    mail = b"From x Mon Sep 17 00:00:00 2001\nSubject: [PATCH] deep\nMessage-Id: <d@x>\n" + body
    (tmp_path / "deep.mbox").write_bytes(mail)
    with pytest.raises(UserError, match=r"deep.*<d@x>: MIME parts nested deeper"):
        patches.load_series(tmp_path, ("deep",))


def test_mbox_size_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mbox, "MAX_MBOX_BYTES", 1000)
    (tmp_path / "big.mbox").write_bytes(b"x" * 1001)
    with pytest.raises(UserError, match=r"big.mbox: larger than"):
        patches.load_series(tmp_path, ("big",))


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ""])
def test_series_names_stay_under_kernels_patches(tmp_path: Path, name: str) -> None:
    with pytest.raises(UserError, match="is not a name under kernels/patches"):
        patches.load_series(tmp_path, (name,))


def test_quoted_diff_without_separator_is_refused_not_applied(
    tmp_path: Path, series_setup: tuple[Path, Path, str, bytes]
) -> None:
    """A hand-made mail without git's `---` separator whose message quotes a diff: what
    is message and what is diff cannot be told (git am would take the quote as the
    patch too). The quote then counts as the diff, and its path is refused before
    patch(1) runs; the file outside the tree is untouched."""
    repo, pdir, base, data = series_setup
    head, rest = _mails(data)[2].split(b"\n---\n", 1)
    head = head.replace(b"[PATCH v3 2/3]", b"[PATCH]")
    (pdir / "h.mbox").write_bytes(head + b"\n" + rest[rest.index(b"diff --git") :])
    victim = tmp_path / "victim"
    victim.write_text("secret\n")
    victim.chmod(0o600)
    src = pristine(tmp_path, repo, base)
    series = patches.load_series(pdir, ("h",))
    with pytest.raises(UserError, match=r"path '\.\./victim' goes up with '\.\.'"):
        patches.apply(src, series, tmp_path / "cache", lambda _m: None)
    assert victim.read_text() == "secret\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_quilt_patch_in_mail_form_applies_only_its_diff(
    tmp_path: Path, series_setup: tuple[Path, Path, str, bytes]
) -> None:
    """A quilt directory of git format-patch files: a diff quoted in a commit message
    (inside the tree this time) is not applied by patch(1), which would otherwise take
    any header triple it meets."""
    repo, pdir, base, _data = series_setup
    quoted = (
        "mm: quote a diff\n\nThe old one was:\n\n"
        "--- a/mm/other.c\n+++ b/mm/other.c\n@@ -1 +1 @@\n-untouched\n+CHANGED\n"
    )
    (repo / "mm" / "other.c").write_text("untouched\n")
    git(repo, "add", "mm/other.c")
    git(repo, "commit", "-q", "-m", "add other.c")
    base2 = git(repo, "rev-parse", "HEAD").strip()
    (repo / "mm" / "secretmem.c").write_text("line one\nline 2\nline three\n")
    git(repo, "commit", "-q", "-am", quoted)
    quilt = pdir / "q2"
    env = {**os.environ, **GIT_ENV}
    subprocess.run(
        ["git", "-C", str(repo), "format-patch", "-q", "-o", str(quilt), f"{base2}..HEAD"],
        check=True,
        env=env,
    )
    (quilt / "series").write_text("".join(p.name + "\n" for p in sorted(quilt.glob("*.patch"))))
    src = pristine(tmp_path, repo, base2)
    out = patches.apply(src, patches.load_series(pdir, ("q2",)), tmp_path / "c", lambda _m: None)
    assert (out / "mm" / "other.c").read_text() == "untouched\n"
    assert (out / "mm" / "secretmem.c").read_text() == "line one\nline 2\nline three\n"
    del base


# --- the CLI ------------------------------------------------------------------------------


def _lab(tmp_path: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "lab", "--config", str(tmp_path / "lab.toml"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )


@pytest.fixture
def lab_dir(tmp_path: Path) -> Path:
    shutil.copy(REPO / "lab.toml", tmp_path / "lab.toml")
    (tmp_path / "kernels" / "patches").mkdir(parents=True)
    return tmp_path


def test_series_show_lists_subject_author_msgid_files(
    lab_dir: Path, series_setup: tuple[Path, Path, str, bytes]
) -> None:
    _repo, _pdir, base, data = series_setup
    (lab_dir / "kernels" / "patches" / "secretmem-v3.mbox").write_bytes(data)
    out = _lab(lab_dir, "series", "show", "secretmem-v3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("secretmem-v3: mbox ") and f"base-commit {base}" in lines[0]
    assert "v3, " in lines[0] and "3 patches" in lines[0]
    assert lines[1] == "  1. mm/secretmem: first change"
    assert lines[2] == "       author: Ann Author <ann@example.org>"
    assert lines[3].startswith("       message-id: ") and "@" in lines[3]
    assert lines[4] == "       files: mm/secretmem.c"
    assert "       files: mm/new.c" in lines
    listed = _lab(lab_dir, "series", "show")
    assert listed.stdout.split() == ["secretmem-v3"]


def test_series_show_bad_mbox_is_one_line_exit_2(
    lab_dir: Path, series_setup: tuple[Path, Path, str, bytes]
) -> None:
    _repo, _pdir, _base, data = series_setup
    m = _mails(data)
    (lab_dir / "kernels" / "patches" / "bad.mbox").write_bytes(m[0] + m[1])
    out = _lab(lab_dir, "series", "show", "bad")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "patch 2/3, 3/3 of v3 missing" in out.stderr


def test_series_fetch_without_b4_says_so(lab_dir: Path, tmp_path: Path) -> None:
    """The real missing-b4 path: a PATH with git and python but no b4."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    out = _lab(
        lab_dir, "series", "fetch", "<20210121122723.3446-8-rppt@kernel.org>", path=str(bindir)
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "b4 is not installed (apt-get install b4, or pip install b4)" in out.stderr
    assert "network access to lore.kernel.org" in out.stderr
    assert not list((lab_dir / "kernels" / "patches").iterdir())  # nothing left behind


@pytest.mark.parametrize("msgid", ["--help", "-o/etc", "a b@c", "x@y;rm"])
def test_series_fetch_refuses_what_is_not_a_message_id(lab_dir: Path, msgid: str) -> None:
    out = _lab(lab_dir, "series", "fetch", "--", msgid)
    assert out.returncode == 2 and "is not a Message-Id" in out.stderr


def test_removed_dash_dash_line_is_not_the_separator() -> None:
    """A hunk that removes a `--` line holds a `---` line: inside the hunk's counted
    lines it is diff, not git's message separator."""
    body = (
        b"Drop the rule.\n\n"
        b"--- a/doc.txt\n+++ b/doc.txt\n@@ -1,3 +1,2 @@\n title\n---\n text\n"
        b"--- a/other.txt\n+++ b/other.txt\n@@ -1 +1 @@\n-a\n+b\n"
    )
    message, diff = mbox.split_body(body)
    assert message == b"Drop the rule.\n\n"
    assert diff.startswith(b"--- a/doc.txt") and diff.endswith(b"+b\n")
    # And the same separator after a complete quoted hunk ends the message.
    quoted = b"Was:\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n---\n x | 2 +-\n\n"
    message, diff = mbox.split_body(
        quoted + b"diff --git a/y b/y\n--- a/y\n+++ b/y\n@@ -1 +1 @@\n-c\n+d\n"
    )
    assert message == b"Was:\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n"
    assert diff.startswith(b"diff --git a/y b/y")


def test_series_show_reads_quilt_patches_in_mail_form(lab_dir: Path) -> None:
    """The repo's own series are git format-patch files: show gives their subjects."""
    shutil.copytree(
        REPO / "kernels" / "patches" / "secretmem-lab",
        lab_dir / "kernels" / "patches" / "secretmem-lab",
    )
    out = _lab(lab_dir, "series", "show", "secretmem-lab")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    series = REPO / "kernels" / "patches" / "secretmem-lab" / "series"
    count = sum(1 for x in series.read_text().splitlines() if x.strip() and x[0] != "#")
    assert lines[0].startswith("secretmem-lab: quilt ") and f"{count} patches" in lines[0]
    assert lines[1] == "  1. set_memory: add set_direct_map_range_noflush() for multi-page ranges"
    assert lines[2] == "       author: Lab Kernel Engineer <kernel@lab.example.org>"
    assert "       files: mm/Kconfig, mm/secretmem.c" in lines


@pytest.mark.skipif(shutil.which("b4") is None, reason="b4 not installed (apt-get install b4)")
def test_series_fetch_without_network_says_so(lab_dir: Path) -> None:
    """Real b4, no way out: a proxy nobody listens on stands in for a machine without
    network (and keeps the test offline where there is one)."""
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    out = subprocess.run(
        [
            *(sys.executable, "-m", "lab", "--config", str(lab_dir / "lab.toml")),
            *("series", "fetch", "20210121122723.3446-8-rppt@kernel.org", "--name", "v16"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=200,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1
    assert "cannot reach lore.kernel.org (no network access?)" in out.stderr
    assert not list((lab_dir / "kernels" / "patches").iterdir())


@pytest.mark.parametrize("cte", ["base64", "quoted-printable"])
def test_transfer_encodings_give_the_same_diff(
    series_setup: tuple[Path, Path, str, bytes], cte: str
) -> None:
    """A mailer may re-encode a patch mail; the diff bytes must come out the same."""
    import email
    import email.policy

    _repo, pdir, _base, data = series_setup
    m = _mails(data)
    (pdir / "plain.mbox").write_bytes(data)
    plain = patches.load_series(pdir, ("plain",))
    recoded = []
    for raw in m:
        from_line, rest = raw.split(b"\n", 1)
        msg = email.message_from_bytes(rest, policy=email.policy.compat32)
        body = msg.get_payload(decode=True)
        assert isinstance(body, bytes)
        del msg["Content-Transfer-Encoding"]
        msg.set_payload(body, "utf-8")
        if cte == "base64":
            assert msg["Content-Transfer-Encoding"] == "base64"
        else:
            del msg["Content-Transfer-Encoding"]
            import quopri

            msg.set_payload(quopri.encodestring(body).decode("ascii"))
            msg["Content-Transfer-Encoding"] = "quoted-printable"
        recoded.append(from_line + b"\n" + msg.as_bytes())
    (pdir / "recoded.mbox").write_bytes(b"".join(recoded))
    again = patches.load_series(pdir, ("recoded",))
    assert [p.sha256 for p in again.patches] == [p.sha256 for p in plain.patches]
    assert b"Content-Transfer-Encoding: " + cte.encode() in (pdir / "recoded.mbox").read_bytes()


DIFF = b"diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n"


def test_huge_headers_are_bounded(tmp_path: Path) -> None:
    """With email's default policy a 1 MiB Subject of encoded words took > 3 GB of
    memory (the process was OOM-killed) and a 1 MiB From more than a minute."""
    import time

    subject = b"Subject: " + b"=?utf-8?q?a?= " * 70000
    mail = b"From x Mon Sep 17 00:00:00 2001\n" + subject + b"\n\nmsg\n---\n" + DIFF
    (tmp_path / "h.mbox").write_bytes(mail)
    t = time.monotonic()
    with pytest.raises(UserError, match=r"h.mbox: mail #1: not a mail: headers larger than 64 KiB"):
        patches.load_series(tmp_path, ("h",))
    # Just under the bound: parsed, decoded, cut for the metadata, in well under a second.
    near = b"Subject: [PATCH] " + b"=?utf-8?q?=C3=BC?= " * 2500 + b"\nFrom: " + b"a@b, " * 2000
    (tmp_path / "n.mbox").write_bytes(
        b"From x Mon Sep 17 00:00:00 2001\n" + near + b"\n\nm\n---\n" + DIFF
    )
    (p,) = patches.load_series(tmp_path, ("n",)).patches
    assert p.mail is not None and p.mail.subject.startswith("üüü") and len(p.mail.author) <= 500
    assert time.monotonic() - t < 5


def test_mbox_from_lines_of_common_tools() -> None:
    """git format-patch, lore's mboxrd (two spaces before a 1-digit day), mutt and
    Thunderbird separators start mails; a commit message line "From the ..." does not."""
    mails = [
        b"From 3d27c4a095db96603953ad8423d7e7ed332f7c65 Mon Sep 17 00:00:00 2001\nSubject: a\n\n",
        b"From mboxrd@z Thu Jan  1 00:00:00 1970\nSubject: b\n\nFrom the review: x\n",
        b"From rppt@kernel.org Thu Jan 21 12:27:23 2021\nSubject: c\n\n",
        b"From - Mon Nov 30 05:10:00 2026\nSubject: d\n\nFrom here on\n",
    ]
    assert mbox.split(b"".join(mails)) == mails


def test_mbox_patch_paths_are_confined(
    tmp_path: Path, series_setup: tuple[Path, Path, str, bytes]
) -> None:
    """A mail's diff part goes through the same confinement as a quilt patch."""
    repo, pdir, base, data = series_setup
    evil = (
        _mails(data)[1]
        .replace(b"a/mm/secretmem.c", b"a/../victim")
        .replace(b"b/mm/secretmem.c", b"b/../victim")
    )
    (pdir / "evil.mbox").write_bytes(evil.replace(b"[PATCH v3 1/3]", b"[PATCH]"))
    victim = tmp_path / "victim"
    victim.write_text("line one\nline two\nline three\n")
    victim.chmod(0o600)
    src = pristine(tmp_path, repo, base)
    with pytest.raises(
        UserError, match=r"evil/0001 PATCH .*path '\.\./victim' goes up with '\.\.'"
    ):
        patches.apply(src, patches.load_series(pdir, ("evil",)), tmp_path / "c", lambda _m: None)
    assert victim.read_text() == "line one\nline two\nline three\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_run_json_kernel_record_carries_series_sources(
    series_setup: tuple[Path, Path, str, bytes], tmp_path: Path
) -> None:
    """run.json's per-kernel record (orchestrate.kernel_provenance) copies the build meta's
    series_sources next to series: base-commit and the cover's message id survive into
    the run, with each patch's message id in series."""
    from lab.build import Kernel
    from lab.run import orchestrate

    _repo, pdir, base, data = series_setup
    (pdir / "s.mbox").write_bytes(data)
    series = patches.load_series(pdir, ("s",))
    # The two fields as build.build writes them into the kernel's meta.json.
    meta: dict[str, object] = {"series": series.describe(), "series_sources": series.identity()}
    k = Kernel(
        key="k1",
        dir=tmp_path,
        arch="x86_64",
        variant="U0",
        image=tmp_path / "bzImage",
        vmlinux=tmp_path / "vmlinux",
        config=tmp_path / ".config",
        system_map=tmp_path / "System.map",
        log=tmp_path / "build.log",
        meta=meta,
        cached=True,
    )
    rec = orchestrate.kernel_provenance(k)
    (src,) = rec["series_sources"]  # type: ignore[misc]
    assert src["base_commit"] == base and src["kind"] == "mbox" and src["version"] == 3
    assert src["cover_message_id"] == series.sources[0].cover_message_id
    ids = [p["message_id"] for p in rec["series"]]  # type: ignore[attr-defined]
    assert ids == [p.mail.message_id for p in series.patches if p.mail] and all(ids)
