"""The decision log: every recommendation the service made, and the reward it later earned.

    store = DecisionStore("decisions/oirl.db")
    decision = Decision(query="What is 7 times 8?", candidate_ids=["CoT", "nan"],
                        candidate_prompts=["Let's think step by step: ", "The answer is:"],
                        prompt_id="CoT", prompt="Let's think step by step: ", score=0.41,
                        policy="argmax", model_version="3f2a…")
    store.record([decision])                  # returns once the batch is committed
    store.feedback(decision.decision_id, 1.0)  # later, when the outcome is known
    store.export("logs/served.parquet")        # the decisions with feedback, as a log
                                               # (oirl.decisions.export)

This closes the loop: the exported partial log (one prompt per query, with the
propensity it was chosen with) is a log :func:`oirl.data.logs.read_logs` reads, so it can
be trained and evaluated on like any other.

Storage is one SQLite file in WAL mode with ``synchronous=FULL``: a batch is on disk
when :meth:`DecisionStore.record` returns, so a decision the service acknowledged
survives ``kill -9`` of the server (and, with the fsync FULL adds, power loss). Writes
are serialised by SQLite's file lock across processes (``busy_timeout`` waits for it)
and by a lock inside one process, which shares one connection among its threads.
The schema carries named migrations in ``_oirl_migrations`` (:mod:`oirl._sqlite`).
A failed read or write (a lock held past ``busy_timeout``, a full disk) raises
:class:`DecisionStoreError`, which the service answers with 503 and ``Retry-After``.

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

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from oirl._sqlite import Migration, migrate
from oirl.decisions.export import CHUNK_ROWS, DEFAULT_FEEDBACK_WINDOW, EXPORT_COLUMNS, SOURCE_COLUMNS, write_export
from oirl.decisions.records import (
    ConflictingFeedbackError,
    Decision,
    DecisionStoreError,
    DuplicateDecisionError,
    FeedbackResult,
    InvalidDecisionError,
    InvalidRewardError,
    UnknownDecisionError,
    canonical_id,
    check_reward,
    new_decision_id,
    to_json,
    utc_now,
)

__all__ = [
    "ConflictingFeedbackError",
    "DEFAULT_FEEDBACK_WINDOW",
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

DEFAULT_BUSY_TIMEOUT = 10.0  # seconds a writer waits for another process's lock


# --------------------------------------------------------------------------- schema

_MIGRATIONS_TABLE = "_oirl_migrations"


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


def m002_online(db: sqlite3.Connection) -> None:
    """The online state each decision was served with (JSON; NULL before online learning)."""
    db.execute("ALTER TABLE decisions ADD COLUMN online TEXT")
    db.execute("CREATE INDEX decisions_by_model ON decisions (model_version, prompt_id)")  # what arm_outcomes reads


_MIGRATIONS = [Migration("m001_decisions", m001_decisions), Migration("m002_online", m002_online)]


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema up to date; safe when several processes open a new file at once."""

    def newer(unknown: list[str]) -> None:
        raise DecisionStoreError(
            f"{path}: written by a newer oirl (unknown schema migrations: {', '.join(unknown)}); upgrade oirl to use it"
        )

    migrate(db, _MIGRATIONS_TABLE, _MIGRATIONS, now=utc_now, on_unknown=newer)


# --------------------------------------------------------------------------- store


@dataclass(frozen=True)
class ArmOutcomes:
    """What the feedback on one prompt adds up to (see :meth:`DecisionStore.arm_outcomes`)."""

    count: int
    weight: float  # sum of 1 / propensity
    weight_squared: float  # sum of 1 / propensity^2
    weighted_residual: float  # sum of (reward - served score) / propensity


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
        """One transaction on the shared connection; commits on success, else rolls back.
        An SQLite error in it becomes a :class:`DecisionStoreError`."""
        with self._lock:
            db = self._connection()
            try:
                self._when_unlocked(lambda: db.execute(f"BEGIN {mode}"))
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:  # locked past busy_timeout, disk full, I/O error: the store, not the caller
                raise DecisionStoreError(f"{self.path}: the decision store failed ({type(exc).__name__}: {exc})") from None

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
                d.decision_id, d.created_at, d.query, to_json(list(d.candidate_ids)), to_json(list(d.candidate_prompts)),
                d.prompt_id, d.prompt, d.propensity, d.policy, None if d.explore is None else to_json(d.explore),
                d.model_version, d.score, None if d.online is None else to_json(d.online),
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
                " prompt, propensity, policy, explore, model_version, score, online) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def feedback(self, decision_id: str, reward: float) -> FeedbackResult:
        """Record the reward of a decision, once.

        The same reward again is an idempotent success (``duplicate=True``); a different
        one raises :class:`ConflictingFeedbackError`. Race-free across threads and
        processes: the conditional update and the read-back share one write transaction.
        Raises :class:`InvalidRewardError` or :class:`UnknownDecisionError`.
        """
        value = check_reward(reward)
        decision_id = canonical_id(decision_id, lambda why: _unknown(decision_id, why))
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

    def arm_outcomes(self, model_version: str) -> dict[str, ArmOutcomes]:
        """Per served prompt id, over the decisions of ``model_version`` whose reward is known,
        in one snapshot: their count and, weighted by 1 / propensity, the sums of weights,
        squared weights and residuals (reward - the score served with)."""
        with self._transaction("DEFERRED") as db:
            rows = db.execute("SELECT prompt_id, count(reward), sum(1.0 / propensity), sum(1.0 / (propensity * propensity)),"
                              " sum((reward - score) / propensity) FROM decisions"
                              " WHERE reward IS NOT NULL AND model_version = ? GROUP BY prompt_id", (model_version,)).fetchall()
        return {str(p): ArmOutcomes(int(n), float(w), float(w2), float(r)) for p, n, w, w2, r in rows}

    def stats(self) -> dict[str, int]:
        """``{"decisions": n, "with_feedback": k}``, counted in one snapshot."""
        with self._transaction("DEFERRED") as db:
            total, with_feedback = db.execute("SELECT count(*), count(reward) FROM decisions").fetchone()
        return {"decisions": int(total), "with_feedback": int(with_feedback)}

    def export(self, out_path: str | os.PathLike[str], *, feedback_window: float = DEFAULT_FEEDBACK_WINDOW,
               missing_reward: float | None = None, now: datetime | None = None, chunk_rows: int = CHUNK_ROWS) -> dict[str, Any]:
        """Write the decisions whose outcome is known as a canonical log (CSV, JSONL or Parquet by extension).

        Columns: :data:`EXPORT_COLUMNS`; ``query_id`` is the decision id, so a query text
        served twice stays two rows; ``candidate_ids`` is the JSON list of the prompt ids
        that were offered. Ordered by ``created_at``, then ``decision_id``. Rewards count
        when they arrived within ``feedback_window`` seconds; older decisions without one
        are dropped or get ``missing_reward``; younger ones wait (see
        :mod:`oirl.decisions.export`; ``now`` defaults to the clock). Read in chunks
        of ``chunk_rows`` from one snapshot and written as they come, atomically. Returns
        the summary of :func:`~oirl.decisions.export.write_export`.
        """
        sql = (f"SELECT {', '.join(SOURCE_COLUMNS)} FROM decisions ORDER BY created_at, decision_id")
        with self._transaction("DEFERRED") as db:  # one snapshot for every row
            cursor = db.execute(sql)
            rows = (row for batch in iter(lambda: cursor.fetchmany(chunk_rows), []) for row in batch)
            return write_export(rows, out_path, source=self.path, feedback_window=feedback_window,
                                missing_reward=missing_reward, now=now, chunk_rows=chunk_rows)


def _unknown(decision_id: object, why: str) -> None:
    raise UnknownDecisionError(str(decision_id)[:80]) from None


def _close_quietly(db: sqlite3.Connection | None) -> None:
    if db is not None:
        try:
            db.close()
        except sqlite3.Error:
            pass
