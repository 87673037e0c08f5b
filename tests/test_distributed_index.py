"""Indexing spread over processes (zsdemo.store.distributed): 2 real CPU ranks under torchrun build the same
gallery as one process; a rank killed with SIGKILL leaves finished shards that the next run does not
re-encode; shards and resumption inside one process; memory-mapped serving keeps RSS bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_gallery import CountingEncoder, make_photos

from zsdemo.errors import CacheError
from zsdemo.store.build import build_gallery
from zsdemo.store.index import IndexConfig
from zsdemo.store.layout import RUN_PREFIX, read_generation
from zsdemo.store.runs import EncodeRun, default_shard_size

REPO = Path(__file__).resolve().parents[1]
ENV = {"PYTHONPATH": str(REPO), "ZSDEMO_MODEL": "zsdemo-tiny-vit", "ZSDEMO_PRETRAINED": "none",
       "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
ATOL = 1e-5  # fp32 on any x86 CPU: batch composition changes the summation order, nothing more


def index(*args: str, ranks: int = 1, cwd: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    """`python -m zsdemo index ARGS` on `ranks` processes; `kill` "RANK:N": that rank SIGKILLs itself after
    writing N shards (tests/kill_rank.py)."""
    program = [str(REPO / "tests" / "kill_rank.py"), kill] if kill else ["-m", "zsdemo"]
    if ranks == 1:
        command = [sys.executable, *program, "index", *args]
    else:  # torchrun, as a user would start it (accelerate launch --cpu starts only one process)
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                   "--master_port", str(29_500 + os.getpid() % 1000), *program, "index", *args]
    return subprocess.run(command, cwd=cwd, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=600)


def same_gallery(a: Path, b: Path) -> None:
    manifest_a, emb_a = read_generation(a)
    manifest_b, emb_b = read_generation(b)
    assert manifest_a["entries"] == manifest_b["entries"]  # names, paths, sizes, mtimes, thumbnails, order
    assert manifest_a["skipped"] == manifest_b["skipped"]
    assert manifest_a["fingerprint"] == manifest_b["fingerprint"]
    assert emb_a.shape == emb_b.shape
    np.testing.assert_allclose(emb_a, emb_b, rtol=0, atol=ATOL)


def encoded_photos(output: str) -> int:
    line = next(line for line in output.splitlines() if line.startswith("Encoding: "))
    return int(line.split()[1])


# ---- real processes --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_ranks_build_the_same_gallery_as_one(tmp_path):
    make_photos(tmp_path / "p", 21)  # odd: the ranks get unequal shares
    (tmp_path / "p" / "broken.jpg").write_bytes(b"not a photo")
    one = index("p", "--cache", "one", "--shard-size", "4", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two = index("p", "--cache", "two", "--shard-size", "4", ranks=2, cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    assert "21 photos indexed" in two.stdout and encoded_photos(two.stderr) == 21
    same_gallery(tmp_path / "one", tmp_path / "two")
    assert not list((tmp_path / "two").glob(f"{RUN_PREFIX}*")), "the run folder is removed once merged"

    # an update with nothing to encode, and a rank with no photos at all (3 photos = one shard)
    again = index("p", "--cache", "two", ranks=2, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "0 new, 21 reused" in again.stdout
    make_photos(tmp_path / "small", 3)
    tiny = index("small", "--cache", "small", ranks=2, cwd=tmp_path)
    assert tiny.returncode == 0, tiny.stderr
    assert len(read_generation(tmp_path / "small")[0]["entries"]) == 3


@pytest.mark.slow
def test_a_killed_rank_resumes_without_re_encoding_finished_shards(tmp_path):
    make_photos(tmp_path / "p", 24)
    killed = index("p", "--cache", "c", "--shard-size", "2", ranks=2, cwd=tmp_path, kill="1:2")
    assert killed.returncode != 0
    assert not (tmp_path / "c" / "CURRENT").exists(), "no generation from a killed run"
    [run_dir] = list((tmp_path / "c").glob(f"{RUN_PREFIX}*"))
    run = EncodeRun.load(run_dir)
    assert run.n_shards == 12
    finished = [i for i in range(run.n_shards) if run.is_done(i)]
    done_before = sum(len(run.read_shard(i)[0]) for i in finished)
    assert 2 <= len(finished) < 12 and sum(1 for i in finished if i % 2 == 1) == 2

    resumed = index("p", "--cache", "c", ranks=2, cwd=tmp_path)  # shard size comes from the run's plan
    assert resumed.returncode == 0, resumed.stderr
    assert "24 photos indexed" in resumed.stdout
    assert encoded_photos(resumed.stderr) == 24 - done_before, "finished shards were not encoded again"
    reference = index("p", "--cache", "ref", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    same_gallery(tmp_path / "c", tmp_path / "ref")


# ---- in one process ---------------------------------------------------------------------------------------
def test_shards_are_fixed_by_the_plan_and_split_round_robin(tmp_path, tiny_encoder):
    assert default_shard_size(10) == 16 and default_shard_size(64 * 100) == 100 and default_shard_size(10**7) == 1024
    make_photos(tmp_path / "p", 10)
    from zsdemo.store.plan import plan_update

    plan = plan_update([tmp_path / "p"], tmp_path / "c", tiny_encoder.fingerprint())
    (tmp_path / "c").mkdir()
    run = EncodeRun.prepare(tmp_path / "c", plan.encode, tiny_encoder.fingerprint(), 32, shard_size=3)
    assert run.n_shards == 4 and [len(run.shard_photos(i)) for i in range(4)] == [3, 3, 3, 1]
    assert run.todo(0, 2) == [0, 2] and run.todo(1, 2) == [1, 3]
    assert run.todo(4, 5) == [], "a rank beyond the shard count gets nothing"
    again = EncodeRun.prepare(tmp_path / "c", plan.encode, tiny_encoder.fingerprint(), 32, shard_size=7)
    assert again.dir == run.dir and again.shard_size == 3, "the same photos resume the same run"


def test_an_interrupted_first_build_keeps_its_shards_and_resumes(tmp_path, tiny_encoder, monkeypatch):
    make_photos(tmp_path / "p", 12)
    counting = CountingEncoder(tiny_encoder)
    real_write = EncodeRun.write_shard
    calls = []

    def write_then_interrupt(self, *args, **kwargs):
        real_write(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(EncodeRun, "write_shard", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        build_gallery([tmp_path / "p"], tmp_path / "c", counting, shard_size=4)
    monkeypatch.undo()
    assert (tmp_path / "c").is_dir(), "finished shards are kept for the next run"
    first = counting.encoded
    resumed = CountingEncoder(tiny_encoder)
    gallery, report = build_gallery([tmp_path / "p"], tmp_path / "c", resumed, shard_size=4)
    assert len(gallery) == 12 and report.added == 12
    assert resumed.encoded == 4 and first >= 8, "only the unfinished shard is encoded again"
    fresh, _ = build_gallery([tmp_path / "p"], tmp_path / "fresh", tiny_encoder)
    same_gallery(tmp_path / "c", tmp_path / "fresh")


def test_dataloader_encoding_equals_encode_photos(tmp_path, tiny_encoder):
    from zsdemo.store.distributed import DistributedRunner, Processes

    make_photos(tmp_path / "p", 9)
    (tmp_path / "p" / "bad.png").write_bytes(b"\x89PNG broken")
    procs = Processes(cpu=True)
    assert (procs.rank, procs.world) == (0, 1)
    for workers in (0, 1):
        runner = DistributedRunner(procs, workers=workers, batch_size=4, precision="auto")
        build_gallery([tmp_path / "p"], tmp_path / f"w{workers}", tiny_encoder, runner=runner, shard_size=3)
        assert runner.encoded == 9 and runner.photos_per_s > 0
        same_gallery(tmp_path / f"w{workers}", tmp_path / "w0")
    build_gallery([tmp_path / "p"], tmp_path / "local", tiny_encoder)
    same_gallery(tmp_path / "local", tmp_path / "w0")
    assert len(read_generation(tmp_path / "w1")[0]["skipped"]) == 1


def test_refused_builds_still_leave_nothing(tmp_path, tiny_encoder):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(CacheError, match="None of the 1 photo files"):
        build_gallery([tmp_path / "bad"], tmp_path / "c", tiny_encoder)
    assert not (tmp_path / "c").exists()


# ---- memory-mapped serving ---------------------------------------------------------------------------------
SERVE_SCRIPT = """
import json, sys
from pathlib import Path
def status():
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out
import numpy as np
from zsdemo.store.gallery import Gallery
from zsdemo.store.build import build_gallery
sys.path.insert(0, sys.argv[2])
from test_distributed_index import StubEncoder
before = status()
gallery = Gallery.open(Path(sys.argv[1]), StubEncoder())
opened = status()
rng = np.random.default_rng(0)
for _ in range(5):
    q = rng.standard_normal(StubEncoder.embed_dim).astype(np.float32)
    hits = gallery.search(q / np.linalg.norm(q), 10)
print(json.dumps({"before": before, "opened": opened, "queried": status(), "backend": gallery.backend,
                  "memmap": isinstance(gallery.embeddings, np.memmap), "hits": len(hits)}))
"""


class StubEncoder:
    embed_dim = 512

    def fingerprint(self) -> str:
        return "stub"

    def describe(self) -> dict:
        return {"model": "stub"}


@pytest.mark.slow
def test_serving_a_large_cache_does_not_load_its_embeddings_into_memory(tmp_path):
    from zsdemo.store.generation import write_generation
    from zsdemo.store.layout import PhotoEntry, cache_lock

    n, dim = 200_000, 512
    rng = np.random.default_rng(0)

    def chunks():
        for start in range(0, n, 20_000):
            x = rng.standard_normal((min(20_000, n - start), dim), dtype=np.float32)
            yield x / np.linalg.norm(x, axis=1, keepdims=True)

    entries = [PhotoEntry(f"img_{i:06d}.jpg", f"/photos/img_{i:06d}.jpg", 1000, 1, f"{i:020x}.jpg") for i in range(n)]
    cache = tmp_path / "big"
    (cache / "thumbs").mkdir(parents=True)
    with cache_lock(cache):
        write_generation(cache, entries, chunks(), [Path("/photos")], StubEncoder(),
                         IndexConfig(annoy_threshold=10**9), [])
    del entries
    out = subprocess.run([sys.executable, "-c", SERVE_SCRIPT, str(cache), str(Path(__file__).parent)],
                         env={**os.environ, **ENV}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    embedding_bytes = n * dim * 4  # 410 MB
    anon_growth = result["queried"]["RssAnon"] - result["before"]["RssAnon"]
    print(f"embeddings {embedding_bytes >> 20} MiB; anonymous RSS growth after open + 5 exact queries "
          f"{anon_growth >> 20} MiB (manifest entries); file-backed {result['queried']['RssFile'] >> 20} MiB")
    assert result["memmap"] and result["backend"] == "exact" and result["hits"] == 10
    # the process's own memory grows by the manifest's entries only: the embeddings stay in the (shared)
    # page cache, mapped, never copied
    assert anon_growth < 0.4 * embedding_bytes, result
