"""The ``oirl`` command line (``oirl --help``); commands live in the modules beside this one."""

from oirl.cli.main import cli, main

__all__ = ["cli", "main"]
