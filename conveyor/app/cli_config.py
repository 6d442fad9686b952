"""`conveyor config check` and `conveyor config show`: the configuration without a daemon."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
import msgspec

from conveyor import config as config_mod
from conveyor import config_nats_auth, config_secrets, config_toml
from conveyor.app.exit_codes import CONFIG
from conveyor.config import Config
from conveyor.errors import ConfigError


def _config_path(ctx: click.Context) -> Path | None:
    explicit = (ctx.obj or {}).get("config_path")
    if explicit:
        return Path(explicit)
    default = Path("config.toml")
    return default if default.exists() else None


def _load_or_exit(path: Path | None) -> Config:
    try:
        return config_mod.load(path)
    except ConfigError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(CONFIG)


@click.group("config")
def config_group() -> None:
    """Check or show the effective configuration (file, then CONVEYOR_* environment)."""


@config_group.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Validate the configuration; print each problem and exit 5 if there is any."""
    path = _config_path(ctx)
    cfg = _load_or_exit(path)
    external = bool((ctx.obj or {}).get("nats_url") or os.environ.get("NATS_URL"))
    problems = config_nats_auth.problems(cfg.nats, external=external)
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    if problems:
        sys.exit(CONFIG)
    where = str(path) if path is not None else "embedded defaults"
    click.echo(
        f"ok: {where}: {len(cfg.pipeline.stages)} stages, {len(cfg.repos)} repositories, "
        f"data in {cfg.data_path}"
    )


@config_group.command()
@click.option("--json", "as_json", is_flag=True, help="JSON instead of TOML.")
@click.pass_context
def show(ctx: click.Context, as_json: bool) -> None:
    """Print the effective configuration, secrets redacted (TOML that loads back)."""
    path = _config_path(ctx)
    cfg = _load_or_exit(path)
    data: dict[str, Any] = config_secrets.redact(msgspec.to_builtins(cfg))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    where = str(path) if path is not None else "embedded defaults"
    click.echo(f"# Effective configuration: {where} with the environment; secrets redacted.")
    click.echo(config_toml.dumps(data), nl=False)
