"""What both command-line tools share: one line per user error, tracebacks only with ``--debug``."""

from __future__ import annotations

import os
import shlex
import sys

import click

from .errors import UserError


class Group(click.Group):
    """A command group whose commands end a :class:`UserError` (or an OS error such as a missing
    file or a full disk) with one ``error:`` line and exit 2. ``--debug`` (or
    ``MIRPATCH_DEBUG=1``) lets the traceback through instead."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.append(
            click.Option(
                ["--debug"],
                is_flag=True,
                expose_value=False,
                is_eager=True,
                callback=_set_debug,
                help="show tracebacks instead of one-line errors",
            )
        )

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # the reader went away (`| head`): nothing left to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(1)
        except (UserError, OSError) as e:
            if ctx.meta.get("mirpatch.debug") or debugging():
                raise
            click.echo(f"error: {_one_line(e)}", err=True)
            ctx.exit(2)


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    ctx.meta["mirpatch.debug"] = value


def debugging() -> bool:
    """Whether this invocation was given ``--debug`` (or ``MIRPATCH_DEBUG=1`` is set)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get("mirpatch.debug"):
        return True
    return os.environ.get("MIRPATCH_DEBUG", "") not in ("", "0")


def fail(line: str, code: int) -> None:
    """One line and an exit code; with ``--debug`` the traceback of the error being handled."""
    if debugging():
        raise
    click.echo(line, err=True)
    sys.exit(code)


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    text = str(e)
    if text.startswith("Caught ") and "Original Traceback" in text:
        # raised in a DataLoader worker: torch adds the worker's traceback; the error is its
        # last line ("module.ErrorClass: message")
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def command_line(ctx: click.Context) -> str:
    """The command being run, as a user would type it again: its name and every option and
    argument given a value other than its default."""
    parts = ctx.command_path.split()
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == param.default or value is False or value == ():
            continue
        if isinstance(param, click.Argument):
            parts += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
            continue
        flag = max(param.opts, key=len)
        if param.is_flag:
            parts.append(flag)
        else:
            for v in value if param.multiple else [value]:
                parts += [flag, str(v)]
    return shlex.join(parts)
