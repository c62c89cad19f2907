"""The decision log: every recommendation the service made, and the reward it later earned.

    store = DecisionStore("decisions/oirl.db")
    decision = Decision(query="What is 7 times 8?", candidate_ids=["CoT", "nan"],
                        candidate_prompts=["Let's think step by step: ", "The answer is:"],
                        prompt_id="CoT", prompt="Let's think step by step: ", score=0.41,
                        policy="argmax", model_version="3f2a…")
    store.record([decision])                  # returns once the batch is committed
    store.feedback(decision.decision_id, 1.0)  # later, when the outcome is known
    store.export("logs/served.parquet")        # the decisions with feedback, as a log

This closes the loop: the exported partial log (one prompt per query, with the
propensity it was chosen with) is a log :func:`oirl.data.logs.read_logs` reads, so it can
be trained and evaluated on like any other.

Storage is one SQLite file in WAL mode with ``synchronous=FULL``: a batch is on disk
when :meth:`DecisionStore.record` returns, so a decision the service acknowledged
survives ``kill -9`` of the server (and, with the fsync FULL adds, power loss). Writes
are serialised by SQLite's file lock across processes (``busy_timeout`` waits for it)
and by a lock inside one process, which shares one connection among its threads.
The schema carries named migrations in ``_oirl_migrations``, as simonw/llm does.

Schema (table ``decisions``)
============================

================= ===== ========================================================
column            type  meaning
================= ===== ========================================================
decision_id       TEXT  primary key, a UUID (:func:`new_decision_id` makes a v4)
created_at        TEXT  UTC, ISO-8601 ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (fixed
                        width, so text order is time order)
query             TEXT  the query text
candidate_ids     TEXT  JSON array of the candidate prompt ids
candidate_prompts TEXT  JSON array of their texts, in the same order
prompt_id         TEXT  the chosen prompt's id (one of ``candidate_ids``)
prompt            TEXT  its text
propensity        REAL  probability the policy chose it, in (0, 1]; 1.0 when
                        not exploring
policy            TEXT  the policy name
explore           TEXT  JSON describing the exploration, or NULL
model_version     TEXT  the bundle fingerprint
score             REAL  the reward model's score of the chosen prompt
reward            REAL  the feedback in [0, 1], NULL until given
feedback_at       TEXT  when the reward was recorded (UTC, as created_at), or NULL
================= ===== ========================================================
"""

from __future__ import annotations

import json
import math
import numbers
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from oirl.errors import OirlError

__all__ = [
    "ConflictingFeedbackError",
    "Decision",
    "DecisionStore",
    "DecisionStoreError",
    "DuplicateDecisionError",
    "EXPORT_COLUMNS",
    "FeedbackResult",
    "InvalidDecisionError",
    "InvalidRewardError",
    "UnknownDecisionError",
    "new_decision_id",
    "utc_now",
]

EXPORT_COLUMNS = (
    "decision_id", "query_id", "query", "prompt_id", "prompt", "reward",
    "propensity", "model_version", "created_at", "feedback_at",
)
DEFAULT_BUSY_TIMEOUT = 10.0  # seconds a writer waits for another process's lock
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


# --------------------------------------------------------------------------- errors
# (Candidates for oirl/errors.py once the service uses them.) HTTP: invalid → 422,
# unknown → 404, conflicting → 409, duplicate → 409.


class DecisionStoreError(OirlError):
    """A decision store file that cannot be used (not SQLite, newer schema, closed)."""


class InvalidDecisionError(OirlError):
    """A decision with a field that breaks the schema (names the field)."""


class DuplicateDecisionError(OirlError):
    """A decision id recorded before; the batch carrying it was not recorded."""

    def __init__(self, decision_id: str, why: str = "is already recorded"):
        self.decision_id = decision_id
        super().__init__(f"decision_id {decision_id!r} {why}; nothing of this batch was recorded")


class InvalidRewardError(OirlError):
    """A reward that is not a finite number in [0, 1]."""


class UnknownDecisionError(OirlError):
    """Feedback for a decision id the store does not hold."""

    def __init__(self, decision_id: str):
        self.decision_id = decision_id
        super().__init__(f"decision_id {decision_id!r}: no such decision")


class ConflictingFeedbackError(OirlError):
    """A second reward for a decision, different from the one recorded first."""

    def __init__(self, decision_id: str, recorded: float, given: float, feedback_at: str):
        self.decision_id = decision_id
        self.recorded = recorded
        self.given = given
        self.feedback_at = feedback_at
        super().__init__(
            f"decision_id {decision_id!r}: reward {recorded!r} was recorded at {feedback_at}; "
            f"a different reward ({given!r}) cannot replace it"
        )


# --------------------------------------------------------------------------- values


def new_decision_id() -> str:
    """A fresh decision id: a random UUID (version 4) as lower-case text."""
    return str(uuid.uuid4())


def utc_now() -> str:
    """The current time as stored: UTC, ISO-8601, fixed width (``2024-05-01T12:00:00.000000Z``)."""
    return datetime.now(timezone.utc).strftime(_TIME_FORMAT)


@dataclass(frozen=True, kw_only=True)
class Decision:
    """One recommendation as served: the candidates, the choice, and how it was made.

    Lists are stored as tuples, ids in canonical UUID form and ``created_at`` in the
    store's fixed-width UTC form; ``explore`` is any JSON value (a copy is kept).
    Raises :class:`InvalidDecisionError` naming the first bad field.
    """

    query: str
    candidate_ids: Sequence[str]
    candidate_prompts: Sequence[str]
    prompt_id: str
    prompt: str
    score: float
    policy: str
    model_version: str
    propensity: float = 1.0
    explore: Any = field(default=None, hash=False)
    decision_id: str = field(default_factory=new_decision_id)
    created_at: str = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        normalised = _check_decision(self)
        for name, value in normalised.items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class FeedbackResult:
    """The outcome of :meth:`DecisionStore.feedback`: the reward now on record.

    ``duplicate`` is true when this exact reward had been recorded before (a retry);
    ``feedback_at`` is when the reward was first recorded.
    """

    decision_id: str
    reward: float
    feedback_at: str
    recorded: bool = True
    duplicate: bool = False


def _check_decision(d: Decision) -> dict[str, Any]:
    """Validate every field of ``d``; return the normalised values to set."""
    for name in ("query", "prompt_id", "prompt", "policy", "model_version"):
        _check_text(getattr(d, name), name)
    ids = _check_texts(d.candidate_ids, "candidate_ids")
    prompts = _check_texts(d.candidate_prompts, "candidate_prompts")
    if len(ids) != len(prompts):
        _bad("candidate_prompts", f"has {len(prompts)} entries but candidate_ids has {len(ids)}")
    if d.prompt_id not in ids:
        _bad("prompt_id", f"{d.prompt_id!r} is not among candidate_ids")
    if (d.prompt_id, d.prompt) not in zip(ids, prompts, strict=True):
        _bad("prompt", f"is not the text of candidate {d.prompt_id!r} in candidate_prompts")
    propensity = _check_number(d.propensity, "propensity")
    if not 0.0 < propensity <= 1.0:
        _bad("propensity", f"must be in (0, 1], got {propensity!r}")
    score = _check_number(d.score, "score")
    try:
        explore = None if d.explore is None else json.loads(_json(d.explore))
    except (TypeError, ValueError) as exc:
        _bad("explore", f"is not JSON-serialisable: {exc}")
    return {
        "decision_id": _canonical_id(d.decision_id, lambda why: _bad("decision_id", why)),
        "created_at": _canonical_time(d.created_at),
        "candidate_ids": ids,
        "candidate_prompts": prompts,
        "propensity": propensity,
        "score": score,
        "explore": explore,
    }


def _bad(name: str, why: str) -> None:
    raise InvalidDecisionError(f"decision field {name!r}: {why}")


def _check_text(value: object, name: str) -> None:
    if not isinstance(value, str):
        _bad(name, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        _bad(name, "is empty")


def _check_texts(values: object, name: str) -> tuple[str, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        _bad(name, f"must be a list of strings, got {type(values).__name__}")
    if not values:
        _bad(name, "is empty")
    for i, value in enumerate(values):
        if not isinstance(value, str):
            _bad(name, f"entry {i} must be a string, got {type(value).__name__}")
    return tuple(values)


def _check_number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _bad(name, f"must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        _bad(name, f"must be finite, got {value!r}")
    return value


def _canonical_id(value: object, fail: Callable[[str], None]) -> str:
    if not isinstance(value, str):
        fail(f"must be a UUID string, got {type(value).__name__}")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        fail(f"{value[:80]!r} is not a UUID")
    raise AssertionError("unreachable")


def _canonical_time(value: object) -> str:
    if isinstance(value, str):
        text = value.strip()
        try:  # Python 3.10's fromisoformat does not take a trailing Z
            value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            _bad("created_at", f"{text[:40]!r} is not an ISO-8601 time")
    if not isinstance(value, datetime):
        _bad("created_at", f"must be an ISO-8601 string or a datetime, got {type(value).__name__}")
    if value.utcoffset() is None:
        _bad("created_at", f"{value.isoformat()} has no time zone (use UTC, e.g. a trailing Z)")
    return value.astimezone(timezone.utc).strftime(_TIME_FORMAT)


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, sort_keys=True)


def _check_reward(reward: object) -> float:
    if isinstance(reward, bool) or not isinstance(reward, numbers.Real):
        raise InvalidRewardError(f"reward: must be a number in [0, 1], got {type(reward).__name__}")
    value = float(reward)
    if not 0.0 <= value <= 1.0:  # also rejects nan
        raise InvalidRewardError(f"reward: must be a finite number in [0, 1], got {value!r}")
    return value


# --------------------------------------------------------------------------- schema

_MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = []


def _migration(fn: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    """Register a schema migration; they run once each, in definition order, by name."""
    _MIGRATIONS.append(fn)
    return fn


@_migration
def m001_decisions(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE decisions (
            decision_id       TEXT PRIMARY KEY NOT NULL,
            created_at        TEXT NOT NULL,
            query             TEXT NOT NULL,
            candidate_ids     TEXT NOT NULL,
            candidate_prompts TEXT NOT NULL,
            prompt_id         TEXT NOT NULL,
            prompt            TEXT NOT NULL,
            propensity        REAL NOT NULL CHECK (propensity > 0 AND propensity <= 1),
            policy            TEXT NOT NULL,
            explore           TEXT,
            model_version     TEXT NOT NULL,
            score             REAL NOT NULL,
            reward            REAL CHECK (reward >= 0 AND reward <= 1),
            feedback_at       TEXT,
            CHECK ((reward IS NULL) = (feedback_at IS NULL))
        )
        """
    )
    db.execute("CREATE INDEX decisions_by_time ON decisions (created_at, decision_id)")


def _applied_migrations(db: sqlite3.Connection) -> set[str] | None:
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_oirl_migrations'").fetchone()
    if not exists:
        return None
    return {name for (name,) in db.execute("SELECT name FROM _oirl_migrations")}


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema up to date; safe when several processes open a new file at once."""
    known = [fn.__name__ for fn in _MIGRATIONS]
    applied = _applied_migrations(db)
    if applied is not None and set(known) <= applied:
        _check_not_newer(applied, known, path)
        return
    db.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then find it done
    try:
        db.execute("CREATE TABLE IF NOT EXISTS _oirl_migrations (name TEXT PRIMARY KEY NOT NULL, applied_at TEXT NOT NULL)")
        applied = _applied_migrations(db) or set()
        _check_not_newer(applied, known, path)
        for fn in _MIGRATIONS:
            if fn.__name__ not in applied:
                fn(db)
                db.execute("INSERT INTO _oirl_migrations (name, applied_at) VALUES (?, ?)", (fn.__name__, utc_now()))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _check_not_newer(applied: set[str], known: list[str], path: Path) -> None:
    unknown = sorted(applied - set(known))
    if unknown:
        raise DecisionStoreError(
            f"{path}: written by a newer oirl (unknown schema migrations: {', '.join(unknown)}); upgrade oirl to use it"
        )


# --------------------------------------------------------------------------- store


class DecisionStore:
    """The decisions the service made and the rewards they earned, in one SQLite file.

    Safe to share among threads (one connection behind a lock) and to open from
    several processes at once (SQLite's file lock, waited for up to ``busy_timeout``
    seconds). A new file is created with mode ``0666 & ~umask``, like any other file
    (SQLite alone would use ``0644 & ~umask``); its ``-wal`` and ``-shm`` files follow
    the database file's mode. Raises :class:`DecisionStoreError` for a file that is not
    an SQLite database or was written by a newer oirl.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT):
        self.path = Path(path)
        self.busy_timeout = float(busy_timeout)
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._closed = False
        self._db = self._open()

    # -- connection

    def _open(self) -> sqlite3.Connection:
        path = self.path
        if path.is_dir():
            raise DecisionStoreError(f"{path}: is a directory, not a decision store file")
        try:  # create it ourselves so the process umask applies in full (see the class docstring)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            pass
        except OSError as exc:
            raise DecisionStoreError(f"{path}: cannot create the decision store: {exc.strerror}") from None
        db = None
        try:
            # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE.
            db = sqlite3.connect(path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            mode = self._set_wal(db)
            if str(mode).lower() != "wal":
                raise DecisionStoreError(f"{path}: SQLite cannot use WAL mode here (journal mode stays {mode!r})")
            db.execute("PRAGMA synchronous = FULL")  # per connection: fsync the WAL at every commit
            _migrate(db, path)
        except sqlite3.OperationalError as exc:
            _close_quietly(db)
            raise DecisionStoreError(f"{path}: cannot open the decision store: {exc}") from None
        except sqlite3.DatabaseError as exc:  # "file is not a database", corrupt header
            _close_quietly(db)
            raise DecisionStoreError(f"{path}: not an SQLite database ({exc})") from None
        except BaseException:
            _close_quietly(db)
            raise
        return db

    def _set_wal(self, db: sqlite3.Connection) -> str:
        # Switching a new file to WAL needs an exclusive lock, and SQLite does not wait for
        # it (no busy handler): when several processes open a new file at once, retry.
        return self._when_unlocked(lambda: db.execute("PRAGMA journal_mode = WAL").fetchone()[0])

    def _when_unlocked(self, step: Callable[[], Any]) -> Any:
        """Run ``step``, retrying for up to ``busy_timeout`` while SQLite says the file is locked.

        For statements that change nothing when they fail: the journal-mode switch and
        ``BEGIN``. A few lock paths (the WAL switch, recovery after a crash) return
        SQLITE_BUSY at once instead of calling the busy handler.
        """
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.002
        while True:
            try:
                return step()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(2 * delay, 0.05)

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise DecisionStoreError(f"{self.path}: the decision store is closed")
        if os.getpid() != self._pid:
            # A forked child must not use its parent's connection (SQLite's locks are per
            # process); keep the inherited one unclosed and open its own.
            self._inherited = self._db
            self._pid = os.getpid()
            self._db = self._open()
        return self._db

    @contextmanager
    def _transaction(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction on the shared connection; commits on success, else rolls back."""
        with self._lock:
            db = self._connection()
            self._when_unlocked(lambda: db.execute(f"BEGIN {mode}"))
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Close the connection; later calls raise :class:`DecisionStoreError`."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if os.getpid() == self._pid:
                    self._db.close()

    def __enter__(self) -> DecisionStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DecisionStore({str(self.path)!r})"

    # -- writing

    def record(self, decisions: Sequence[Decision]) -> None:
        """Insert a batch of decisions in one transaction; return once it is committed.

        All or nothing: a decision id already in the store raises
        :class:`DuplicateDecisionError` and none of the batch is recorded.
        """
        if isinstance(decisions, Decision) or not isinstance(decisions, Sequence):
            raise TypeError(f"record() takes a list of Decision, got {type(decisions).__name__}")
        rows = []
        for d in decisions:
            if not isinstance(d, Decision):
                raise TypeError(f"record() takes a list of Decision, got an item of type {type(d).__name__}")
            rows.append((
                d.decision_id, d.created_at, d.query, _json(list(d.candidate_ids)), _json(list(d.candidate_prompts)),
                d.prompt_id, d.prompt, d.propensity, d.policy, None if d.explore is None else _json(d.explore),
                d.model_version, d.score,
            ))
        if not rows:
            return
        seen: set[str] = set()
        for row in rows:
            if row[0] in seen:
                raise DuplicateDecisionError(row[0], "occurs twice in the batch")
            seen.add(row[0])
        with self._transaction() as db:
            ids = [row[0] for row in rows]
            for start in range(0, len(ids), 500):  # under SQLite's oldest limit of 999 parameters
                chunk = ids[start : start + 500]
                found = db.execute(f"SELECT decision_id FROM decisions WHERE decision_id IN ({', '.join('?' * len(chunk))})",
                                   chunk).fetchone()
                if found is not None:
                    raise DuplicateDecisionError(found[0])
            db.executemany(
                "INSERT INTO decisions (decision_id, created_at, query, candidate_ids, candidate_prompts, prompt_id,"
                " prompt, propensity, policy, explore, model_version, score) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def feedback(self, decision_id: str, reward: float) -> FeedbackResult:
        """Record the reward of a decision, once.

        The same reward again is an idempotent success (``duplicate=True``); a different
        one raises :class:`ConflictingFeedbackError`. Race-free across threads and
        processes: the conditional update and the read-back share one write transaction.
        Raises :class:`InvalidRewardError` or :class:`UnknownDecisionError`.
        """
        value = _check_reward(reward)
        decision_id = _canonical_id(decision_id, lambda why: _unknown(decision_id, why))
        now = utc_now()
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE decisions SET reward = ?, feedback_at = ? WHERE decision_id = ? AND reward IS NULL",
                (value, now, decision_id),
            ).rowcount
            row = db.execute("SELECT reward, feedback_at FROM decisions WHERE decision_id = ?", (decision_id,)).fetchone()
        if row is None:
            raise UnknownDecisionError(decision_id)
        recorded, feedback_at = float(row[0]), row[1]
        if changed:
            return FeedbackResult(decision_id, recorded, feedback_at)
        if recorded != value:
            raise ConflictingFeedbackError(decision_id, recorded, value, feedback_at)
        return FeedbackResult(decision_id, recorded, feedback_at, duplicate=True)

    # -- reading

    def stats(self) -> dict[str, int]:
        """``{"decisions": n, "with_feedback": k}``, counted in one snapshot."""
        with self._transaction("DEFERRED") as db:
            total, with_feedback = db.execute("SELECT count(*), count(reward) FROM decisions").fetchone()
        return {"decisions": int(total), "with_feedback": int(with_feedback)}

    def export(self, out_path: str | os.PathLike[str]) -> dict[str, Any]:
        """Write the decisions with feedback as a canonical log (CSV, JSONL or Parquet by extension).

        Columns: :data:`EXPORT_COLUMNS`; ``query_id`` is the decision id, so a query text
        served twice stays two rows. Ordered by ``created_at``, then ``decision_id``.
        The write is atomic. Returns ``{"rows", "without_feedback", "file"}``. Raises
        :class:`OirlError` when no decision has feedback yet (nothing is written) or
        when one prompt id was served with two texts (the log could not be read back).
        """
        import pandas as pd

        from oirl.data.logs import log_format, write_logs

        out_path = Path(out_path)
        log_format(out_path)  # an unknown extension fails before any work
        with self._transaction("DEFERRED") as db:  # one snapshot for the rows and the count
            rows = db.execute(
                "SELECT decision_id, decision_id, query, prompt_id, prompt, reward, propensity, model_version,"
                " created_at, feedback_at FROM decisions WHERE reward IS NOT NULL ORDER BY created_at, decision_id"
            ).fetchall()
            (without,) = db.execute("SELECT count(*) FROM decisions WHERE reward IS NULL").fetchone()
        if not rows:
            raise OirlError(f"{self.path}: no decision has feedback yet ({without} without); nothing written to {out_path}")
        frame = pd.DataFrame.from_records(rows, columns=list(EXPORT_COLUMNS))
        _check_one_text_per_prompt_id(frame, self.path)
        write_logs(frame, out_path)
        return {"rows": len(frame), "without_feedback": int(without), "file": str(out_path)}


def _check_one_text_per_prompt_id(frame: Any, path: Path) -> None:
    texts = frame.groupby("prompt_id", sort=False)["prompt"].nunique()
    clashing = texts[texts > 1]
    if len(clashing):
        prompt_id = clashing.index[0]
        rows = frame[frame["prompt_id"] == prompt_id].drop_duplicates("prompt")
        first, other = rows.iloc[0], rows.iloc[1]
        raise OirlError(
            f"{path}: prompt_id {prompt_id!r} was served with two texts (decision {first['decision_id']}, "
            f"model {first['model_version']}; decision {other['decision_id']}, model {other['model_version']}); "
            "one id must name one prompt text in a log"
        )


def _unknown(decision_id: object, why: str) -> None:
    raise UnknownDecisionError(str(decision_id)[:80]) from None


def _close_quietly(db: sqlite3.Connection | None) -> None:
    if db is not None:
        try:
            db.close()
        except sqlite3.Error:
            pass
