"""Hostile result-channel input (issue 15: D2, D12, D13).

The channel carries untrusted guest output. Whatever arrives, the Reader never
raises, keeps a bounded amount, counts what it dropped, and reports what does not
fit as a protocol problem, which makes the cell infra_error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_hostile_console import BOOT_ID, DATA, fake_launch

from lab.classify import RunFacts, classify
from lab.vm import channel
from lab.vm.machine import Machine

DONE = b'{"type":"result","testcase":"t","verdict":"pass"}\n{"type":"done"}\n'


def _classified(r: channel.Reader) -> str:
    facts = RunFacts(ready=True, records=tuple(r.records), problems=tuple(r.problems))
    return classify("LABREADY x\n", facts).outcome


# --- D2: nesting ------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"[" * 100_000,
        b'{"type":"x","v":' + b"[" * 2000 + b"]" * 2000 + b"}",
        b'{"type":"x","v":' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}",
        b'{"type":"x","v":'
        + b"[" * (channel.MAX_DEPTH + 1)
        + b"]" * (channel.MAX_DEPTH + 1)
        + b"}",
    ],
    ids=["100k-open", "2000-closed", "5000-objects", "just-too-deep"],
)
def test_deep_nesting_is_a_protocol_problem_not_an_exception(line: bytes) -> None:
    r = channel.Reader()
    got = r.feed(line + b"\n" + DONE)
    assert [x["type"] for x in got] == ["result", "done"]
    assert len(r.problems) == 1 and "nest" in r.problems[0]
    assert _classified(r) == "infra_error"


def test_nesting_within_the_bound_is_accepted() -> None:
    depth = channel.MAX_DEPTH - 1  # the record object itself is one level
    line = b'{"type":"x","v":' + b"[" * depth + b"]" * depth + b"}\n"
    r = channel.Reader()
    assert [x["type"] for x in r.feed(line)] == ["x"] and not r.problems


def test_a_deep_line_does_not_escape_machine_follow(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAB_REPLAY", str(DATA / "consoles" / "x86_64-exec-ok.raw"))
    hostile = b"[" * 100_000 + b"\n" + DONE
    monkeypatch.setenv("LAB_REPLAY_RESULTS", hostile.decode())
    with Machine(fake_launch(repo, tmp_path), tmp_path, BOOT_ID, 10, 5) as m:
        m.wait_ready()
        assert m.follow(lambda r: r["type"] == "done", 10) == "record"
    assert m.results.problems and "nest" in m.results.problems[0]
    assert _classified(m.results) == "infra_error"


# --- D12: resync after an oversized line -------------------------------------------

FAKE = b'{"type":"result","testcase":"t","verdict":"pass"}'


@pytest.mark.parametrize(
    "feeds",
    [
        # the oversized part arrives alone, its tail (a fake record) in the next feed
        [b"x" * (channel.MAX_LINE + 10), FAKE + b"\n" + b'{"type":"ok"}\n'],
        # the line grows past the limit over two feeds, the fake tail in a third
        [b"x" * (channel.MAX_LINE - 5), b"y" * 10, FAKE + b"\n" + b'{"type":"ok"}\n'],
        # several feeds without a newline after the limit
        [b"x" * (channel.MAX_LINE + 1), b"z" * 100, FAKE, b"\n" + b'{"type":"ok"}\n'],
        # everything in one feed (this always worked)
        [b"x" * (channel.MAX_LINE + 10) + FAKE + b"\n" + b'{"type":"ok"}\n'],
    ],
    ids=["tail-next-feed", "grows-past", "many-feeds", "one-feed"],
)
def test_oversized_line_resyncs_at_the_next_newline(feeds: list[bytes]) -> None:
    r = channel.Reader()
    got = [rec for data in feeds for rec in r.feed(data)]
    assert [x["type"] for x in got] == ["ok"]
    assert r.records == [{"type": "ok"}]
    assert len(r.problems) == 1 and "exceeded" in r.problems[0]


# --- D13: bounded memory ------------------------------------------------------------


def test_many_tiny_records_are_bounded_and_counted() -> None:
    r = channel.Reader()
    line = b'{"type":"x"}\n'
    n = channel.MAX_RECORDS + 50_000
    for _ in range(10):
        r.feed(line * (n // 10))
    assert len(r.records) == channel.MAX_RECORDS
    assert r.dropped == n - channel.MAX_RECORDS
    assert any(f"{r.dropped} records" in p for p in r.problems)
    # the records that end a run still arrive, are kept (first of their type) and found
    got = r.feed(b'{"type":"exit","status":0}\n{"type":"done"}\n')
    assert [x["type"] for x in got] == ["exit", "done"]
    assert r.first("exit") == {"type": "exit", "status": 0} and r.first("done") is not None
    assert _classified(r) == "infra_error"


def test_big_records_are_bounded_by_bytes() -> None:
    r = channel.Reader()
    rec = json.dumps({"type": "output", "data": "a" * (512 << 10)}).encode() + b"\n"
    for _ in range(4 * channel.MAX_KEPT_BYTES // len(rec)):
        r.feed(rec)
    assert r.kept_bytes <= channel.MAX_KEPT_BYTES
    assert sum(len(x["data"]) for x in r.records) <= channel.MAX_KEPT_BYTES
    assert r.dropped > 0 and r.dropped_bytes > 0


def test_new_types_after_the_cap_are_bounded_too() -> None:
    r = channel.Reader()
    r.feed(b'{"type":"x"}\n' * channel.MAX_RECORDS)
    r.feed(b"".join(b'{"type":"t%d"}\n' % i for i in range(10 * channel.MAX_KINDS)))
    assert len(r.records) == channel.MAX_RECORDS + channel.MAX_KINDS


def test_lab_classify_of_a_cell_with_a_deep_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lab classify CELLDIR` reads result.jsonl through the same Reader: no traceback."""
    from lab import cli

    (tmp_path / "console.log").write_text("[    0.600000] Run /init as init process\nLABREADY b\n")
    (tmp_path / "result.jsonl").write_bytes(b"[" * 100_000 + b"\n" + DONE)
    (tmp_path / "cell.json").write_text(json.dumps({"ready": True, "qemu_exit": 0}))
    assert cli.main(["classify", "--json", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["outcome"] == "infra_error" and out["rule"] == "protocol-problems"
