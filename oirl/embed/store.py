"""The embedding cache: one SQLite file of vectors keyed by (model revision, text hash).

``<cache_dir>/embeddings.sqlite`` in WAL mode (as simonw/llm keeps its embeddings),
vectors as little-endian float32 BLOBs, a migrations table, and short *claims* on texts
being embedded so that processes sharing the directory split the work instead of
repeating it (:class:`oirl.embed.cached.CachedEmbedder` drives it). Old ``shard-*.npz`` folders
are migrated on first open; a file that is not a database is moved aside and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from oirl._sqlite import Migration, is_migrated, migrate
from oirl.errors import OirlError

CACHE_FILE = "embeddings.sqlite"
BUSY_TIMEOUT_S = 60.0  # how long a writer waits for another process's transaction
LEASE_S = 120.0  # how long a claim on texts being embedded holds (dead holders are detected sooner)
_SQL_VARIABLES = 500  # placeholders per IN (...) query, well under SQLite's limit
_VECTOR_DTYPE = np.dtype("<f4")


# -- the SQLite store

# Applied in order, each once, recorded in ``schema_migrations`` (see oirl._sqlite).
_MIGRATIONS_TABLE = "schema_migrations"
_MIGRATIONS: list[Migration] = [
    Migration.of_statements(
        "001_initial",
        [
            "CREATE TABLE models (id INTEGER PRIMARY KEY, revision TEXT NOT NULL UNIQUE, model_id TEXT NOT NULL,"
            " dimension INTEGER NOT NULL CHECK (dimension > 0), created_at TEXT NOT NULL)",
            "CREATE TABLE embeddings (model INTEGER NOT NULL REFERENCES models(id), hash BLOB NOT NULL,"
            " vector BLOB NOT NULL, PRIMARY KEY (model, hash))",
            # Texts being embedded right now, by whom and until when (see CachedEmbedder.embed).
            "CREATE TABLE claims (model INTEGER NOT NULL, hash BLOB NOT NULL, owner TEXT NOT NULL,"
            " expires REAL NOT NULL, PRIMARY KEY (model, hash))",
        ],
    ),
]


def _is_corruption(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "")
    return name in {"SQLITE_NOTADB", "SQLITE_CORRUPT"} or any(
        s in str(exc) for s in ("file is not a database", "malformed", "file is encrypted")
    )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (and threads: each call is its own lock object).

    File locks guard recovery and migration (SQLite does its own locking). ``filelock``
    takes an OS lock wherever there is one (``flock`` on POSIX, ``msvcrt`` on Windows), a
    lock file where there is not: never no lock at all, which a missing ``fcntl`` used to give.
    """
    from filelock import FileLock

    with FileLock(path):  # default mode: 0o666 less the umask, as before
        yield


def _chunks(items: Sequence, size: int = _SQL_VARIABLES) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _holder_is_alive(owner: str) -> bool:
    """Whether the process named in a claim (``host/pid/nonce``) still runs; other hosts are assumed alive."""
    host, _, rest = owner.partition("/")
    pid = rest.partition("/")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) <= 0:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but belongs to someone else
        return True
    return True


class EmbeddingCache:
    """The SQLite store of one cache directory (see module docstring); shared by every model.

    One connection per process (re-opened after a fork), used under a lock, in
    autocommit mode with explicit ``BEGIN IMMEDIATE`` write transactions.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / CACHE_FILE
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._conn_inode: int | None = None
        self._pid = -1
        with self._lock:
            self._connection()

    # -- connection, schema, recovery

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            inode = self._inode()
            try:
                self._conn = self._open()
            except sqlite3.DatabaseError as exc:
                if not _is_corruption(exc):
                    raise OirlError(f"cannot open the embedding cache {self.path}: {exc}") from None
                self._conn = self._recover(exc, inode)
            self._pid = os.getpid()
            self._conn_inode = self._inode()  # the file this connection uses, should it turn out corrupt
        return self._conn

    def _inode(self) -> int | None:
        try:
            return os.stat(self.path).st_ino
        except FileNotFoundError:
            return None

    def _open(self, locked: bool = False) -> sqlite3.Connection:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # Create the file ourselves so it follows the umask (SQLite would use 0644), and
            # SQLite gives the -wal and -shm files the database file's permissions.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666))
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA synchronous = NORMAL")  # a cache: losing the last commits on power loss is fine
            if not self._ready(conn):
                # Two connections switching to WAL (or creating tables) at once can deadlock, and
                # SQLite then fails one at once instead of waiting: set up one process at a time.
                with contextlib.nullcontext() if locked else _file_lock(self.root / f"{CACHE_FILE}.lock"):
                    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                        conn.execute("PRAGMA journal_mode = WAL")
                    self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _ready(conn: sqlite3.Connection) -> bool:
        """Whether the file is in WAL mode with every migration applied (read-only checks)."""
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            return False
        return is_migrated(conn, _MIGRATIONS_TABLE, _MIGRATIONS)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        migrate(conn, _MIGRATIONS_TABLE, _MIGRATIONS, now=_now)

    def _recover(self, problem: sqlite3.Error, bad_inode: int | None) -> sqlite3.Connection:
        """Move the corrupt cache file ``bad_inode`` aside (with its -wal and -shm) and start a new one."""
        with _file_lock(self.root / f"{CACHE_FILE}.lock"):
            if self._inode() != bad_inode:  # another process rebuilt it while we waited for the lock
                return self._open(locked=True)
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
            aside = self.path.with_name(f"{CACHE_FILE}.corrupt-{stamp}-{os.getpid()}")
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):  # an old WAL must never be replayed into the new file
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            warnings.warn(
                f"embedding cache {self.path} is not a readable SQLite database ({problem}): moved it to {aside.name} "
                "and started a new one; its vectors will be embedded again",
                stacklevel=4,
            )
            return self._open(locked=True)

    def _run(self, work: Callable[[sqlite3.Connection], object]):
        """Run ``work(conn)`` under the lock; a corrupt file is rebuilt and the work retried once."""
        with self._lock:
            for attempt in (1, 2):
                conn = self._connection()
                try:
                    return work(conn)
                except sqlite3.DatabaseError as exc:
                    if isinstance(exc, sqlite3.OperationalError) or (attempt == 2 and _is_corruption(exc)):
                        raise OirlError(f"embedding cache {self.path}: {exc}") from None
                    if not _is_corruption(exc):
                        raise
                    conn.close()
                    self._conn = self._recover(exc, self._conn_inode)
                    self._conn_inode = self._inode()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # -- models and vectors

    def model_key(self, revision: str, model_id: str, dimension: int) -> int:
        """The row id of a model revision, registered on first use; rows of another dimension are dropped."""

        def work(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT id, dimension FROM models WHERE revision = ?", (revision,)).fetchone()
            if row is not None and row[1] == dimension:
                return row[0]
            with _transaction(conn):
                conn.execute(
                    "INSERT OR IGNORE INTO models (revision, model_id, dimension, created_at) VALUES (?, ?, ?, ?)",
                    (revision, model_id, dimension, _now()),
                )
                key, stored = conn.execute("SELECT id, dimension FROM models WHERE revision = ?", (revision,)).fetchone()
                if stored != dimension:
                    warnings.warn(
                        f"embedding cache {self.path}: model revision {revision} held vectors of dimension {stored}, "
                        f"not {dimension}; they are discarded",
                        stacklevel=4,
                    )
                    conn.execute("DELETE FROM embeddings WHERE model = ?", (key,))
                    conn.execute("UPDATE models SET dimension = ? WHERE id = ?", (dimension, key))
                return key

        return self._run(work)

    def count(self, key: int) -> int:
        return self._run(lambda conn: conn.execute("SELECT COUNT(*) FROM embeddings WHERE model = ?", (key,)).fetchone()[0])

    def get(self, key: int, hashes: Sequence[str], dimension: int) -> dict[str, np.ndarray]:
        """The stored vectors among ``hashes`` (hex sha256), each shape (dimension,); only those rows are read."""
        return self._run(lambda conn: self._select(conn, key, hashes, dimension))

    def _select(
        self, conn: sqlite3.Connection, key: int, hashes: Sequence[str], dimension: int, bad: list[bytes] | None = None
    ) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for chunk in _chunks(hashes):
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT hash, vector FROM embeddings WHERE model = ? AND hash IN ({marks})",
                [key, *(bytes.fromhex(h) for h in chunk)],
            )
            for digest, blob in rows:
                if len(blob) == dimension * _VECTOR_DTYPE.itemsize:
                    found[digest.hex()] = np.frombuffer(blob, dtype=_VECTOR_DTYPE).astype(np.float32, copy=False)
                elif bad is not None:  # a damaged row counts as missing; claim() deletes it
                    bad.append(digest)
        return found

    def claim(
        self, key: int, hashes: Sequence[str], dimension: int, owner: str, lease: float = LEASE_S
    ) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
        """In one write transaction: the vectors already stored, the texts now claimed by ``owner``
        (nobody stored or is embedding them) and those another live process is embedding."""

        def work(conn: sqlite3.Connection):
            with _transaction(conn):
                bad: list[bytes] = []
                found = self._select(conn, key, hashes, dimension, bad)
                conn.executemany("DELETE FROM embeddings WHERE model = ? AND hash = ?", [(key, digest) for digest in bad])
                todo = [h for h in hashes if h not in found]
                held: dict[str, tuple[str, float]] = {}
                for chunk in _chunks(todo):
                    marks = ",".join("?" * len(chunk))
                    rows = conn.execute(
                        f"SELECT hash, owner, expires FROM claims WHERE model = ? AND hash IN ({marks})",
                        [key, *(bytes.fromhex(h) for h in chunk)],
                    )
                    held.update((digest.hex(), (who, expires)) for digest, who, expires in rows)
                now = time.time()
                alive: dict[str, bool] = {}
                mine, theirs = [], []
                for h in todo:
                    who, expires = held.get(h, (owner, 0.0))
                    if who != owner and expires > now and alive.setdefault(who, _holder_is_alive(who)):
                        theirs.append(h)
                    else:
                        mine.append(h)
                conn.executemany(
                    "INSERT OR REPLACE INTO claims (model, hash, owner, expires) VALUES (?, ?, ?, ?)",
                    [(key, bytes.fromhex(h), owner, now + lease) for h in mine],
                )
            return found, mine, theirs

        return self._run(work)

    def put(self, key: int, hashes: Sequence[str], vectors: np.ndarray, owner: str | None = None) -> None:
        """Store vectors (shape (len(hashes), dimension)) in one transaction; existing rows are kept.
        Releases ``owner``'s claims on them."""
        vectors = np.ascontiguousarray(vectors, dtype=_VECTOR_DTYPE)
        rows = [(key, bytes.fromhex(h), v.tobytes()) for h, v in zip(hashes, vectors, strict=True)]

        def work(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.executemany("INSERT OR IGNORE INTO embeddings (model, hash, vector) VALUES (?, ?, ?)", rows)
                if owner is not None:
                    conn.executemany(
                        "DELETE FROM claims WHERE model = ? AND hash = ? AND owner = ?", [(key, r[1], owner) for r in rows]
                    )

        if rows:
            self._run(work)

    def release(self, owner: str) -> None:
        """Drop every claim of ``owner`` (after an embedding run failed)."""

        def work(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute("DELETE FROM claims WHERE owner = ?", (owner,))

        self._run(work)

    # -- the previous format

    def import_old_shards(self, key: int, model_id: str, dimension: int) -> None:
        """Move vectors of ``model_id`` from ``<root>/*/shard-*.npz`` (the previous format) into the store.

        Shards of other models stay until that model is opened (only then is its revision
        known); unreadable ones (any model) are deleted. Both are reported by a warning.
        """
        if not any(self.root.glob("*/shard-*.npz")):
            return
        migrated, discarded, problems = 0, 0, []
        with _file_lock(self.root / f"{CACHE_FILE}.lock"):
            for shard in sorted(self.root.glob("*/shard-*.npz")):
                problem = None
                try:
                    with np.load(shard, allow_pickle=False) as data:
                        if str(data["model_id"]) != model_id:
                            continue  # another model's: left for when that model is opened
                        hashes, vectors, checksum = data["hashes"], data["vectors"], str(data["checksum"])
                    if vectors.ndim != 2 or vectors.shape != (len(hashes), dimension):
                        problem = f"vectors of shape {vectors.shape}, expected ({len(hashes)}, {dimension})"
                    elif checksum != _old_checksum(hashes, vectors):
                        problem = "its checksum does not match its contents"
                except FileNotFoundError:
                    continue  # another process migrated it meanwhile
                except Exception as exc:  # zip, npy-format and key errors all mean "unreadable"
                    problem = f"it cannot be read ({type(exc).__name__})"
                if problem is None:
                    self.put(key, [str(h) for h in hashes.tolist()], vectors)
                    migrated += len(hashes)
                else:
                    discarded += 1
                    problems.append(f"{shard.name}: {problem}")
                shard.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    shard.parent.rmdir()  # only once empty
        if migrated:
            warnings.warn(
                f"embedding cache {self.root}: migrated {migrated} vectors of {model_id} from old shard-*.npz files "
                f"into {CACHE_FILE} and deleted those files",
                stacklevel=3,
            )
        if discarded:
            warnings.warn(
                f"embedding cache {self.root}: discarded {discarded} unreadable old shard-*.npz file(s) "
                f"({'; '.join(problems[:3])}); their texts will be embedded again",
                stacklevel=3,
            )


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")  # take the write lock now: a deferred upgrade could fail without waiting
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _old_checksum(hashes: np.ndarray, vectors: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(hashes.astype("<U64")).tobytes())
    digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()
