"""Artifact mechanism: specs (Parquet, npz, npy, JSON), atomic writes, validating readers, provenance.

The contracts themselves (which file holds what) are in :mod:`pipeline.core.artifacts.preprocess` and
:mod:`pipeline.core.artifacts.models`; import everything from :mod:`pipeline.core.artifacts`.
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
from pipeline.core.errors import PipelineError


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
            want = np.dtype(dtype)  # "str": unicode of any length
            if a.ndim != ndim or (a.dtype.kind != "U" if want.kind == "U" else a.dtype != want):
                raise ArtifactError(path, f"{self.name}: key '{k}' is {a.dtype}[{a.ndim}d], expected {dtype}[{ndim}d]")
        data.pop("__provenance__", None)
        return data


# ----------------------------------------------------------------------------- JSON documents

@dataclass(frozen=True)
class JsonSpec:
    """A JSON document: ``required`` keys and their types; ``optional`` keys are type-checked where present
    (fields added later, so that documents written by an older version still read)."""

    name: str
    required: Mapping[str, type | tuple[type, ...]]
    optional: Mapping[str, type | tuple[type, ...]] = field(default_factory=dict)

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
        for key, typ in self.optional.items():
            if key in obj and not isinstance(obj[key], typ):
                raise ArtifactError(path, f"{self.name}: field '{key}' is {type(obj[key]).__name__}, expected {typ}")




@contextmanager
def npz_stream(path: Path | str, spec: ArraySpec, streamed: Mapping[str, tuple[int, ...]],
               small: Mapping[str, np.ndarray], provenance: Provenance) -> Iterator[Any]:
    """Write an npz of ``spec`` whose large keys arrive in chunks along axis 0 (bounded memory).

    ``streamed`` gives the full shape of each chunked key; the yielded writer's ``append(key, chunk)``
    deflates each chunk straight into the zip member. ``small`` holds the other keys, written whole.
    The file is a standard compressed npz (``np.load`` reads it); it appears atomically, and only if
    every streamed key received exactly its declared number of rows.
    """
    import zipfile

    declared = {**spec.keys, **spec.optional}
    missing = [k for k in spec.keys if k not in streamed and k not in small]
    extra = [k for k in [*streamed, *small] if k not in declared]
    if missing or extra:
        raise ArtifactError(path, f"{spec.name}: missing keys {missing}, unexpected {extra}")
    for k, shape in streamed.items():
        if len(shape) != declared[k][1]:
            raise ArtifactError(path, f"{spec.name}: key '{k}' has rank {len(shape)}, expected {declared[k][1]}")

    class _Writer:
        def __init__(self, zf):
            self.zf, self.rows, self.members = zf, {k: 0 for k in streamed}, {}

        def append(self, key: str, chunk: np.ndarray) -> None:
            dtype, _ = declared[key]
            chunk = np.ascontiguousarray(chunk, dtype=dtype)
            if chunk.shape[1:] != tuple(streamed[key][1:]):
                raise ArtifactError(path, f"{spec.name}: key '{key}' chunk shape {chunk.shape[1:]} != {streamed[key][1:]}")
            if self.rows[key] + len(chunk) > streamed[key][0]:
                raise ArtifactError(path, f"{spec.name}: key '{key}' got more than {streamed[key][0]} rows")
            if key not in self.members:
                if self.members:
                    raise ArtifactError(path, f"{spec.name}: stream keys one after another, not interleaved")
                self.members[key] = m = self.zf.open(f"{key}.npy", "w", force_zip64=True)
                np.lib.format.write_array_header_2_0(
                    m, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": tuple(streamed[key])})
            self.members[key].write(chunk.tobytes())
            self.rows[key] += len(chunk)
            if self.rows[key] == streamed[key][0]:
                self.members.pop(key).close()

    with atomic_output(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6, allowZip64=True) as zf:
            writer = _Writer(zf)
            try:
                yield writer
            finally:  # an open member must be closed before the zip (on errors too)
                for m in writer.members.values():
                    m.close()
                writer.members.clear()
            short = {k: (n, streamed[k][0]) for k, n in writer.rows.items() if n != streamed[k][0]}
            if short:
                raise ArtifactError(path, f"{spec.name}: rows written / declared {short}")
            for k, v in {**small, "__provenance__": np.array(provenance.to_json())}.items():
                a = np.asarray(v) if k == "__provenance__" else np.asarray(v).astype(declared[k][0], copy=False)
                if k != "__provenance__" and a.ndim != declared[k][1]:
                    raise ArtifactError(path, f"{spec.name}: key '{k}' has rank {a.ndim}, expected {declared[k][1]}")
                with zf.open(f"{k}.npy", "w", force_zip64=True) as m:
                    np.lib.format.write_array(m, a, allow_pickle=False)


def npz_iter_rows(path: Path | str, key: str, chunk: int = 64) -> Iterator[np.ndarray]:
    """Yield ``key`` of an npz in chunks of ``chunk`` rows along axis 0 without loading it whole."""
    import zipfile

    path = Path(path)
    _require_file(path)
    try:
        with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            if fortran or dtype.hasobject:
                raise ArtifactError(path, f"key '{key}': fortran-ordered or object arrays are not supported")
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            for start in range(0, shape[0], chunk):
                n = min(chunk, shape[0] - start)
                buf = f.read(n * row_bytes)
                if len(buf) != n * row_bytes:
                    raise ArtifactError(path, f"key '{key}': truncated at row {start}")
                yield np.frombuffer(buf, dtype).reshape((n, *shape[1:]))
    except (KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise ArtifactError(path, f"cannot stream key '{key}' ({exc})") from exc



@dataclass(frozen=True)
class NpySpec:
    """A raw ``.npy`` array read memory-mapped (bounded host RAM): fixed dtype and rank."""

    name: str
    dtype: str
    ndim: int

    @contextmanager
    def create(self, path: Path | str, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
        """Yield a writable memmap of ``shape`` on a temporary file; renamed into place if the block succeeds."""
        if len(shape) != self.ndim:
            raise ArtifactError(path, f"{self.name}: rank {len(shape)}, expected {self.ndim}")
        with atomic_output(path) as tmp:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=tuple(shape))
            yield arr
            arr.flush()
            del arr

    def read(self, path: Path | str, mmap: bool = True) -> np.ndarray:
        path = Path(path)
        _require_file(path)
        try:
            arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ArtifactError(path, f"not a readable .npy file ({exc})") from exc
        if arr.dtype != np.dtype(self.dtype) or arr.ndim != self.ndim:
            raise ArtifactError(path, f"{self.name}: {arr.dtype}[{arr.ndim}d], expected {self.dtype}[{self.ndim}d]")
        return arr
