"""The `privacy-pipeline` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import IO

import click

from privacy_pipeline.cli.options import policies_option
from privacy_pipeline.processors.enforcer import PolicyEnforcer
from privacy_pipeline.processors.events import EXAMPLE_EVENTS
from privacy_pipeline.processors.instants import InstantError, parse_instant
from privacy_pipeline.processors.policy import (
    PolicyError,
    load_pack,
    load_packs,
    pack_schema,
    packaged_policies,
)
from privacy_pipeline.processors.replay import Replay, encode_decision
from privacy_pipeline.streams.settings import ENV_POLICIES
from privacy_pipeline.streams.topics import Topic, input_topic


def _parse_until(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_instant(value)
    except InstantError as exc:
        raise click.BadParameter(f"{exc} (e.g. 2026-01-11T00:00:00Z)") from None


def _load(path: Path) -> PolicyEnforcer:
    try:
        return PolicyEnforcer(load_packs(path))
    except PolicyError as exc:
        raise click.ClickException(f"invalid policy pack:\n{exc}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="privacy-pipeline")
def main() -> None:
    """Tag, enforce opt-outs and erase personal data on Kafka, per controller policy packs.

    \b
    Offline:  evaluate, policy check, policy schema
    Live:     broker, run, demo, produce, tail, sink, requests
    """


@main.command()
@policies_option
@click.option(
    "--events",
    type=click.File("rb"),
    default="-",
    help="Input events as JSON lines, UTF-8 (default: stdin).",
)
@click.option(
    "--until",
    callback=_parse_until,
    metavar="INSTANT",
    help="Advance the clock to this ISO instant at the end and fire what is due "
    "(default: the last event's time).",
)
@click.option("--summary/--no-summary", default=None, help="Counts on stderr (default: on a tty).")
def evaluate(
    policies: Path, events: IO[bytes], until: datetime | None, summary: bool | None
) -> None:
    """Run events through the policy packs offline, with a simulated clock.

    Reads canonical JSON events, one per line, in file order, and writes one decision per
    line (tag, erasure, extract, rectify, reject). The clock starts at the first event's
    occurred_at, moves forward to each event's time firing the retention timers due, and at
    the end advances to --until. The same input gives byte-identical output. Bad lines
    become `reject` decisions naming the line and field; the run goes on.

    \b
    Example:
      privacy-pipeline evaluate --events events.jsonl --until 2030-01-01T00:00:00Z
    """
    replay = Replay(_load(policies))
    counts: Counter[str] = Counter()
    show = sys.stderr.isatty() if summary is None else summary
    started = time.monotonic()
    out = sys.stdout
    write = out.write
    lines = 0

    def numbered() -> Iterator[bytes]:
        nonlocal lines
        for line in events:
            lines += 1
            if show and lines % 100_000 == 0:
                click.echo(f"evaluate: {lines:,} lines", err=True)
            yield line

    for decision in replay.run(numbered(), until):
        counts[decision["decision"]] += 1
        write(encode_decision(decision))
        write("\n")
    out.flush()
    if show:
        elapsed = time.monotonic() - started
        parts = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
        click.echo(
            f"evaluate: {lines:,} lines in {elapsed:.1f} s; decisions: {parts or 'none'}; "
            f"subjects {len(replay.states):,}, timers pending {replay.pending_timers():,}",
            err=True,
        )


@main.group()
def policy() -> None:
    """Validate policy packs, or print their JSON Schema."""


@policy.command("check")
@click.argument(
    "path",
    type=click.Path(exists=True, path_type=Path),
    envvar=ENV_POLICIES,
    default=packaged_policies,
)
def policy_check(path: Path) -> None:
    """Validate a pack file or every pack in a folder; name the file and field of each error."""
    files = sorted(path.glob("*.y*ml")) if path.is_dir() else [path]
    if not files:
        raise click.ClickException(f"{path}: no policy packs (*.yaml) found")
    failed = 0
    for f in files:
        try:
            pack = load_pack(f)
        except PolicyError as exc:
            failed += 1
            click.echo(str(exc), err=True)
            continue
        assumed = sum(1 for r in pack.rules if r.assumption) + len(pack.assumptions)
        click.echo(
            f"{f}: ok ({pack.controller}: {len(pack.rules)} rules, {len(pack.triggers)} "
            f"triggers, {len(pack.recipients)} recipients, {assumed} assumptions to confirm)"
        )
    if failed:
        raise click.ClickException(f"{failed} of {len(files)} packs invalid")


@policy.command("schema")
def policy_schema() -> None:
    """Print the JSON Schema of a policy pack (for editors and CI)."""
    click.echo(json.dumps(pack_schema(), indent=2, ensure_ascii=False))


@main.command("schema")
@click.argument("event_type", required=False, type=click.Choice(sorted(EXAMPLE_EVENTS)))
@click.option("--example", is_flag=True, help="Print only the example event (one JSON line).")
def schema_command(event_type: str | None, example: bool) -> None:
    """Show the input events: their topics, their fields, an example of each.

    \b
    privacy-pipeline schema                  the event types and their topics
    privacy-pipeline schema click            a click's fields, what each means, an example
    privacy-pipeline schema click --example | privacy-pipeline produce
    """
    if event_type is None:
        if example:
            for event in EXAMPLE_EVENTS.values():
                click.echo(json.dumps(event, ensure_ascii=False))
            return
        click.echo("Input events (canonical JSON, one per line; `produce` encodes them as Avro):")
        for kind in EXAMPLE_EVENTS:
            topic = input_topic(kind)
            click.echo(f"  {kind:<16} topic {topic.name:<17} schema {_schema_file(topic)}")
        click.echo("Every event has event_id, type, controller, subject_id and occurred_at.")
        click.echo("`privacy-pipeline schema TYPE` shows a type's fields and an example.")
        return
    event = EXAMPLE_EVENTS[event_type]
    if example:
        click.echo(json.dumps(event, ensure_ascii=False))
        return
    topic = input_topic(event_type)
    schema = json.loads(_schema_path(topic).read_text(encoding="utf-8"))
    click.echo(f"{event_type}: topic {topic.name}, Avro schema {_schema_file(topic)}")
    click.echo(str(schema.get("doc", "")))
    for field in schema["fields"]:
        optional = "default" in field
        pii = (
            f" [personal data: {field['privacy.category']}]" if "privacy.category" in field else ""
        )
        click.echo(f"  {field['name']}{' (optional)' if optional else ''}{pii}")
        click.echo(f"      {field.get('doc', '')}")
    click.echo("Example:")
    click.echo(json.dumps(event, ensure_ascii=False))


def _schema_path(topic: Topic) -> Path:
    """The shipped .avsc of a topic's records: one named record per file, snake_case."""
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", topic.value_schema).lower()
    return Path(str(files("privacy_pipeline.schemas").joinpath(f"{snake}.avsc")))


def _schema_file(topic: Topic) -> str:
    return f"schemas/{_schema_path(topic).name}"


def _register_live_commands() -> None:
    # The live commands import Kafka clients; keep `evaluate` fast to start without them.
    from privacy_pipeline.cli import live as commands_live

    for command in commands_live.COMMANDS:
        main.add_command(command)


try:
    _register_live_commands()
except ImportError as exc:  # pragma: no cover - only without the live modules
    if "commands_live" not in str(exc):
        raise
