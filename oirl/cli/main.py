"""The ``oirl`` command line: the group, its error handling, and the commands it carries.

Every command is a thin shell over the Python API (:mod:`oirl.learn`, :mod:`oirl.recommender`,
:mod:`oirl.evaluation`, :mod:`oirl.serve`).

User mistakes (an :class:`~oirl.errors.OirlError`) print one line ``error: …`` on
stderr and exit with code 2; nothing is left half-written.
"""

from __future__ import annotations

import sys
import warnings

import click

from oirl.errors import OirlError


class OirlGroup(click.Group):
    """Every user mistake, ours or click's (a bad option value, an unknown choice), ends
    as one line ``error: …`` on stderr and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except (OirlError, click.UsageError) as exc:
            message = exc.format_message() if isinstance(exc, click.UsageError) else str(exc)
            click.echo(f"error: {' '.join(message.split())}", err=True)
            sys.exit(2)
        except OSError as exc:  # a path we cannot create, read or write: the user's to fix, not a bug
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"error: {where}{exc.strerror or exc}", err=True)
            sys.exit(2)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {message}", err=True)


@click.group(cls=OirlGroup)
@click.version_option(package_name="oirl")
def cli() -> None:
    """oirl: recommend the best prompt per query from logged outcomes (offline, no LLM calls)."""
    warnings.showwarning = _one_line_warnings


def _register() -> None:
    """Attach the commands; each lives in the module of its concept."""
    from oirl.cli.budget_commands import calibrate
    from oirl.cli.data_commands import import_
    from oirl.cli.loop_commands import init
    from oirl.cli.model_commands import evaluate, recommend, train
    from oirl.cli.reproduce_command import reproduce
    from oirl.cli.serve_commands import export_decisions, serve

    for command in (import_, init, train, recommend, evaluate, calibrate, reproduce, serve, export_decisions):
        cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="oirl")


if __name__ == "__main__":
    sys.exit(main())
