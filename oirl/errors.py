"""The one error type users see.

Every user mistake (a bad log file, an unknown prompt id, a corrupt bundle) raises
:class:`OirlError` with a message that says what is wrong and where. The CLI turns it
into a one-line message and exit code 2; the HTTP service into a 4xx response.
Anything else escaping is a bug in oirl.
"""

from __future__ import annotations


class OirlError(Exception):
    """A user-facing error: bad input, missing file, corrupt artifact."""


class LogFormatError(OirlError):
    """A demonstration log that does not follow the schema (names file, row, column)."""


class BundleError(OirlError):
    """A model bundle directory that is missing, incomplete or corrupt."""


class CannotFit(OirlError):
    """A reward model that cannot be fitted on these rows (too few, or one outcome only):
    model selection leaves that candidate out with a note instead of failing."""


class BrokenModel(OirlError):
    """A reward model that produced a non-finite score: a fault of the model, not of the
    input (the CLI's one line, and a 500 naming ``model`` from the HTTP service, not a 422)."""

    def __init__(self, message: str, model: str):
        super().__init__(message)
        self.model = model


class UnknownPromptError(OirlError):
    """Prompt ids asked for that the model bundle does not know."""

    def __init__(self, unknown: list[str], known: list[str]):
        self.unknown = unknown
        shown = ", ".join(known[:20]) + (" …" if len(known) > 20 else "")
        super().__init__(f"unknown prompt id(s): {', '.join(unknown)} (known: {shown})")


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (library messages span several)."""
    return " ".join(str(exc).split())
