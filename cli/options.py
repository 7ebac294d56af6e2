"""Options that several commands share, each declared once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from privacy_pipeline.processors.policy import packaged_policies
from privacy_pipeline.streams.settings import (
    ENV_BOOTSTRAP,
    ENV_POLICIES,
    ENV_PREFIX,
    ENV_SECRETS,
    default_secrets,
)

FC = TypeVar("FC", bound=Callable[..., Any])


def broker_option(required: bool) -> Callable[[FC], FC]:
    """`--broker HOST:PORT`; where it is optional, leaving it out starts the embedded broker."""
    return click.option(
        "--broker",
        envvar=ENV_BOOTSTRAP,
        required=required,
        metavar="HOST:PORT",
        help=f"Kafka bootstrap HOST:PORT (env {ENV_BOOTSTRAP})."
        + ("" if required else " Without it, the embedded broker is started (memory only)."),
    )


prefix_option = click.option(
    "--prefix",
    envvar=ENV_PREFIX,
    default="",
    help=f"Prefix for every topic name (env {ENV_PREFIX}).",
)

policies_option = click.option(
    "--policies",
    type=click.Path(exists=True, path_type=Path),
    envvar=ENV_POLICIES,
    default=packaged_policies,
    show_default="the five seed packs",
    help=f"A policy pack file or a folder of packs (env {ENV_POLICIES}).",
)

secrets_option = click.option(
    "--secrets",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=ENV_SECRETS,
    default=default_secrets,
    show_default="~/.privacy-pipeline/secrets",
    help=f"Folder of the pipeline's keys (env {ENV_SECRETS}). The worker creates its "
    "command-signing key pair there when missing; a sink needs only command-signing.pub.",
)


LOG_LEVELS: dict[str, int] = {
    "crit": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}
"""`--log-level` names and the `logging` levels they stand for."""

log_level_option = click.option(
    "--log-level",
    type=click.Choice(list(LOG_LEVELS), case_sensitive=False),
    default="warn",
    show_default=True,
    help="Least severe log lines shown (the worker, faust and the clients).",
)
"""`--log-level`, for the commands that run a worker."""
