"""``train``: inspect YAML models (and, with the trainer, train, evaluate and predict)."""

from __future__ import annotations

import sys

import click

from common.config import ConfigError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train YAML-described models on patches read from precomputed stores."""


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated integers like 1,128,64, got {text!r}"
        ) from None
    if not shape or any(v <= 0 for v in shape):
        raise click.BadParameter(f"sizes must be positive, got {text!r}")
    return shape


@main.command("summary")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--input-shape", required=True, help="one item's X shape without batch, e.g. 1,128,64"
)
@click.option("--n-out", type=int, help="output size for 'n_out' (the target's classes)")
def summary_cmd(config: str, input_shape: str, n_out: int | None) -> None:
    """Each layer's output shape and parameter count, and the total, for a model YAML."""
    from .model_factory import ModelConfigError, build_model, format_summary

    shape = _shape(input_shape)
    try:
        model = build_model(config, shape, n_out=n_out)
    except (ModelConfigError, ConfigError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(format_summary(model, shape))
