"""Outputs never overwrite what oirl did not write.

Every command that writes a file the user names follows one rule (the one ``oirl train
--out`` follows for bundles): a new path is fine, an existing output that oirl wrote is
replaced (atomically), and anything else is refused with one line, unless the user says
``--force``. oirl recognises its own files by a mark each format can carry: Parquet schema
metadata, a key of a JSON report, a PNG text chunk. CSV and JSONL files cannot carry one,
so an existing one is only replaced with ``--force``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from oirl import __version__
from oirl.errors import OirlError

MARK = "oirl"
PARQUET_KEY = b"oirl"
PNG_SOFTWARE = "oirl"


def check_replaceable(path: str | Path, ours: Callable[[Path], bool], *, force: bool = False, option: str = "--out") -> Path:
    """``path`` if writing there loses nothing: it does not exist, oirl wrote it
    (``ours(path)``), or ``force``. Raises :class:`OirlError` naming the path otherwise."""
    path = Path(path)
    if path.is_dir():
        raise OirlError(f"{option} {path}: is a directory; give a file path")
    if path.exists() and not force and not ours(path):
        raise OirlError(f"{option} {path}: exists and was not written by oirl; refusing to replace it "
                        "(give a new path, or --force to replace it)")
    return path


def check_output_directory(directory: str | Path, ours: Callable[[Path], bool], what: str, *,
                           error: type[OirlError] = OirlError) -> Path:
    """Where an output directory may be written: a new or empty one, or one oirl wrote
    (``ours``, e.g. a bundle), which is then replaced whole. Refuses (``error``) a
    non-empty directory of something else, which would lose its contents, and the current
    directory or one of its parents, which cannot be swapped out from under the process."""
    directory = Path(directory)
    resolved = directory.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise error(f"--out {directory}: cannot replace the current directory or a parent of it; give a new directory such as models/name")
    if directory.exists():
        if not directory.is_dir():
            raise error(f"--out {directory}: exists and is not a directory")
        if any(directory.iterdir()) and not ours(directory):
            raise error(f"--out {directory}: exists, is not empty and is not {what}; refusing to overwrite it")
    return directory


def is_oirl_parquet(path: Path) -> bool:
    """A Parquet file whose schema metadata carries oirl's mark."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except Exception:  # not Parquet at all: pyarrow raises several types
        return False
    return PARQUET_KEY in metadata


def is_oirl_json(path: Path, kind: str) -> bool:
    """A JSON object written by oirl as a ``kind`` (e.g. an evaluation report)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(document, dict) and isinstance(document.get(MARK), dict) and document[MARK].get("kind") == kind


def json_mark(kind: str) -> dict[str, str]:
    """The key oirl puts into the JSON files it writes."""

    return {MARK: {"kind": kind, "version": __version__}}


def is_oirl_png(path: Path) -> bool:
    """A PNG whose ``Software`` text chunk says oirl (see :func:`oirl._plots.save_figure`)."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get("Software") == PNG_SOFTWARE
    except Exception:  # not an image, or not readable: not ours
        return False
