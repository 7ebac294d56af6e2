"""`privacy-pipeline evaluate`: deterministic output, rejects, timers, a clean stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from privacy_pipeline.cli.main import main

ROOT = Path(__file__).resolve().parents[3]
POLICIES = ROOT / "policies"
ENTRY = Path(sys.executable).parent / "privacy-pipeline"

NAME = "Anna Andersson"
EMAIL = "anna.andersson@example.se"
IP = "192.0.2.44"
PNR = "19900101-1234"
PERSONAL = [NAME, EMAIL, IP, PNR, "Andersson", "anna.andersson", "0701234567"]


def event(
    event_id: str, etype: str, at: str, controller: str = "inrego", subject: str = "s1", **kw: Any
) -> str:
    return json.dumps(
        {
            "event_id": event_id,
            "type": etype,
            "controller": controller,
            "subject_id": subject,
            "occurred_at": at,
            **kw,
        },
        ensure_ascii=False,
    )


CLICK = {"url": "https://example.se/p?email=" + EMAIL, "ip": IP, "user_agent": "Mozilla/5.0"}
PERSON = {"name": NAME, "email": EMAIL, "personnummer": PNR, "phone": "0701234567"}

GOOD = [
    event("e1", "customer", "2024-01-10T09:00:00+01:00", action="created", fields=PERSON),
    event("e2", "click", "2024-01-10T09:05:00Z", **CLICK),
    event(
        "e3",
        "order",
        "2024-01-11T10:00:00Z",
        action="invoiced",
        order_id="o1",
        amount=99.5,
        currency="SEK",
    ),
    event(
        "e4",
        "consent",
        "2024-01-12T10:00:00Z",
        controller="rego",
        purpose="direct_marketing",
        action="grant",
        channel="web",
    ),
    event(
        "e5", "customer", "2024-01-12T10:01:00Z", controller="rego", action="created", fields=PERSON
    ),
    event(
        "e6",
        "consent",
        "2024-02-01T10:00:00Z",
        controller="rego",
        purpose="direct_marketing",
        action="withdraw",
        channel="email",
    ),
    event("e7", "privacy_request", "2024-02-02T10:00:00Z", request_id="r1", right="access"),
    event("e8", "privacy_request", "2024-02-03T10:00:00Z", request_id="r2", right="erasure"),
]

BAD = [
    # Bad JSON that carries personal data.
    '{"event_id": "b1", "name": "' + NAME + '", "email": "' + EMAIL + '", ',
    # A bad enum value that is personal data.
    event("b2", "customer", "2024-01-10T09:00:00Z", action="created", role=EMAIL, fields=PERSON),
    # A personnummer where the instant should be.
    event("b3", "click", PNR, **CLICK),
    # Unknown controller, with an IP.
    event("b4", "click", "2024-01-10T09:00:00Z", controller="acme", **CLICK),
    # Missing field (ip), with a name in another one.
    event("b5", "click", "2024-01-10T09:00:00Z", url="https://x/" + NAME, user_agent="ua"),
    # Unknown type.
    event("b6", "visit", "2024-01-10T09:00:00Z", ip=IP),
    # A nested personal-data field.
    event(
        "b7",
        "customer",
        "2024-01-10T09:00:00Z",
        action="created",
        fields={"email": {"home": EMAIL}},
    ),
]


def mixed() -> list[str]:
    out = []
    for i, good in enumerate(GOOD):
        out.append(good)
        if i < len(BAD):
            out.append(BAD[i])
    return out


def write(tmp_path: Path, lines: list[str], name: str = "events.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def evaluate(*args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(main, ["evaluate", "--policies", str(POLICIES), *args], input=stdin)


def decisions(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


# -- determinism ---------------------------------------------------------------------------


def test_two_runs_give_byte_identical_output(tmp_path: Path) -> None:
    path = write(tmp_path, mixed())
    first = evaluate("--events", str(path), "--until", "2040-01-01T00:00:00Z")
    second = evaluate("--events", str(path), "--until", "2040-01-01T00:00:00Z")
    assert first.exit_code == 0, first.output
    assert first.stdout_bytes == second.stdout_bytes
    assert first.stdout_bytes.count(b"\n") > 20


def test_two_processes_with_different_hash_seeds_give_byte_identical_output(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, mixed())
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [
                str(ENTRY),
                "evaluate",
                "--policies",
                str(POLICIES),
                "--events",
                str(path),
                "--until",
                "2040-01-01T00:00:00Z",
                "--no-summary",
            ],
            capture_output=True,
            env=env,
            check=True,
            timeout=60,
        )
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1]
    assert outputs[0]


def test_output_is_one_compact_json_object_per_line_with_a_decision(tmp_path: Path) -> None:
    result = evaluate("--events", str(write(tmp_path, GOOD)))
    for line in result.stdout.splitlines():
        obj = json.loads(line)
        assert "decision" in obj
        assert line == json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    kinds = [d["decision"] for d in decisions(result.stdout)]
    assert kinds.count("tag") == 4
    assert kinds.count("extract") == 1
    assert "erasure" in kinds


def test_reads_stdin_by_default() -> None:
    result = evaluate(stdin="\n".join(GOOD[:2]) + "\n")
    assert result.exit_code == 0
    assert [d["event_id"] for d in decisions(result.stdout)] == ["e1", "e2"]


# -- bad lines -----------------------------------------------------------------------------


def test_a_bad_line_gives_a_reject_and_processing_continues(tmp_path: Path) -> None:
    result = evaluate("--events", str(write(tmp_path, mixed())))
    assert result.exit_code == 0, result.output
    out = decisions(result.stdout)
    rejects = [d for d in out if d["decision"] == "reject"]
    assert [(d["line"], d["event_id"]) for d in rejects] == [
        (2, None),
        (4, "b2"),
        (6, "b3"),
        (8, "b4"),
        (10, "b5"),
        (12, "b6"),
        (14, "b7"),
    ]
    assert [d["error"].split(":")[0] for d in rejects] == [
        "not valid JSON",
        "field 'role'",
        "field 'occurred_at'",
        "field 'controller'",
        "field 'ip'",
        "field 'type'",
        "field 'fields.email'",
    ]
    assert {d["event_id"] for d in out if d["decision"] == "tag"} == {"e1", "e2", "e3", "e5"}
    assert out[-1]["decision"] == "erasure"  # the last good line still ran


@pytest.mark.parametrize(
    "bad",
    [
        event(
            "u1",
            "consent",
            "2024-01-10T09:00:00Z",
            purpose="direct_marketing",
            action=["grant"],
            channel="email",
        ),
        event("u2", "click", "9999-12-31T23:59:59-01:00", **CLICK),
    ],
)
def test_malformed_values_never_stop_the_run(tmp_path: Path, bad: str) -> None:
    # A list where a string is expected, an instant out of range: a reject, then go on.
    result = evaluate("--events", str(write(tmp_path, [GOOD[0], bad, GOOD[1]])))
    assert result.exit_code == 0, result.output
    kinds = [d["decision"] for d in decisions(result.stdout)]
    assert kinds == ["tag", "reject", "tag"]


def test_rejects_never_contain_personal_data(tmp_path: Path) -> None:
    result = evaluate("--events", str(write(tmp_path, BAD)))
    for d in decisions(result.stdout):
        assert d["decision"] == "reject"
        for value in PERSONAL:
            assert value not in d["error"]


def test_stdout_never_contains_personal_values(tmp_path: Path) -> None:
    result = evaluate("--events", str(write(tmp_path, mixed())), "--until", "2040-01-01T00:00:00Z")
    for value in PERSONAL:
        assert value not in result.stdout


def test_stderr_contains_no_personal_data(tmp_path: Path) -> None:
    path = write(tmp_path, mixed())
    result = subprocess.run(
        [
            str(ENTRY),
            "evaluate",
            "--policies",
            str(POLICIES),
            "--events",
            str(path),
            "--until",
            "2040-01-01T00:00:00Z",
            "--summary",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("evaluate: 15 lines in ")
    assert "reject 7" in result.stderr
    for value in PERSONAL:
        assert value not in result.stderr
    in_process = evaluate("--events", str(path), "--summary")
    assert in_process.stderr.startswith("evaluate: 15 lines in ")
    for value in PERSONAL:
        assert value not in in_process.stderr


def test_summary_counts_decisions_and_subjects(tmp_path: Path) -> None:
    result = evaluate("--events", str(write(tmp_path, GOOD)), "--summary")
    summary = result.stderr.strip()
    assert "decisions: " in summary
    assert "extract 1" in summary
    assert "tag 4" in summary
    assert "subjects 2" in summary
    assert "timers pending" in summary


def test_no_summary_by_default_when_not_a_tty(tmp_path: Path) -> None:
    result = evaluate("--events", str(write(tmp_path, GOOD)))
    assert result.stderr == ""


# -- --until -------------------------------------------------------------------------------


def test_until_fires_timers(tmp_path: Path) -> None:
    path = write(tmp_path, [event("c1", "click", "2024-01-10T09:00:00Z", **CLICK)])
    without = decisions(evaluate("--events", str(path)).stdout)
    assert [d["decision"] for d in without] == ["tag"]
    early = decisions(evaluate("--events", str(path), "--until", "2026-01-10T08:59:59Z").stdout)
    assert [d["decision"] for d in early] == ["tag"]
    fired = decisions(
        evaluate("--events", str(path), "--until", "2026-01-10T10:00:00+01:00").stdout
    )
    assert [d["decision"] for d in fired] == ["tag", "erasure", "erasure"]
    assert {(d["target"], d["reason"], d["issued_at"]) for d in fired[1:]} == {
        ("web-analytics", "retention_expired", "2026-01-10T09:00:00Z"),
        ("it-service-providers", "retention_expired", "2026-01-10T09:00:00Z"),
    }


def test_until_must_be_an_instant_with_a_zone(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD[:1])
    result = evaluate("--events", str(path), "--until", "2026-01-10T09:00:00")
    assert result.exit_code == 2
    assert "--until" in result.output


# -- policies and help ---------------------------------------------------------------------


def test_a_single_pack_file_limits_the_controllers(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    result = CliRunner().invoke(
        main, ["evaluate", "--policies", str(POLICIES / "rego.yaml"), "--events", str(path)]
    )
    assert result.exit_code == 0
    out = decisions(result.stdout)
    assert {d["controller"] for d in out if d["decision"] != "reject"} == {"rego"}
    assert {d["error"] for d in out if d["decision"] == "reject"} == {
        "field 'controller': unknown controller (no policy pack)"
    }


def test_an_invalid_pack_is_a_clean_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("controller: [\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["evaluate", "--policies", str(bad)], input="")
    assert result.exit_code == 1
    assert "invalid policy pack" in result.stderr
    assert f"{bad}: line 2, column 1: not valid YAML: expected the node content" in result.stderr


def test_empty_input_gives_no_output() -> None:
    result = evaluate(stdin="")
    assert result.exit_code == 0
    assert result.stdout == ""


def test_evaluate_help() -> None:
    result = CliRunner().invoke(main, ["evaluate", "--help"])
    assert result.exit_code == 0
    for option in ("--policies", "--events", "--until", "--summary"):
        assert option in result.stdout
    assert "byte-identical" in result.stdout


def test_main_help_lists_evaluate_and_policy() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "evaluate" in result.stdout
    assert "policy" in result.stdout
    assert CliRunner().invoke(main, ["-h"]).exit_code == 0


def test_the_installed_entry_point_runs() -> None:
    result = subprocess.run(
        [str(ENTRY), "evaluate", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    assert "Usage: privacy-pipeline evaluate" in result.stdout


def test_a_line_that_is_not_utf8_is_rejected_and_the_run_goes_on(tmp_path: Path) -> None:
    good = (
        '{"event_id":"e1","type":"click","controller":"inrego","subject_id":"s1",'
        '"occurred_at":"2024-01-10T10:00:00+01:00","url":"u","ip":"i","user_agent":"a"}'
    )
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\xff\xfe not text\n" + good.encode() + b"\n")
    result = CliRunner().invoke(main, ["evaluate", "--events", str(events)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0] == {
        "decision": "reject",
        "line": 1,
        "event_id": None,
        "error": "not valid JSON: not UTF-8 text",
    }
    assert lines[1]["decision"] == "tag" and lines[1]["event_id"] == "e1"
