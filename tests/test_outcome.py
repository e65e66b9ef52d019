"""The lab's result vocabulary (lab.outcome) and its two error kinds (lab.errors)."""

from __future__ import annotations

import json

import pytest

from lab import classify, report
from lab.build import BuildResult
from lab.classify import signatures
from lab.errors import InfraError, LabError, UserError
from lab.outcome import CLASSES, BuildStatus, Outcome, Verdict


def test_an_outcome_is_its_name_on_disk_and_in_text() -> None:
    """StrEnum: cell.json, evidence.json and f-strings see the plain name."""
    record = {"observed": Outcome.OOM_KILL, "verdict": Verdict.INFRA}
    assert json.dumps(record) == '{"observed": "oom_kill", "verdict": "infra"}'
    assert f"{Outcome.BOOT_FAILURE}" == "boot_failure" and "pass" in {Outcome.PASS}
    assert CLASSES == tuple(o.value for o in Outcome) == classify.CLASSES


def test_every_outcome_has_its_own_colour_and_a_narrow_short_name() -> None:
    colours = [o.colour for o in Outcome]
    assert len(set(colours)) == len(colours)
    assert report.OTHER_COLOUR not in colours and report.NOT_RUN_COLOUR not in colours
    assert all(len(o.short) <= 7 for o in Outcome), [o.short for o in Outcome]
    assert (Outcome.PASS.short, Outcome.FAULT_LIVELOCK.short) == ("pass", "livelk")


def test_every_signature_points_to_a_known_outcome() -> None:
    for sig in signatures.SIGNATURES:
        assert sig.outcome is None or Outcome.of(sig.outcome) is not None, sig.name
        assert sig.role in signatures.ROLES, sig.name


def test_a_name_this_version_does_not_know_is_not_an_outcome() -> None:
    assert Outcome.of("usercopy") is None and Outcome.of(["pass"]) is None
    assert Outcome.of("hang") is Outcome.HANG
    assert Verdict.of({"expected": 1}) is None and Verdict.of("infra") is Verdict.INFRA


@pytest.mark.parametrize(
    "verdicts, worst",
    [
        ({"expected"}, Verdict.EXPECTED),
        ({"expected", "infra"}, Verdict.INFRA),
        ({"infra", "unexpected", "expected"}, Verdict.UNEXPECTED),
        ({"bogus"}, None),
        (set(), None),
    ],
)
def test_repetitions_read_as_their_worst_verdict(verdicts: set[str], worst: Verdict) -> None:
    assert Verdict.worst(verdicts) is worst


def test_a_verdict_compares_the_outcome_with_the_expectation() -> None:
    assert Verdict.for_outcome("pass", ("pass",)) is Verdict.EXPECTED
    assert Verdict.for_outcome("sigbus", ("pass", "oom_kill")) is Verdict.UNEXPECTED
    assert Verdict.for_outcome("pass", ()) is Verdict.UNEXPECTED  # nothing declared
    assert Verdict.for_outcome("infra_error", ("infra_error",)) is Verdict.INFRA
    assert [v.exit_code for v in Verdict] == [0, 1, 2]


def test_user_and_infrastructure_errors_are_siblings() -> None:
    assert issubclass(UserError, LabError) and issubclass(InfraError, LabError)
    assert not issubclass(InfraError, UserError) and not issubclass(UserError, InfraError)


def test_a_failed_build_is_a_result_without_a_kernel() -> None:
    failed = BuildResult(BuildStatus.BUILD_FAILED, None, "x86_64-C0: build failed (make exit 2)")
    assert not failed.status.ok and failed.kernel is None
    assert BuildStatus.BUILT.ok and BuildStatus.CACHED.ok
