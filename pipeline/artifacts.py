"""Every artifact contract of the pipeline, declared once, with atomic writers and validating readers.

Three kinds of artifact (DESIGN.md §3):

* per-frame tables  -> Parquet, described by a :class:`TableSpec` (a ``pyarrow.schema``);
* dense arrays      -> npz without pickles, described by an :class:`ArraySpec` (key -> dtype, ndim);
* small documents   -> JSON, described by a :class:`JsonSpec` (required keys -> Python types).

Writers go through :func:`atomic_output`, so a crash never leaves a half-written file under the
final name (Snakemake would otherwise take it for finished). Readers check the contract and raise
:class:`ArtifactError` naming the file and the offending field. Every artifact carries provenance:
pipeline version, the source video's sha256 and a hash of the stage config that produced it.

Stage modules add their specs to this file (one section per stage) rather than declaring schemas
locally, so a reader in another stage can never drift from the writer.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.errors import PipelineError

PROVENANCE_KEY = b"pipeline.provenance"


class ArtifactError(PipelineError):
    """An artifact is missing, malformed or does not match its declared contract."""


# ----------------------------------------------------------------------------- provenance

def config_hash(cfg: Any) -> str:
    """Stable short hash of a config (dataclass or mapping): what re-running a stage depends on."""
    obj = asdict(cfg) if is_dataclass(cfg) else cfg
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Provenance:
    source_sha256: str
    config_hash: str
    pipeline_version: str = __version__

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Provenance":
        return cls(**json.loads(text))


# ----------------------------------------------------------------------------- atomic writes

@contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    The temporary name keeps the suffix so tools that pick a format from it (ffmpeg, cv2) work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise ArtifactError(path, "writer finished without producing the file")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise ArtifactError(path, "file not found")


# ----------------------------------------------------------------------------- Parquet tables

@dataclass(frozen=True)
class TableSpec:
    """A per-frame Parquet table: a fixed pyarrow schema, ``frame_idx: int32`` first."""

    name: str
    schema: pa.Schema

    def write(self, path: Path | str, columns: Mapping[str, Any] | pa.Table, provenance: Provenance) -> None:
        if isinstance(columns, pa.Table):
            table = columns.select(self.schema.names).cast(self.schema)
        else:
            missing = [n for n in self.schema.names if n not in columns]
            extra = [n for n in columns if n not in self.schema.names]
            if missing or extra:
                raise ArtifactError(path, f"{self.name}: missing columns {missing}, unexpected {extra}")
            arrays = [_to_arrow(columns[f.name], f.type) for f in self.schema]
            table = pa.Table.from_arrays(arrays, schema=self.schema)
        table = table.replace_schema_metadata({PROVENANCE_KEY: provenance.to_json().encode()})
        with atomic_output(path) as tmp:
            pq.write_table(table, tmp, compression="zstd")

    def read(self, path: Path | str) -> pa.Table:
        path = Path(path)
        _require_file(path)
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ArtifactError(path, f"not a readable Parquet file ({exc})") from exc
        for f in self.schema:
            if f.name not in table.schema.names:
                raise ArtifactError(path, f"{self.name}: column '{f.name}' missing")
            got = table.schema.field(f.name).type
            if got != f.type:
                raise ArtifactError(path, f"{self.name}: column '{f.name}' has type {got}, expected {f.type}")
        return table.select(self.schema.names)

    def read_pandas(self, path: Path | str):
        return self.read(path).to_pandas()


def _to_arrow(values: Any, typ: pa.DataType) -> pa.Array:
    """Convert numpy data to an Arrow array; 2-D arrays become fixed-size lists (one row per frame)."""
    if isinstance(typ, pa.FixedSizeListType):
        arr = np.asarray(values)
        flat = arr.reshape(arr.shape[0], -1)
        if flat.shape[1] != typ.list_size:
            raise ValueError(f"expected {typ.list_size} values per row, got {flat.shape[1]}")
        inner = pa.array(flat.reshape(-1).astype(typ.value_type.to_pandas_dtype()), type=typ.value_type)
        return pa.FixedSizeListArray.from_arrays(inner, typ.list_size)
    return pa.array(np.asarray(values), type=typ)


def fixed_list_column(table: pa.Table, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A fixed-size-list column as a numpy array of shape [rows, *shape] (zero-copy where possible)."""
    col = table.column(name).combine_chunks()
    flat = col.values.to_numpy(zero_copy_only=False)
    return flat.reshape((len(table), *shape))


def read_provenance(path: Path | str) -> Provenance:
    meta = pq.read_schema(path).metadata or {}
    if PROVENANCE_KEY not in meta:
        raise ArtifactError(path, "no provenance metadata")
    return Provenance.from_json(meta[PROVENANCE_KEY].decode())


# ----------------------------------------------------------------------------- npz arrays

@dataclass(frozen=True)
class ArraySpec:
    """An npz file: each key has a dtype (numpy kind string, e.g. 'float32', 'uint8') and a rank."""

    name: str
    keys: Mapping[str, tuple[str, int]]
    optional: Mapping[str, tuple[str, int]] = field(default_factory=dict)

    def write(self, path: Path | str, arrays: Mapping[str, np.ndarray], provenance: Provenance,
              compressed: bool = True) -> None:
        declared = {**self.keys, **self.optional}
        missing = [k for k in self.keys if k not in arrays]
        extra = [k for k in arrays if k not in declared]
        if missing or extra:
            raise ArtifactError(path, f"{self.name}: missing keys {missing}, unexpected {extra}")
        out = {}
        for k, v in arrays.items():
            dtype, ndim = declared[k]
            a = np.asarray(v)
            if a.ndim != ndim:
                raise ArtifactError(path, f"{self.name}: key '{k}' has rank {a.ndim}, expected {ndim}")
            out[k] = a.astype(dtype, copy=False)
        out["__provenance__"] = np.array(provenance.to_json())
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as f:
                (np.savez_compressed if compressed else np.savez)(f, **out)

    def read(self, path: Path | str, mmap: bool = False) -> dict[str, np.ndarray]:
        path = Path(path)
        _require_file(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError) as exc:
            raise ArtifactError(path, f"not a readable npz file ({exc})") from exc
        declared = {**self.keys, **self.optional}
        for k, (dtype, ndim) in declared.items():
            if k not in data:
                if k in self.keys:
                    raise ArtifactError(path, f"{self.name}: key '{k}' missing")
                continue
            a = data[k]
            if a.ndim != ndim or a.dtype != np.dtype(dtype):
                raise ArtifactError(path, f"{self.name}: key '{k}' is {a.dtype}[{a.ndim}d], expected {dtype}[{ndim}d]")
        data.pop("__provenance__", None)
        return data


# ----------------------------------------------------------------------------- JSON documents

@dataclass(frozen=True)
class JsonSpec:
    name: str
    required: Mapping[str, type | tuple[type, ...]]

    def write(self, path: Path | str, obj: Mapping[str, Any], provenance: Provenance | None = None) -> None:
        self._check(path, obj)
        doc = dict(obj)
        if provenance is not None:
            doc["provenance"] = asdict(provenance)
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")

    def read(self, path: Path | str) -> dict[str, Any]:
        path = Path(path)
        _require_file(path)
        try:
            obj = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(path, f"invalid JSON ({exc})") from exc
        self._check(path, obj)
        return obj

    def _check(self, path: Path | str, obj: Mapping[str, Any]) -> None:
        for key, typ in self.required.items():
            if key not in obj:
                raise ArtifactError(path, f"{self.name}: field '{key}' missing")
            if not isinstance(obj[key], typ):
                raise ArtifactError(path, f"{self.name}: field '{key}' is {type(obj[key]).__name__}, expected {typ}")


# ============================================================================= the contracts

# --- ingest ------------------------------------------------------------------------------
INGEST_META = JsonSpec(
    "ingest/meta.json",
    required={
        "source": str,
        "source_sha256": str,
        "source_fps": (int, float),
        "source_frames": int,
        "source_size": list,             # [width, height] of the source video
        "fps": int,                      # always 25
        "n_frames": int,                 # frames of ingest/video.mp4
        "duration_sec": (int, float),    # n_frames / fps; audio.wav has exactly this length
        "sample_rate": int,              # 16000
        "video_start_sec": (int, float), # container start times of the source streams
        "audio_start_sec": (int, float),
        "audio_offset_applied_sec": (int, float),  # >0: that much leading audio dropped; <0: silence prepended
        "audio_padded_end_sec": (int, float),      # silence appended so audio covers the last frame
        "split": dict,                   # {"train": [start, stop), "test": [start, stop)} frame ranges
    },
)
