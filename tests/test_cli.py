"""`python -m zsdemo` end to end, in subprocesses, with the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import draw_sketch

pytestmark = pytest.mark.slow  # one subprocess (torch import) per command

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "ZSDEMO_MODEL": "zsdemo-tiny-vit", "ZSDEMO_PRETRAINED": "none",
           "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "zsdemo", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    work = tmp_path_factory.mktemp("cli")
    result = run("index", "--cache", "gc/default", cwd=work)
    assert result.returncode == 0, result.stderr
    return work, result


def test_index_builds_the_starter_gallery(indexed):
    work, result = indexed
    assert "photos indexed" in result.stdout and "new" in result.stdout
    assert (work / "gc" / "starter_photos" / "lion.jpg").is_file()
    assert (work / "gc" / "default" / "CURRENT").is_file()


def test_photo_query_finds_itself_first(indexed):
    work, _ = indexed
    result = run("search", "gc/starter_photos/tower.jpg", "--cache", "gc/default", "--query-type", "photo",
                 "-k", "3", "--json", cwd=work)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["results"]
    assert len(rows) == 3 and rows[0]["name"] == "tower.jpg"
    assert rows[0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_sketch_query_prints_a_ranking(indexed):
    work, _ = indexed
    draw_sketch(300, "circle").save(work / "sketch.png")
    result = run("search", "sketch.png", "--cache", "gc/default", "-k", "5", cwd=work)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 5
    scores = [float(line.split()[1]) for line in lines]
    assert scores == sorted(scores, reverse=True)


def test_info_up_to_date_then_stale(indexed, tmp_path):
    work, _ = indexed
    result = run("info", "--cache", "gc/default", cwd=work)
    assert result.returncode == 0 and "up to date" in result.stdout and "zsdemo-tiny-vit" in result.stdout
    other = run("info", "--cache", "gc/default", "--json", cwd=work, env_extra={"ZSDEMO_PRETRAINED": "none"})
    assert json.loads(other.stdout)["stale"] is False
    stale = run("info", "--cache", "gc/default", "--model", "ViT-B-32-quickgelu", cwd=work)
    assert "STALE" in stale.stdout


def test_bad_inputs_give_one_line_errors(indexed, tmp_path):
    work, _ = indexed
    (work / "notes.txt").write_text("hello")
    bad_query = run("search", "notes.txt", "--cache", "gc/default", cwd=work)
    assert bad_query.returncode == 2 and "not a readable image" in bad_query.stderr
    assert "Traceback" not in bad_query.stderr
    missing = run("search", "sketch.png", "--cache", "nowhere", cwd=work)
    assert missing.returncode == 2 and "No gallery cache" in missing.stderr
    blank = work / "blank.png"
    from PIL import Image

    Image.new("RGB", (200, 200), "white").save(blank)
    empty = run("search", "blank.png", "--cache", "gc/default", cwd=work)
    assert empty.returncode == 2 and "empty" in empty.stderr


def test_missing_weights_message_without_traceback(tmp_path):
    result = run("index", "--cache", "c", "--model", "ViT-B-32-quickgelu", "--pretrained", "openai", cwd=tmp_path,
                 env_extra={"HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 2
    assert "--pretrained /path/to/open_clip_model.safetensors" in result.stderr
    assert "`hf download timm/" in result.stderr and "huggingface-cli" not in result.stderr
    assert "Traceback" not in result.stderr
    wrong = run("index", "--cache", "c", "--pretrained", str(tmp_path / "nope.safetensors"), cwd=tmp_path)
    assert wrong.returncode == 2 and "not found" in wrong.stderr


def test_local_weights_file_is_loaded(tmp_path):
    """A user's downloaded weights: a safetensors file of the same architecture."""
    from safetensors.torch import save_file

    from zsdemo.model.encoder import create_clip

    model = create_clip("zsdemo-tiny-vit", "none")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    (tmp_path / "p").mkdir()
    draw_sketch(100).save(tmp_path / "p" / "x.png")
    result = run("index", "p", "--cache", "c", "--pretrained", str(tmp_path / "w.safetensors"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "RANDOM WEIGHTS" not in result.stderr
    # no flag and no environment: the cache's own model and weights (flag > environment > manifest)
    info = json.loads(run("info", "--cache", "c", "--json", cwd=tmp_path, env_extra={"ZSDEMO_PRETRAINED": ""}).stdout)
    assert info["encoder"]["pretrained"].endswith("w.safetensors") and info["stale"] is False


def _photos(folder: Path, n: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (64, 48), (40 * i % 255, 90, 200 - 10 * i)).save(folder / f"mine_{i}.png")
    return folder


def _names(work: Path, cache: str) -> set[str]:
    from zsdemo.store.layout import read_generation

    manifest, _ = read_generation(work / cache)
    return {e["name"] for e in manifest["entries"]}


def test_index_without_folders_keeps_the_users_gallery(tmp_path):
    _photos(tmp_path / "mine", 3)
    assert run("index", "mine", "--cache", "c", cwd=tmp_path).returncode == 0
    # the cache goes stale (other weights); `index` with no folders re-encodes the user's photos
    from safetensors.torch import save_file

    from zsdemo.model.encoder import create_clip

    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in create_clip("zsdemo-tiny-vit", "none").state_dict().items()}, str(weights))
    stale = run("info", "--cache", "c", "--pretrained", str(weights), cwd=tmp_path)
    assert "STALE" in stale.stdout and f"python -m zsdemo index --cache c --pretrained {weights}" in stale.stdout
    again = run("index", "--cache", "c", "--pretrained", str(weights), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "from the folders it records" in again.stderr
    assert _names(tmp_path, "c") == {"mine_0.png", "mine_1.png", "mine_2.png"}
    assert not (tmp_path / "starter_photos").exists()


def test_a_second_builder_waits_for_the_lock(tmp_path):
    """A real second process on a cache being built: it says it waits, waits, then finishes cleanly."""
    import time

    from zsdemo.store.layout import cache_lock

    _photos(tmp_path / "mine", 4)
    assert run("index", "mine", "--cache", "c", cwd=tmp_path).returncode == 0
    _photos(tmp_path / "mine", 6)
    env = {**os.environ, "PYTHONPATH": str(REPO), "ZSDEMO_MODEL": "zsdemo-tiny-vit", "ZSDEMO_PRETRAINED": "none"}
    log = tmp_path / "second.log"
    with cache_lock(tmp_path / "c"), open(log, "w") as sink:  # another builder (this test) holds the cache
        second = subprocess.Popen([sys.executable, "-m", "zsdemo", "index", "mine", "--cache", "c"], cwd=tmp_path,
                                  env=env, stdout=sink, stderr=sink, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and "Another indexing run" not in log.read_text():
            time.sleep(0.2)
        time.sleep(1.0)
        assert second.poll() is None, "the second builder must wait, not race"
        assert "Another indexing run is using the cache" in log.read_text()
    assert second.wait(timeout=300) == 0, log.read_text()
    assert len(_names(tmp_path, "c")) == 6 and len(list((tmp_path / "c").glob("gen-*"))) == 1


def test_two_concurrent_builds_both_finish_with_one_valid_cache(tmp_path):
    _photos(tmp_path / "mine", 8)
    env = {**os.environ, "PYTHONPATH": str(REPO), "ZSDEMO_MODEL": "zsdemo-tiny-vit", "ZSDEMO_PRETRAINED": "none"}
    procs = [subprocess.Popen([sys.executable, "-m", "zsdemo", "index", "mine", "--cache", "c"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    assert all("Traceback" not in err for _, err in results)
    generation = (tmp_path / "c" / (tmp_path / "c" / "CURRENT").read_text().strip())
    assert generation.is_dir() and len(list((tmp_path / "c").glob("gen-*"))) == 1
    assert len(_names(tmp_path, "c")) == 8


def test_an_empty_folder_is_refused_and_leaves_no_cache(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("index", "empty", "--cache", "c", cwd=tmp_path)
    assert result.returncode == 2 and "No photos in" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "c").exists()


def test_query_file_is_checked_before_the_model_loads(tmp_path):
    import time

    started = time.perf_counter()
    result = run("search", "nope.png", "--cache", "c", "--model", "ViT-B-32-quickgelu", "--pretrained", "openai",
                 cwd=tmp_path)
    assert result.returncode == 2 and "nope.png: file not found" in result.stderr
    assert "Could not load" not in result.stderr  # it never got as far as the weights
    assert time.perf_counter() - started < 60


def test_folder_mistakes_are_refused_before_the_model_loads(tmp_path):
    """An unknown model would fail at load: the folder's problem must be what the user hears, at once."""
    (tmp_path / "notes.txt").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    wrong_model = {"ZSDEMO_MODEL": "no-such-model"}
    as_file = run("index", "notes.txt", "--cache", "c1", cwd=tmp_path, env_extra=wrong_model)
    assert as_file.returncode == 2 and "is a file, not a folder" in as_file.stderr, as_file.stderr
    empty = run("index", "empty", "--cache", "c2", cwd=tmp_path, env_extra=wrong_model)
    assert empty.returncode == 2 and "No photos in" in empty.stderr, empty.stderr
    missing = run("search", "nothing.png", "--cache", "c3", cwd=tmp_path, env_extra=wrong_model)
    assert missing.returncode == 2 and "no-such-model" not in missing.stderr, missing.stderr
    assert not any((tmp_path / name).exists() for name in ("c1", "c2", "c3")), "a refused command leaves nothing"


def test_query_paths_lists_and_clears_what_this_machine_keeps(tmp_path):
    folder = tmp_path / "qp"
    folder.mkdir()
    (folder / "abc-fp32.onnx").write_bytes(b"0" * 1000)
    (folder / "choices.json").write_text(json.dumps({"k": {"path": "onnx-int8", "cpu": "AVX-512", "ms": 3.0,
                                                           "fp32_ms": 9.0, "when": "today"}}))
    env = {"ZSDEMO_QUERY_CACHE": str(folder)}
    listed = run("query-paths", cwd=tmp_path, env_extra=env)
    assert listed.returncode == 0 and "1 exported files" in listed.stdout and "onnx-int8 on AVX-512" in listed.stdout
    cleared = run("query-paths", "--clear", cwd=tmp_path, env_extra=env)
    assert cleared.returncode == 0 and "Removed 1 exported" in cleared.stdout
    assert not list(folder.iterdir())
