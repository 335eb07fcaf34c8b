"""Artifact contracts: atomic writes, validating readers, provenance, no pickles."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.core.artifacts import (ArraySpec, ArtifactError, JsonSpec, Provenance, TableSpec, atomic_output,
                                     fixed_list_column, read_provenance)
from pipeline.core.config import ConfigError, IngestConfig, from_mapping

PROV = Provenance(source_sha256="ab" * 32, config_hash="0123456789abcdef")
SPEC = TableSpec("test/table.parquet", pa.schema([
    ("frame_idx", pa.int32()),
    ("score", pa.float32()),
    ("points", pa.list_(pa.float32(), 6)),
]))


def test_table_roundtrip_with_fixed_lists_and_provenance(tmp_path):
    pts = np.arange(30, dtype=np.float32).reshape(5, 3, 2)
    path = tmp_path / "t.parquet"
    SPEC.write(path, {"frame_idx": np.arange(5), "score": np.linspace(0, 1, 5), "points": pts}, PROV)
    table = SPEC.read(path)
    assert table.schema.field("frame_idx").type == pa.int32()
    np.testing.assert_array_equal(fixed_list_column(table, "points", (3, 2)), pts)
    assert read_provenance(path) == PROV


def test_table_reader_names_file_and_column(tmp_path):
    other = TableSpec("x", pa.schema([("frame_idx", pa.int32()), ("score", pa.float64())]))
    path = tmp_path / "t.parquet"
    other.write(path, {"frame_idx": np.arange(3), "score": np.zeros(3)}, PROV)
    with pytest.raises(ArtifactError, match=r"t\.parquet.*column 'score' has type double"):
        SPEC.read(path)
    with pytest.raises(ArtifactError, match="missing columns"):
        SPEC.write(tmp_path / "bad.parquet", {"frame_idx": np.arange(3)}, PROV)
    assert not (tmp_path / "bad.parquet").exists()


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert list((tmp_path / "sub").iterdir()) == []


def test_npz_contract(tmp_path):
    spec = ArraySpec("test/arrays.npz", keys={"labels": ("uint8", 3)}, optional={"note": ("float32", 1)})
    path = tmp_path / "a.npz"
    spec.write(path, {"labels": np.ones((2, 4, 4))}, PROV)
    data = spec.read(path)
    assert data["labels"].dtype == np.uint8 and set(data) == {"labels"}
    with pytest.raises(ArtifactError, match="rank 2, expected 3"):
        spec.write(path, {"labels": np.ones((4, 4))}, PROV)
    obj = tmp_path / "obj.npz"
    np.savez(obj, labels=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ArtifactError, match="obj.npz"):
        spec.read(obj)  # object arrays need pickles: refused


def test_json_contract(tmp_path):
    spec = JsonSpec("test/doc.json", required={"n": int})
    path = tmp_path / "d.json"
    spec.write(path, {"n": 3}, PROV)
    assert spec.read(path)["provenance"]["config_hash"] == PROV.config_hash
    path.write_text('{"n": "three"}')
    with pytest.raises(ArtifactError, match="field 'n'"):
        spec.read(path)
    # optional fields: absent is fine (documents of older versions), present must have the type
    spec = JsonSpec("test/doc.json", required={"n": int}, optional={"peak": (float, type(None))})
    path.write_text('{"n": 3}')
    assert spec.read(path) == {"n": 3}
    spec.write(path, {"n": 3, "peak": None})
    path.write_text('{"n": 3, "peak": "high"}')
    with pytest.raises(ArtifactError, match="field 'peak'"):
        spec.read(path)


def test_config_rejects_unknown_keys():
    assert from_mapping(IngestConfig, '{"fps": 30}').fps == 30
    with pytest.raises(ConfigError, match="fsp"):
        from_mapping(IngestConfig, {"fsp": 30})
