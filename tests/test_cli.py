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
    assert "Traceback" not in result.stderr
    wrong = run("index", "--cache", "c", "--pretrained", str(tmp_path / "nope.safetensors"), cwd=tmp_path)
    assert wrong.returncode == 2 and "not found" in wrong.stderr


def test_local_weights_file_is_loaded(tmp_path):
    """A user's downloaded weights: a safetensors file of the same architecture."""
    from safetensors.torch import save_file

    from zsdemo.encoder import create_clip

    model = create_clip("zsdemo-tiny-vit", "none")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    (tmp_path / "p").mkdir()
    draw_sketch(100).save(tmp_path / "p" / "x.png")
    result = run("index", "p", "--cache", "c", "--pretrained", str(tmp_path / "w.safetensors"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "RANDOM WEIGHTS" not in result.stderr
    info = json.loads(run("info", "--cache", "c", "--json", cwd=tmp_path).stdout)
    assert info["encoder"]["pretrained"].endswith("w.safetensors") and info["stale"] is False
