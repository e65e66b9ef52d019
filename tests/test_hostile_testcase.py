"""Hostile test case metadata: one line naming the file and what is valid, never a traceback.

The host reads `TESTCASE = {...}` with `ast` and `literal_eval` and never runs the
file; whatever the file holds, loading its metadata gives a TestCase or a LabError.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab.errors import LabError
from lab.run import testcase

RUN = "\n\ndef run(t):\n    pass\n"


def _write(tmp_path: Path, body: bytes | str, name: str = "api") -> Path:
    path = tmp_path / f"{name}.py"
    if isinstance(body, str):
        body = body.encode()
    path.write_bytes(body)
    return path


def _error(path: Path) -> str:
    with pytest.raises(LabError) as exc:
        testcase.load(path)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(str(path))
    return msg


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('TESTCASE = {["k"]: 1}', "must be a literal dict"),
        ('TESTCASE = {"arches": {1, (2, [3])}}', "must be a literal dict"),
        ('TESTCASE = {"timeout": ' + "-" * 200_000 + "1}", "too complex"),
        ('TESTCASE = {"timeout": ' + "(" * 300 + "1" + ")" * 300 + "}", "syntax error"),
        ("TESTCASE = {'purpose': 'x'}\0", "syntax error"),
    ],
)
def test_unreadable_literals_are_one_line(tmp_path: Path, body: str, expected: str) -> None:
    msg = _error(_write(tmp_path, body + RUN))
    assert expected in msg
    assert ":None" not in msg


def test_invalid_utf8_is_one_line(tmp_path: Path) -> None:
    msg = _error(_write(tmp_path, b'TESTCASE = {"purpose": "\xff\xfe\xc0\xaf"}\n'))
    assert "not UTF-8" in msg


def test_file_size_is_bounded(tmp_path: Path) -> None:
    body = 'TESTCASE = {"purpose": "' + "x" * (testcase.MAX_FILE_BYTES + 10) + '"}'
    msg = _error(_write(tmp_path, body + RUN))
    assert "larger than" in msg


@pytest.mark.parametrize(
    ("meta", "key", "expected"),
    [
        ('{"timeout": 1e999}', "timeout", "finite"),
        ('{"timeout": 1000000}', "timeout", "at most"),
        ('{"memory_mib": -5}', "memory_mib", "0 (the arch default) or 64.."),
        ('{"memory_mib": 10}', "memory_mib", "0 (the arch default) or 64.."),
        ('{"memory_mib": 4611686018427387904}', "memory_mib", "0 (the arch default) or 64.."),
        ('{"cmdline": "quiet\\x00init=/bin/sh"}', "cmdline", "control character"),
    ],
)
def test_out_of_range_values_are_refused(
    tmp_path: Path, meta: str, key: str, expected: str
) -> None:
    msg = _error(_write(tmp_path, f"TESTCASE = {meta}{RUN}"))
    assert f"[{key!r}]" in msg and expected in msg


@pytest.mark.parametrize(
    "body",
    [
        'TESTCASE = {"timeout": 5}\nTESTCASE = {"timeout": 500}',
        'TESTCASE = {"timeout": 5}\nif True:\n    TESTCASE = {"timeout": 500}',
        'TESTCASE = {"timeout": 5}\nTESTCASE["timeout"] = 500',
        'TESTCASE = {"timeout": 5}\nTESTCASE |= {"timeout": 500}',
        'TESTCASE = {"timeout": 5}\ndef f():\n    global TESTCASE\n    TESTCASE = {}',
    ],
)
def test_testcase_bound_more_than_once_is_refused(tmp_path: Path, body: str) -> None:
    """The host and the guest must read the same metadata: exactly one binding."""
    msg = _error(_write(tmp_path, body + RUN))
    assert "TESTCASE" in msg and "once" in msg


def test_annotated_assignment_is_read(tmp_path: Path) -> None:
    tc = testcase.load(_write(tmp_path, 'TESTCASE: dict = {"timeout": 7}' + RUN))
    assert tc.timeout == 7.0


def test_ordinary_metadata_still_loads(repo: Path) -> None:
    tcs = testcase.discover(repo / "testcases")
    assert {"api", "depletion"} <= {t.name for t in tcs}


def test_cli_gives_one_line_and_exit_2(mini_lab: Path) -> None:
    d = mini_lab / "testcases"
    d.mkdir()
    _write(d, b'TESTCASE = {"purpose": "\xff"}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "lab", "-c", str(mini_lab / "lab.toml"), "matrix", "--list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("lab:")]
    assert len(lines) == 1 and "api.py" in lines[0] and "not UTF-8" in lines[0]


def test_cmdline_whitespace_is_fine(tmp_path: Path) -> None:
    tc = testcase.load(_write(tmp_path, 'TESTCASE = {"cmdline": "a\\nb\\tc"}' + RUN))
    assert tc.cmdline.split() == ["a", "b", "c"]
