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
            want = np.dtype(dtype)  # "str": unicode of any length
            if a.ndim != ndim or (a.dtype.kind != "U" if want.kind == "U" else a.dtype != want):
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

# --- crop --------------------------------------------------------------------------------
# One row per *sampled* frame (every crop.detect_every-th frame of ingest/video.mp4). The box is
# the best-scoring face (BlazeFace short range) in source pixels; NaN and score 0 when n_faces == 0.
CROP_BOXES = TableSpec(
    "crop/boxes.parquet",
    pa.schema([
        ("frame_idx", pa.int32()),
        ("n_faces", pa.int32()),         # faces found on this frame (>= 2: a second person)
        ("score", pa.float32()),         # detection score of the best face, 0 if none
        ("x0_px", pa.float32()),         # face box: left, top, width, height in source pixels
        ("y0_px", pa.float32()),
        ("w_px", pa.float32()),
        ("h_px", pa.float32()),
    ]),
)

CROP_META = JsonSpec(
    "crop/crop.json",
    required={
        "source_size": list,             # [width, height] of ingest/video.mp4
        "window": list,                  # [x0, y0, side] square crop window in source px (may leave the image)
        "padding": dict,                 # {"left","top","right","bottom"}: source px outside the image, border-replicated
        "valid_box": list,               # [x0, y0, x1, y1) in output px: the part showing real image (not padding)
        "size": int,                     # output width = height (crop.size)
        "scale": (int, float),           # output px per source px (size / side)
        "face_box": list,                # median face box [x0, y0, w, h] in source px
        "face_fraction": (int, float),   # achieved face box width / window side
        "fps": int,
        "n_frames": int,                 # frames of crop/video.mp4 (= ingest n_frames)
        "detect_every": int,
        "n_sampled": int,                # rows of boxes.parquet
    },
)

# --- parsing -----------------------------------------------------------------------------
# Label values of parsing/labels.npz (DESIGN.md §4); PARSING_LABEL_NAMES[i] names value i.
LABEL_BACKGROUND, LABEL_TORSO, LABEL_NECK, LABEL_FACE, LABEL_HAIR, LABEL_LIPS, LABEL_MOUTH, LABEL_EYES = range(8)
PARSING_LABEL_NAMES = ("background", "torso", "neck", "face", "hair", "lips", "mouth", "eyes")
PARSING_LABELS = ArraySpec(
    "parsing/labels.npz",
    keys={"labels": ("uint8", 3),        # [N, H, W] at crop size, values LABEL_*
          "frame_idx": ("int32", 1)},    # [N] = 0..N-1, rows of landmarks.parquet / frames of crop/video.mp4
)
PARSING_TORSO = ArraySpec(
    "parsing/torso.npz",
    keys={"alpha": ("uint8", 3),         # [N, H, W] soft torso+neck matte, head removed (0 on labels 3-7)
          "frame_idx": ("int32", 1)},    # RGBA torso image of frame i = crop frame i (RGB) + alpha[i]
)
# parsing/background.png: RGB uint8 [H, W] at crop size (temporal median of background, holes inpainted).
# parsing/contact_sheet.png: a grid of frames with colour-coded label overlays (for people, not code).
PARSING_STATS = JsonSpec(
    "parsing/stats.json",
    required={
        "n_frames": int, "size": int,
        "segmenter_model": str, "segmenter_sha256": str,
        "landmark_filled_frames": int,     # frames without landmarks that took the nearest frame's mesh
        "label_fraction_mean": dict,       # label name -> mean fraction of the crop over frames
        "label_missing_frames": dict,      # label name -> frames where the label is absent
        "flicker_mean": (int, float),      # mean fraction of pixels changing label between consecutive frames
        "flicker_max": (int, float),
        "plate_mae_255": (int, float),     # mean |frame - plate| on label-0 pixels of the sampled frames (0-255)
        "plate_unseen_fraction": (int, float),  # plate pixels never background (inpainted)
        "frames_per_sec": (int, float),    # wall clock, decode to last label map (plate and sheet excluded)
        "frames_per_cpu_sec": (int, float),  # the same frames over the process's CPU time (all threads)
    },
)


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


# --- landmarks ---------------------------------------------------------------------------
N_LANDMARKS = 478       # mediapipe FaceLandmarker mesh (468 + 10 iris points)
N_BLENDSHAPES = 52
# Column order of LANDMARKS.blendshapes: the FaceLandmarker's output order (checked at run time).
BLENDSHAPE_NAMES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft",
    "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft",
    "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft",
    "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)
assert len(BLENDSHAPE_NAMES) == N_BLENDSHAPES
LANDMARKS = TableSpec(
    "landmarks/landmarks.parquet",
    pa.schema([
        ("frame_idx", pa.int32()),
        ("detected", pa.bool_()),        # the landmarker found the face on this frame
        ("interpolated", pa.bool_()),    # filled in from neighbours (gap <= max_gap frames)
        # 478 x (x, y, z): x, y in crop pixels; z in the same pixel scale (mediapipe's relative depth)
        ("landmarks", pa.list_(pa.float32(), N_LANDMARKS * 3)),
        ("blendshapes", pa.list_(pa.float32(), N_BLENDSHAPES)),  # scores in [0, 1], mediapipe's order
        ("pose", pa.list_(pa.float32(), 16)),  # 4x4 facial transformation matrix, row-major
    ]),
)

# --- tracking ----------------------------------------------------------------------------
# Head space = the face model's canonical space = mediapipe's canonical face mesh frame: x to the
# image right of a frontal face, y up, z out of the face towards the camera; unit: centimetres.
N_EXPR = 32             # expression coefficients per frame (unit prior variance each)
TRACKS = TableSpec(
    "tracking/tracks.parquet",
    pa.schema([
        ("frame_idx", pa.int32()),
        ("rotvec", pa.list_(pa.float32(), 3)),  # head rotation R, axis-angle (rad), head space: X_gl = R X + t_gl
        ("yaw_rad", pa.float32()),       # R = Ry(yaw) Rx(pitch) Rz(roll) (intrinsic Y-X-Z); 0 = facing the camera
        ("pitch_rad", pa.float32()),
        ("roll_rad", pa.float32()),
        ("tx", pa.float32()),            # head origin in OpenCV camera coordinates (x right, y down, z forward), cm
        ("ty", pa.float32()),
        ("tz", pa.float32()),
        ("expression", pa.list_(pa.float32(), N_EXPR)),
        ("reproj_err_px", pa.float32()),  # mean 2D distance fitted vs detected landmarks, crop px
        ("weight", pa.float32()),        # data weight: 1 detected, tracking.interpolated_weight, 0 missing
    ]),
)
FACE_MODEL = ArraySpec(
    "tracking/face_model.npz",
    keys={
        "mean": ("float32", 2),          # [478, 3] cm: canonical mesh (iris points: the clip's mean)
        "identity": ("float32", 2),      # [478, 3] cm: subject offset; neutral-ish shape = mean + identity
        "basis": ("float32", 3),         # [478, 3, N_EXPR] cm per unit coefficient
        "landmark_ids": ("int32", 1),    # [478] mediapipe landmark index of each model point
        "triangles": ("int32", 2),       # [T, 3] canonical mesh triangles (indices < 468)
        "focal_px": ("float32", 0),      # shared focal length, crop px
        "cx": ("float32", 0),            # principal point (crop centre), px
        "cy": ("float32", 0),
        "w": ("int32", 0),               # crop size, px
        "h": ("int32", 0),
    },
)
CANONICAL_LANDMARKS = ArraySpec(
    "tracking/canonical.npz",
    keys={
        "frame_idx": ("int32", 1),       # [N]
        "landmarks": ("float32", 3),     # [N, 478, 3] pose-free fitted shapes mean + identity + basis @ e, cm, head space
    },
)
TRANSFORMS = JsonSpec(
    "tracking/transforms.json",
    required={
        "focal_px": float, "cx": float, "cy": float, "w": int, "h": int,
        "convention": str,               # "camera_to_head, OpenGL (x right, y up, camera looks down -z), cm"
        "frames": list,                  # [{"frame_idx": i, "transform_matrix": 4x4 camera-to-head}]
        "split": dict,                   # ingest/meta.json split: {"train": [a, b), "test": [b, n)}
    },
)
TRACKING_METRICS = JsonSpec(
    "tracking/metrics.json",
    required={
        "n_frames": int, "focal_px": float, "reproj_mean_px": float, "reproj_p95_px": float,
        "jitter_rot_deg": float, "jitter_trans_rel": float,            # RMS 2nd difference, fitted track
        "jitter_rot_deg_init": float, "jitter_trans_rel_init": float,  # same for the per-frame closed form
        "fit_seconds": float,
    },
)

# --- action units (pipeline/action_units.py: mappings, fit and normalisation in its docstring) ------
AUS = TableSpec(
    "aus/aus.parquet",
    pa.schema([
        ("frame_idx", pa.int32()),
        # OpenFace-style intensities, per-subject normalised to [0, 5], finite on every frame
        ("au01_r", pa.float32()), ("au02_r", pa.float32()), ("au04_r", pa.float32()),
        ("au12_r", pa.float32()), ("au15_r", pa.float32()), ("au20_r", pa.float32()),
        ("au25_r", pa.float32()), ("au26_r", pa.float32()), ("au45_r", pa.float32()),
        # raw pose-free geometric signals (tracking/canonical.npz)
        ("ear", pa.float32()),           # eye aspect ratio, mean of both eyes (lid / corner distance)
        ("lip_gap", pa.float32()),       # inner-lip distance 13-14 / subject's median face height 10-152
        ("jaw_drop", pa.float32()),      # nose tip 1 - chin 152 distance / the same face height
        ("filled", pa.bool_()),          # no landmarks on this frame: blendshapes interpolated in time
    ]),
)
AUS_STATS = JsonSpec(
    "aus/aus.json",
    required={
        "n_frames": int, "fps": (int, float), "duration_sec": (int, float),
        "filled_frames": int,            # rows of aus.parquet with filled = true
        "geometry_source": str,          # "landmarks" | "canonical": the points the geometric signals come from
        "canonical_ear_r": (float, type(None)),  # corr. of the EAR of canonical.npz vs the landmarks' (None: not given)
        "blink_threshold": (int, float),
        "blink_count": int,              # AU45 excursions above blink_threshold (action_units.detect_blinks)
        "blinks_per_minute": (int, float),
        "blink_frames": list,            # frame_idx of each blink's AU45 peak
        "normalisation": dict,           # au -> {"low", "high", "span"}: signal values mapped to 0 and high_value
        "geometry_fit": dict,            # au -> {"geometry", "r", "slope", "intercept", "weight"} (AU25, AU26, AU45)
        "config": dict,                  # the action_units config used
    },
)

# --- audio features (audio/<clip>.npz + audio/<clip>.parquet; <clip> = "self" for the subject's own audio)
AUDIO_FEATURES = ArraySpec(
    "audio/<clip>.npz",
    keys={
        "features": ("float32", 3),     # [N, window=16, D]: feature frames 2i-8 .. 2i+7 of video frame i, finite
        "frame_idx": ("int32", 1),      # [N] video frames 0..N-1 (own audio: N = ingest n_frames)
        "columns": ("str", 1),          # [D] names: mel_00..mel_79, f1_hz..f3_hz, log_b1..log_b3, log_f0, voiced, rms_db
        "valid": ("bool", 2),           # [N, window] False where the window reaches past the clip (zero-padded)
        "pad_start": ("int32", 0),      # zero feature frames before the clip's first feature frame (window/2)
        "pad_end": ("int32", 0),        # zero feature frames after its last one
        "feat_mean": ("float32", 1),    # [D] per-clip normalisation applied: features = (raw - mean) / std
        "feat_std": ("float32", 1),     # [D] (0 and 1 when audio.normalize is "none")
        "fps": ("int32", 0),            # video frame rate the windows are aligned to (25)
    },
    optional={
        "encoder": ("float32", 3),      # [N, 2, H]: learned-encoder frames 2i, 2i+1 (50 Hz) of video frame i
        "encoder_name": ("str", 0),     # "speech_embedding" (H=96) | "hubert" | "wav2vec2" (H = hidden size)
    },
)
AUDIO_FRAMES = TableSpec(
    "audio/<clip>.parquet",
    pa.schema([
        ("frame_idx", pa.int32()),
        ("t_sec", pa.float64()),        # frame_idx / fps: the analysis instant of the frame
        ("rms", pa.float32()),          # RMS amplitude over 25 ms (full scale = 1)
        ("f0_hz", pa.float32()),        # Praat pitch; NaN when unvoiced
        ("voiced", pa.bool_()),
        ("f1_hz", pa.float32()),        # Praat Burg formants / bandwidths: NaN when unvoiced (or none found)
        ("f2_hz", pa.float32()),
        ("f3_hz", pa.float32()),
        ("b1_hz", pa.float32()),
        ("b2_hz", pa.float32()),
        ("b3_hz", pa.float32()),
    ]),
)

# --- stage 1: audio -> landmarks ----------------------------------------------------------
# stage1/model.pt: torch state_dict of pipeline.stage1.model.Audio2Landmarks (weights only);
# stage1/model.json: the constructor arguments and the stage-1 config it was trained with.
STAGE1_BASIS = ArraySpec(
    "stage1/basis.npz",
    keys={
        "mean": ("float32", 2),          # [478, 3] cm: the subject's mean canonical shape (train split)
        "components": ("float32", 2),    # [K, 478*3] orthonormal PCA directions of the offsets
        "scale": ("float32", 1),         # [K] coefficient std (the network predicts whitened coefficients)
    },
)
STAGE1_MODEL = JsonSpec(
    "stage1/model.json",
    required={"in_dim": int, "out_dim": int, "window": int, "d_model": int, "n_layers": int, "n_heads": int,
              "use_encoder": bool, "config": dict},
)
STAGE1_PRED = TableSpec(
    "stage1/pred/<clip>.parquet",
    pa.schema([
        ("frame_idx", pa.int32()),
        ("t_sec", pa.float64()),
        # predicted pose-free landmarks, head space (cm), 478 x (x, y, z) as tracking/canonical.npz
        ("landmarks", pa.list_(pa.float32(), N_LANDMARKS * 3)),
        ("mouth_open", pa.float32()),    # inner-lip distance / face height of the prediction
    ]),
)
STAGE1_METRICS = JsonSpec(
    "stage1/metrics.json",
    required={
        "test_frames": int,
        "lmd_px": float,                 # test-split mouth LMD, px at 512² (lips, per-frame mean removed)
        "lmd_px_mean_shape": float,      # baseline (a): the subject's mean mouth
        "lmd_px_linear": float,          # baseline (b): ridge regression from the same audio windows
        "mouth_corr": float,             # Pearson r of predicted vs tracked mouth opening (test split)
        "smoothing_lag_frames": int,     # lag of the post-smoothing (best cross-correlation), 0 = none
        "best_step": int, "curve": list, "train_seconds": float,
    },
)


# --- stage 2: head NeRF (pipeline/stage2/cache.py, train.py; docs/stage2.md) ---------------
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


# cache_frames: the crop video and the label maps at stage2.image_size, decoded once on the CPU side so
# the GPU job needs no ffmpeg; frame i = crop frame i = row i of parsing/labels.npz.
STAGE2_FRAMES = NpySpec("stage2/frames.npy", "uint8", 4)   # [N, S, S, 3] RGB
STAGE2_LABELS = NpySpec("stage2/labels.npy", "uint8", 3)   # [N, S, S] LABEL_* values (nearest-neighbour resize)
STAGE2_CACHE = JsonSpec(
    "stage2/cache.json",
    required={"n_frames": int, "size": int,          # S
              "crop_size": int,                       # crop/video.mp4 side the cache was resized from
              "video_sha256": str, "labels_sha256": str},
)
# stage2/head.pt: torch state dict of pipeline.stage2.field.LandmarkField (weights only, loads with
# torch.load(weights_only=True)), head-space normalised coordinates.
STAGE2_HEAD = JsonSpec(
    "stage2/head.json",
    required={
        "model_config": dict,            # Stage2ModelConfig fields
        "train_config": dict,            # Stage2TrainConfig fields
        "audio_in_dim": int,             # D of audio/self.npz features (field constructor argument)
        "head_space": dict,              # {"center_cm": [3], "scale_per_cm", "radius_cm", "bound"}: x_n = (x_cm - c) s
        "occupancy": dict,               # {"resolution", "occupied_fraction"}
        "camera": dict,                  # {"focal_px", "cx", "cy", "size"} at the training image size
        "au45_source": str,              # "aus/aus.parquet" | "landmarks blendshapes (fallback)"
        "steps": int,
    },
)
# stage2/checkpoint.pt (torch.load(weights_only=True)): {"step", "model", "optimizer", "scheduler", "occupancy",
# "error_maps" [N, G, G], "rng_torch", "rng_cuda", "rng_sampler" (torch.Generator state), "rng_numpy" (PCG64
# state as int64 words), "curve" [K, 4], "wall_seconds", "config_hash"} - written atomically every
# stage2.checkpoint_every steps and on SIGTERM; deleted-never (a re-run resumes from it).
STAGE2_METRICS = JsonSpec(
    "stage2/metrics.json",
    required={
        "steps": int, "train_seconds": (int, float), "steps_per_sec": (int, float), "device": str,
        "resumed_from": (int, type(None)),   # step of the checkpoint this run resumed from (None: fresh)
        "curve": list,                   # [{"step", "loss", "psnr", "seconds"}] train batches (PSNR of colour rays)
        "eval_curve": list,              # [{"step", "seconds", "psnr_head", "ssim_head"}] test split during training
        "test_frames": int,
        "psnr_head": float, "ssim_head": float,   # test split, over the head mask (labels 3-7), render over the plate
        "psnr_head_baseline": float,     # the background plate alone over the same pixels
        "lpips": (str, float),           # "unavailable: ..." (no backbone weights locally)
    },
)

# --- torso (pipeline/torso.py) --------------------------------------------------------------
# torso/torso.pt: torch state_dict of pipeline.torso.TorsoNet (weights only; the train-split mean torso
# RGBA it refines is a buffer of the net); torso/torso.json: its constructor arguments + pose normalisation.
TORSO_POSE_COLUMNS = ("yaw_rad", "pitch_rad", "roll_rad", "tx", "ty", "tz")  # tracks.parquet columns, in order
TORSO_MODEL = JsonSpec(
    "torso/torso.json",
    required={
        "image_size": int,               # network resolution (square)
        "crop_size": int,                # crop/video.mp4 size the RGBA is upsampled to
        "base_channels": int, "depth": int, "style_dim": int, "flow_scale": (int, float),
        "pose_columns": list,            # TORSO_POSE_COLUMNS
        "pose_mean": list,               # train-split mean / std of the pose columns (the net sees z-scores)
        "pose_std": list,
        "config": dict,                  # the torso config it was trained with
    },
)
TORSO_METRICS = JsonSpec(
    "torso/metrics.json",
    required={
        "test_frames": int, "eval_size": int,
        "psnr_torso_db": float,          # test split, torso composited over parsing/background.png vs the
                                         # tracked torso over the plate, on the dilated true torso+neck mask
        "psnr_torso_mean_db": float,     # the same for the baseline: train-split mean torso RGBA (no pose)
        "alpha_iou": float,              # mean IoU of alpha > 0.5 vs the true matte (test split)
        "alpha_iou_mean": float,         # the same for the mean torso
        "steps": int, "train_seconds": float, "device": str,
    },
)

# --- render (pipeline/render.py) ------------------------------------------------------------
# video.mp4 (test split re-synthesised from its own audio) and drive/<clip>.mp4 (any driving wav):
# H.264 yuv420p, 25 fps, render.size (crop size by default), AAC audio of exactly the rendered span.
# Frames rendered where ffmpeg is absent (GPU machines) go to an npz first, muxed later on the CPU side:
RENDER_FRAMES = ArraySpec(
    "<video>.frames.npz",
    keys={
        "frames": ("uint8", 4),          # [N, H, W, 3] RGB
        "fps": ("int32", 0),
        "audio_start_sec": ("float64", 0),  # the audio span the frames belong to, in the audio file's time
        "audio_end_sec": ("float64", 0),
    },
)
RENDER_STATS = JsonSpec(
    "<video>.json",
    required={
        "n_frames": int, "fps": int, "size": int, "audio": str,
        "audio_start_sec": (int, float), "audio_end_sec": (int, float),
        "head": str,                     # "stage2/head.pt" or "untrained" (random weights: tests only)
        "compositing": str,              # "soft" | "hard"
        "num_samples": int,              # head samples per ray
        "frames_per_sec": (int, float),  # synthesis speed (head + torso + compositing), wall clock
        "device": str,
        "seam_jump": (float, type(None)),  # mean colour step (0-1) across the neck seam band; None: no seam seen
    },
)

# --- evaluate (pipeline/evaluate.py) ---------------------------------------------------------
# eval/frames.parquet: one row per test-split frame of the render vs the ground truth (render size).
EVAL_FRAMES = TableSpec(
    "eval/frames.parquet",
    pa.schema([
        ("frame_idx", pa.int32()),       # frame of the clip (test split: meta.json split.test)
        ("psnr_db", pa.float64()),       # full frame; inf for identical frames
        ("psnr_head_db", pa.float64()),  # ground-truth head region (labels 3-7); NaN if the frame has none
        ("ssim", pa.float64()),
        ("ssim_head", pa.float64()),
        ("lpips", pa.float64()),         # NaN when LPIPS is unavailable (metrics.json says why)
        ("lmd_mesh_px", pa.float64()),   # mediapipe lip points, centroid removed; NaN: no face found in the render
        ("lmd_dlib_px", pa.float64()),   # dlib 68-point mouth (48-67), centroid removed
        ("mouth_open_gt", pa.float64()), # inner-lip gap / face height (pipeline.metrics.mouth_opening)
        ("mouth_open_render", pa.float64()),
        ("au45_gt", pa.float64()),       # AU45 on the subject's scale (aus.json fit), both from mediapipe
        ("au45_render", pa.float64()),
        ("speech_db", pa.float64()),     # 300-3000 Hz energy of the render's audio (pipeline.metrics.band_envelope)
        ("render_face", pa.bool_()),     # mediapipe found the face in the rendered frame
    ]),
)
# eval/metrics.json: null (None) marks a metric that is not available, with the reason alongside.
EVAL_METRICS = JsonSpec(
    "eval/metrics.json",
    required={
        "subject": str, "video": str, "test_frames": int, "test_range": list, "size": int, "crop_size": int,
        "psnr_db": (float, type(None)),        # mean of per-frame PSNR over frames that differ (None: all identical)
        "psnr_head_db": (float, type(None)),
        "identical_frames": int,               # frames with PSNR inf (left out of the means)
        "ssim": (float, type(None)), "ssim_head": (float, type(None)),
        "lpips": (float, type(None)), "lpips_note": str,   # None + why when backbone weights are not local
        "lmd_mesh_px": (float, type(None)),    # px at the render size; None: mediapipe found no face in the render
        "lmd_mesh_frames": int, "render_face_frames": int,
        "lmd_dlib_px": (float, type(None)),
        "dlib": dict,                          # {gt_detected, render_detected, gt_borrowed_boxes, render_borrowed_boxes, predictor}
        "blink": dict,                         # {gt_count, render_count, count_error, au45_mae, au45_r, gt_frames, render_frames}
        "sync_offset_frames": (int, type(None)),      # render vs its audio (> 0: audio late); None: not measurable
        "sync_offset_gt_frames": (int, type(None)),   # the ground truth vs the same audio
        "sync_offset_vs_gt_frames": (int, type(None)),
        "sync": dict,                          # {"render", "gt"}: pipeline.metrics.sync_offset results (curve, reason)
        "render_fps": (float, type(None)),     # video.json frames_per_sec (None: no video.json)
        "render_device": (str, type(None)),
        "train_seconds": (float, type(None)),  # stage 1 + stage 2 + torso (None: one is missing)
        "train_seconds_parts": dict,
        "config": dict,
    },
)

# --- export (pipeline/export.py, docs/export.md) --------------------------------------------
# export/ernerf/: the ER-NeRF / TalkingGaussian dataset folder (their format, documented in docs/export.md:
# ori_imgs/<i>.{jpg,lms}, gt_imgs/<i>.jpg, parsing/<i>.png, torso_imgs/<i>.png, bc.jpg,
# transforms_{train,val}.json, au.csv, aud.wav, aud_ours.npy [+ aud_hu.npy]). Its stats sit beside it
# (ER-NeRF globs *.json inside the folder):
EXPORT_ERNERF_STATS = JsonSpec(
    "export/ernerf.json",
    required={
        "n_frames": int, "train_frames": int, "val_frames": int,   # val = the last n - int(n * 10 / 11)
        "size": list, "fps": int, "focal_len": float,
        "scale": float,                  # exported units per head-space cm (0.01: metres)
        "centre_cm": list,               # head-space point that became the world origin
        "camera_distance_mean": float,   # mean |camera position| in exported units
        "lms_filled_frames": int,        # frames without landmarks (nearest frame's copied)
        "lms_clipped_points": int,       # 68-pt points moved inside the image
        "frames_not_detected": int,      # au.csv rows with success 0
        "audio_files": list, "au_columns": list,
        "files": dict,                   # folder -> number of files
        "seconds": float, "frames_per_sec": float, "config": dict,
    },
)
