"""A gallery cache as Parquet, for the tools users scale to past one machine (vector databases such as
LanceDB, Milvus, Qdrant or pgvector; dataframe engines such as DuckDB, Polars, Spark).

One row per photo: `id` (a stable 63-bit integer from the photo's absolute path, so re-exports upsert the
same ids), `row` (its row in this generation), `name` (path relative to its source folder), `source`
(that folder), `path` (absolute), `embedding` (fixed-size list of float32, L2-normalised: cosine similarity
is the dot product), `fingerprint` (the model, weights and prompts that made it: only compare embeddings
with equal fingerprints). The file's schema metadata holds the manifest's model description.
Written in row groups streamed from the memory-mapped embeddings, so exporting a million photos holds
one row group in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path

from zsdemo.errors import ZsdemoError
from zsdemo.store.layout import read_generation

log = logging.getLogger(__name__)

ROW_GROUP = 65_536


def stable_id(path: str) -> int:
    """A 63-bit id for a photo path (non-negative, fits int64 columns of every vector database)."""
    return int.from_bytes(hashlib.sha1(path.encode()).digest()[:8], "big") >> 1


def _source_of(path: str, name: str, sources: list[str]) -> str:
    if path.endswith("/" + name):
        return path[: -len(name) - 1]
    return next((s for s in sources if path.startswith(s.rstrip("/") + "/")), "")


def export_parquet(cache_dir: Path, out: Path, row_group: int = ROW_GROUP) -> tuple[Path, int]:
    """Write the live generation of `cache_dir` to `out` (written to a temporary name, then renamed)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ZsdemoError("Exporting needs pyarrow: pip install pyarrow") from None
    manifest, embeddings = read_generation(Path(cache_dir))
    dim = int(manifest["dim"])
    entries = manifest["entries"]
    schema = pa.schema([
        ("id", pa.int64()), ("row", pa.int64()), ("name", pa.string()), ("source", pa.string()),
        ("path", pa.string()), ("embedding", pa.list_(pa.float32(), dim)), ("fingerprint", pa.string()),
    ], metadata={"zsdemo": json.dumps({k: manifest[k] for k in ("fingerprint", "encoder", "dim", "metric", "built",
                                                                "sources", "generation")})})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:6]}.tmp")
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for start in range(0, len(entries), row_group):
                part = entries[start:start + row_group]
                matrix = embeddings[start:start + len(part)]
                flat = pa.array(matrix.reshape(-1), type=pa.float32())
                writer.write_table(pa.table({
                    "id": pa.array([stable_id(e["path"]) for e in part], pa.int64()),
                    "row": pa.array(range(start, start + len(part)), pa.int64()),
                    "name": [e["name"] for e in part],
                    "source": [_source_of(e["path"], e["name"], manifest["sources"]) for e in part],
                    "path": [e["path"] for e in part],
                    "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
                    "fingerprint": pa.array([manifest["fingerprint"]] * len(part), pa.string()),
                }, schema=schema))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported %d photos to %s", len(entries), out)
    return out, len(entries)
