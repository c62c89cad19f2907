"""Model bundles: the directory ``oirl train`` writes and everything else loads.

A bundle holds ``bundle.json`` (validated by :class:`BundleSchema`: embedder, feature
layout, model kind and parameters, prompt table, policy, training summary, metrics,
and the sha256 of every other file), the model in its library's own format,
``prompt_vectors.npy``, ``train_text_hashes.npy`` and ``train_instance_hashes.npy``
(64-bit hashes of the training query texts and query ids, to tell which evaluated
queries were seen in training, and whether the model may serve as an off-policy
evaluation's reward model for them) and, for a static
embedder, its files under ``embedder/``. Nothing in it is pickled.

Loading trusts nothing: unknown keys, wrong types, out-of-range values, file names
that leave the bundle, files whose content does not match their recorded hash,
arrays of the wrong shape and an embedder other than the one trained with all raise
:class:`BundleError` with one line naming the file and field. The bundle's
fingerprint (the service's ``model_version``) is the hash of the ``bundle.json`` bytes
that were loaded, which pin the hash of every file loaded with them.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model, model_validator

from oirl import __version__
from oirl._atomic import atomic_directory
from oirl._json import json_safe
from oirl._outputs import check_output_directory as check_directory
from oirl.data.questions import QuestionKey
from oirl.errors import BundleError, one_line
from oirl.policy.policies import POLICIES
from oirl.recommender.arms import ArmParams, ArmSettings, ModelName, as_dict
from oirl.recommender.recommender import Candidate, Recommender
from oirl.reward.features import FEATURE_LAYOUTS, feature_dimension
from oirl.reward.registry import REWARD_MODELS

BUNDLE_FORMAT = 3
BUNDLE_FILE = "bundle.json"
PROMPT_VECTORS_FILE = "prompt_vectors.npy"
TEXT_HASHES_FILE = "train_text_hashes.npy"
INSTANCE_HASHES_FILE = "train_instance_hashes.npy"
EMBEDDER_DIR = "embedder"

FileName = Annotated[str, StringConstraints(pattern=rf"^({EMBEDDER_DIR}/)?[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Text = Annotated[str, StringConstraints(min_length=1)]
UnitFloat = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]


class CalibrationSection(BaseModel):
    """``policy.calibration`` in ``bundle.json``: how the cost weight was chosen (the search:
    :func:`oirl.learn.calibration.calibrate`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Literal["max_share", "budget"]
    prompt_id: Text | None = None  # max_share: the prompt whose share of calls is capped
    limit: NonNegative  # the share cap, or the mean cost per query
    measured: NonNegative  # that share, or the mean cost, on the calibration queries at the chosen weight
    queries: Annotated[int, Field(gt=0)]
    source: str  # the calibration queries' file name
    mean_cost: NonNegative
    shares: dict[Text, UnitFloat]  # the share of calls of each prompt on the calibration queries
    seen_in_training: Annotated[int, Field(ge=0)] = 0  # calibration queries that were training questions (warned about)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmbedderSection(_Strict):
    spec: Text
    model_id: Text
    revision: Text
    dimension: Annotated[int, Field(gt=0)]
    files: dict[FileName, Sha256] = {}  # a static embedder carried inside the bundle


class FeatureSection(_Strict):
    layout: Literal[FEATURE_LAYOUTS]  # type: ignore[valid-type]
    dimension: Annotated[int, Field(gt=0)]


class ModelSection(_Strict):
    kind: Text
    file: FileName
    params: dict[str, Any]

    def check(self) -> None:
        """The kind is a reward model oirl knows, stored under its file name, with its parameters."""
        if self.kind not in REWARD_MODELS:
            raise ValueError(f"model.kind {self.kind!r} is not one of {', '.join(REWARD_MODELS)}")
        model_cls = REWARD_MODELS[self.kind]
        if self.file != model_cls.model_file:
            raise ValueError(f"model.file {self.file!r}: a {self.kind} model is stored as {model_cls.model_file!r}")
        try:
            params_schema(model_cls).model_validate(self.params)
        except ValidationError as exc:
            raise ValueError(f"model.params.{_validation_message(exc)}") from None


class PromptEntry(_Strict):
    prompt_id: Text
    prompt: Text
    train_mean_reward: UnitFloat
    cost: NonNegative | None = None
    model: ModelName | None = None  # the arm's model and generation parameters (oirl.recommender.arms), when it sets them
    params: ArmParams | None = None


class PolicySection(_Strict):
    default: Literal[tuple(POLICIES)]  # type: ignore[valid-type]
    default_prompt_id: Text
    conservative_margin: NonNegative | None  # None: infinite (always the default prompt)
    fallback_threshold: UnitFloat
    cost_weight: NonNegative | None = None  # the cost-aware policy's lambda when none is asked for (None: 0)
    calibration: CalibrationSection | None = None  # how `oirl calibrate` chose the cost weight


class QuestionKeySection(_Strict):
    """The rule that makes two query texts one question (:mod:`oirl.data.questions`)."""

    unicode: Literal["NFKC"]
    whitespace: Literal["collapsed"]
    casefold: bool


class PropensitySection(_Strict):
    """Where a partial log's propensities came from, and how far to trust them."""

    source: Literal["logged", "estimated"]
    rounds: Count
    min: UnitFloat
    max: UnitFloat
    effective_sample_size: NonNegative
    estimator: str | None = None
    C: NonNegative | None = None
    floor: UnitFloat | None = None
    clipped_rounds: Count | None = None
    near_deterministic_share: UnitFloat | None = None  # estimated loggers; absent in bundles before issue 21


class TrainingSection(_Strict):
    source: str
    fingerprint: Text
    rows: Count
    query_instances: Count
    distinct_queries: Count
    feedback: Literal["full", "partial"]
    cv_folds: Annotated[int, Field(ge=2)]
    cv_groups: Literal["text", "instance"]
    importance_weights: bool = False
    question_key: QuestionKeySection
    propensities: PropensitySection | None = None
    seconds: NonNegative


class BundleSchema(_Strict):
    """``bundle.json``; every field is checked on load."""

    format: Literal[3]
    oirl_version: str
    embedder: EmbedderSection
    features: FeatureSection
    model: ModelSection | None  # None: made by ``oirl init``, before any training
    prompts: Annotated[list[PromptEntry], Field(min_length=1)]
    policy: PolicySection
    training: TrainingSection | None
    metrics: dict[str, Any]
    files: dict[FileName, Sha256]

    @model_validator(mode="after")
    def _consistent(self) -> BundleSchema:
        ids = [p.prompt_id for p in self.prompts]
        if len(set(ids)) != len(ids):
            raise ValueError("prompts: duplicate prompt_id")
        if self.policy.default_prompt_id not in ids:
            raise ValueError(f"policy.default_prompt_id {self.policy.default_prompt_id!r} is not a bundle prompt")
        if self.features.dimension != feature_dimension(self.features.layout, self.embedder.dimension):
            raise ValueError(f"features.dimension {self.features.dimension} does not fit layout {self.features.layout} "
                             f"of {self.embedder.dimension}-dimensional vectors")
        if (self.model is None) != (self.training is None):
            raise ValueError("model and training: both or neither (a bundle made by 'oirl init' has neither)")
        if self.model is not None:
            self.model.check()
        for name in (*([self.model.file] if self.model else []), PROMPT_VECTORS_FILE, TEXT_HASHES_FILE, INSTANCE_HASHES_FILE,
                     *self.embedder.files):
            if name not in self.files:
                raise ValueError(f"files: no hash recorded for {name!r}")
        return self


def params_schema(model_cls: type) -> type[BaseModel]:
    """A strict schema of a reward model's constructor parameters, from its signature."""
    hints = typing.get_type_hints(model_cls.__init__)
    fields = {name: (hints[name], p.default) for name, p in inspect.signature(model_cls.__init__).parameters.items() if name != "self"}
    return create_model(f"{model_cls.__name__}Params", __config__=ConfigDict(extra="forbid"), **fields)


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- writing


def is_bundle(directory: Path) -> bool:
    return (directory / BUNDLE_FILE).is_file()


def check_output_directory(directory: str | os.PathLike[str]) -> Path:
    """Where a bundle may be written: a new or empty directory, or an existing bundle
    (:func:`oirl._outputs.check_output_directory`)."""
    return check_directory(directory, is_bundle, "an oirl bundle", error=BundleError)


def save_bundle(rec: Recommender, directory: str | os.PathLike[str]) -> Path:
    """Write ``rec`` as a bundle, replacing an existing bundle atomically."""
    directory = check_output_directory(directory)
    payload = {
        **({rec.model.model_file: rec.model.to_bytes()} if rec.model is not None else {}),
        PROMPT_VECTORS_FILE: _npy_bytes(rec.prompt_vectors.astype(np.float32)),
        TEXT_HASHES_FILE: _npy_bytes(rec.train_text_hashes.astype("<u8")),
        INSTANCE_HASHES_FILE: _npy_bytes(rec.train_instance_hashes.astype("<u8")),
        **{f"{EMBEDDER_DIR}/{name}": data for name, data in rec.embedder_files().items()},
    }
    dimension = int(rec.prompt_vectors.shape[1])
    document = {
        "format": BUNDLE_FORMAT,
        "oirl_version": __version__,
        "embedder": {"spec": rec.embedder_spec, "model_id": rec.embedder_id, "revision": rec.embedder_revision, "dimension": dimension,
                     "files": {name: sha256(data) for name, data in payload.items() if name.startswith(f"{EMBEDDER_DIR}/")}},
        "features": {"layout": rec.layout, "dimension": feature_dimension(rec.layout, dimension)},
        "model": None if rec.model is None else {"kind": rec.model.name, "file": rec.model.model_file, "params": rec.model.get_params()},
        "prompts": [{"prompt_id": p.prompt_id, "prompt": p.prompt, "train_mean_reward": rec.prior[p.prompt_id],
                     "cost": rec.costs.get(p.prompt_id), **rec.arms.get(p.prompt_id, {})} for p in rec.prompts],
        "policy": {"default": rec.default_policy, "default_prompt_id": rec.default_prompt_id,
                   "conservative_margin": None if np.isinf(rec.margin) else rec.margin, "fallback_threshold": rec.threshold},
        "training": rec.metadata.get("training"),
        "metrics": rec.metadata.get("metrics", {}),
        "files": {name: sha256(data) for name, data in payload.items()},
    }
    if rec.cost_weight is not None:  # set by `oirl calibrate`
        document["policy"] |= {"cost_weight": rec.cost_weight, "calibration": rec.calibration}
    document = json_safe(document)
    try:
        BundleSchema.model_validate(document)
    except ValidationError as exc:  # a bug in oirl, but never write a bundle that cannot load
        raise BundleError(f"refusing to write an invalid bundle: {_validation_message(exc)}") from None
    with atomic_directory(directory) as tmp:
        for name, data in payload.items():
            (tmp / name).parent.mkdir(exist_ok=True)
            (tmp / name).write_bytes(data)
        (tmp / BUNDLE_FILE).write_text(json.dumps(document, indent=2, allow_nan=False), encoding="utf-8")
    return directory


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


# --------------------------------------------------------------------------- reading


def read_bundle_file(directory: Path, name: str, expected_sha256: str) -> bytes:
    """The bytes of a bundle file, confined to the bundle and checked against its hash."""
    path = directory / name
    resolved = path.resolve()
    if path.is_symlink() or directory.resolve() not in resolved.parents:
        raise BundleError(f"{path}: file names must stay inside the bundle (no links or parent paths)")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: missing bundle file") from None
    except (IsADirectoryError, PermissionError, OSError) as exc:
        raise BundleError(f"{path}: unreadable ({type(exc).__name__})") from None
    if sha256(data) != expected_sha256:
        raise BundleError(f"{path}: content does not match the hash in {BUNDLE_FILE} (truncated or replaced)")
    return data


def read_schema(directory: Path) -> tuple[BundleSchema, bytes]:
    """Parse and validate ``bundle.json``; returns it and the bytes read."""
    if not directory.is_dir():
        raise BundleError(f"{directory}: no such model bundle directory")
    path = directory / BUNDLE_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: missing (is {directory} a model bundle made by 'oirl train'?)") from None
    except OSError as exc:
        raise BundleError(f"{path}: unreadable ({type(exc).__name__})") from None
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({one_line(exc)})") from None
    if isinstance(document, dict) and document.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: bundle format {document.get('format')!r}; this oirl reads format {BUNDLE_FORMAT} (retrain with 'oirl train')")
    try:
        return BundleSchema.model_validate(document), raw
    except ValidationError as exc:
        raise BundleError(f"{path}: {_validation_message(exc)}") from None


def load_bundle(directory: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None, check_embedder: bool = True) -> Recommender:
    """Load and verify a bundle (see the module docstring)."""
    directory = Path(directory)
    schema, raw = read_schema(directory)
    model = None
    if schema.model is not None:
        model_cls = REWARD_MODELS[schema.model.kind]
        model_bytes = read_bundle_file(directory, schema.model.file, schema.files[schema.model.file])
        model = model_cls.from_bytes(model_bytes, params_schema(model_cls).model_validate(schema.model.params).model_dump(),
                                     where=str(directory / schema.model.file))
    prompt_vectors = _load_npy(directory, PROMPT_VECTORS_FILE, schema.files[PROMPT_VECTORS_FILE], np.floating,
                               (len(schema.prompts), schema.embedder.dimension))
    text_hashes = _load_npy(directory, TEXT_HASHES_FILE, schema.files[TEXT_HASHES_FILE], np.unsignedinteger, None)
    instance_hashes = _load_npy(directory, INSTANCE_HASHES_FILE, schema.files[INSTANCE_HASHES_FILE], np.unsignedinteger, None)
    embedder_files = {name.split("/", 1)[1]: read_bundle_file(directory, name, digest) for name, digest in schema.embedder.files.items()}
    prompts = [Candidate(p.prompt, p.prompt_id) for p in schema.prompts]
    rec = Recommender(
        model=model, embedder_spec=schema.embedder.spec, embedder_id=schema.embedder.model_id, embedder_revision=schema.embedder.revision,
        layout=schema.features.layout, prompts=prompts, prompt_vectors=prompt_vectors,
        prior={p.prompt_id: p.train_mean_reward for p in schema.prompts},
        margin=float("inf") if schema.policy.conservative_margin is None else schema.policy.conservative_margin,
        default_policy=schema.policy.default, threshold=schema.policy.fallback_threshold,
        costs={p.prompt_id: p.cost for p in schema.prompts if p.cost is not None},
        arms={p.prompt_id: as_dict(ArmSettings(model=p.model, params=p.params)) for p in schema.prompts},
        metadata={"training": None if schema.training is None else schema.training.model_dump(), "metrics": schema.metrics},
        train_text_hashes=text_hashes, train_instance_hashes=instance_hashes,
        question_key=QuestionKey(casefold=schema.training.question_key.casefold if schema.training else True), cache_dir=cache_dir, embedder_bundle_files=embedder_files,
        embedder_directory=directory / EMBEDDER_DIR if embedder_files else None, fingerprint=sha256(raw)[:16],
        cost_weight=schema.policy.cost_weight, calibration=schema.policy.calibration and schema.policy.calibration.model_dump(),
    )
    if check_embedder:
        rec.check_embedder(where=str(directory / BUNDLE_FILE))
    return rec


def _load_npy(directory: Path, name: str, digest: str, kind: type, shape: tuple[int, ...] | None) -> np.ndarray:
    data = read_bundle_file(directory, name, digest)
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BundleError(f"{directory / name}: not a readable .npy array ({type(exc).__name__})") from None
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, kind) or (shape is not None and array.shape != shape):
        raise BundleError(f"{directory / name}: array of shape {getattr(array, 'shape', None)} and type {getattr(array, 'dtype', None)}, "
                          f"expected {shape or '1-D'} of {kind.__name__}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise BundleError(f"{directory / name}: holds NaN or infinite values")
    return array
