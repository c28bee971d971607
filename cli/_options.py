"""Settings on the command line: an option for each setting a command stands for, over the environment's values.

`rankshard` itself takes the settings used by every command (`RANKSHARD`: ``--data-dir``, ``--control-plane``...)
and builds the `Settings` of the run from the environment and those options; ``cluster up`` takes the local
cluster's (`LOCAL_CLUSTER`). Every command finds the result with `settings_of`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from rankshard.shard_map import Settings, SettingsError, SettingSpec, setting_specs

F = TypeVar("F", bound=Callable[..., Any])


class _SettingType(click.ParamType):
    """Reads an option's text as its setting's variable is read: one parser, one set of rules."""

    def __init__(self, spec: SettingSpec) -> None:
        self.spec = spec
        self.name = spec.metavar

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self.spec.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def setting_options(scope: str) -> Callable[[F], F]:
    """Adds an option for every setting of `scope` that has a flag, each None unless given."""

    def decorate(command: F) -> F:
        for spec in reversed([s for s in setting_specs(scope) if s.has_flag]):
            command = _option(spec)(command)
        return command

    return decorate


def _option(spec: SettingSpec) -> Callable[[F], F]:
    shown = "unset" if spec.default is None else _text(spec.default)
    help_text = f"{spec.meaning} [env {spec.env}; default: {shown}]"
    if spec.is_bool:
        name = spec.flag[2:]
        return click.option(f"--{name}/--no-{name}", spec.name, default=None, help=help_text)
    return click.option(
        spec.flag, spec.name, type=_SettingType(spec), default=None, metavar=spec.metavar, help=help_text
    )


def _text(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def with_options(settings: Settings, given: Mapping[str, Any]) -> Settings:
    """`settings` overridden by the setting options given (None: not given); raises `click.UsageError`."""
    names = {spec.name for spec in setting_specs()}
    try:
        return dataclasses.replace(settings, **{k: v for k, v in given.items() if k in names and v is not None})
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


def environment_settings() -> Settings:
    """The defaults overridden by the environment; raises `click.UsageError` naming a bad variable."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


def settings_of(ctx: click.Context) -> Settings:
    """The settings of this run, as `rankshard` (and the command's own options) made them."""
    settings = ctx.find_object(Settings)
    assert settings is not None, "`rankshard` puts the settings in the context"
    return settings
