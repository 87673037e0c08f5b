"""`python -m zsdemo export`: a gallery as Parquet, read back with pyarrow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from test_gallery import make_photos  # noqa: E402

from zsdemo.store.build import build_gallery  # noqa: E402
from zsdemo.store.export import export_parquet, stable_id  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_parquet_round_trip(tmp_path, tiny_encoder):
    make_photos(tmp_path / "a", 5)
    make_photos(tmp_path / "b" / "sub", 4, start=5)
    gallery, _ = build_gallery([tmp_path / "a", tmp_path / "b"], tmp_path / "c", tiny_encoder)
    out, rows = export_parquet(tmp_path / "c", tmp_path / "out" / "gallery.parquet", row_group=4)
    assert rows == 9 and out.is_file() and not list(out.parent.glob(".*.tmp"))
    table = pq.read_table(out)
    assert table.num_rows == 9 and pq.ParquetFile(out).num_row_groups == 3
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    data = table.to_pydict()
    assert data["name"] == [e.name for e in gallery.entries]
    assert data["path"] == [e.path for e in gallery.entries]
    assert data["row"] == list(range(9))
    assert set(data["source"]) == {str((tmp_path / "a").resolve()), str((tmp_path / "b").resolve())}
    assert all(Path(s, n).as_posix() == p for s, n, p in zip(data["source"], data["name"], data["path"], strict=True))
    assert data["id"] == [stable_id(p) for p in data["path"]] and len(set(data["id"])) == 9
    assert set(data["fingerprint"]) == {tiny_encoder.fingerprint()}
    matrix = np.asarray(table.column("embedding").combine_chunks().flatten()).reshape(9, 32)
    assert matrix.dtype == np.float32 and np.array_equal(matrix, np.asarray(gallery.embeddings))
    meta = json.loads(table.schema.metadata[b"zsdemo"])
    assert meta["fingerprint"] == tiny_encoder.fingerprint() and meta["dim"] == 32 and meta["metric"] == "angular"
    # the ids are stable across rebuilds (a re-export upserts the same rows)
    assert stable_id(data["path"][0]) == stable_id(str(data["path"][0]))


@pytest.mark.slow
def test_export_command(tmp_path, tiny_encoder):
    make_photos(tmp_path / "p", 3)
    build_gallery([tmp_path / "p"], tmp_path / "c", tiny_encoder)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "zsdemo", "export", "--cache", "c", "g.parquet"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Exported 3 photos" in out.stdout
    assert pq.read_table(tmp_path / "g.parquet").num_rows == 3
    missing = subprocess.run([sys.executable, "-m", "zsdemo", "export", "--cache", "nothing", "x.parquet"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "No gallery cache" in missing.stderr
