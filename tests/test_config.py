"""Serving configuration: flag > environment > cache manifest > default, and hf:// locations."""

from __future__ import annotations

from pathlib import Path

import pytest

import app
from zsdemo.config import (
    ENVIRONMENT,
    ServeConfig,
    default_cache_dir,
    parse_hub_spec,
    resolve_hub_file,
    resolve_hub_folder,
    resolve_serve_config,
)
from zsdemo.errors import ZsdemoError


@pytest.fixture()
def clean_env(monkeypatch):
    for variable in ENVIRONMENT.values():
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def test_precedence_flag_env_manifest_default(clean_env):
    manifest = {"encoder": {"model": "from-manifest", "pretrained": "manifest.safetensors", "prompts": None}}
    assert resolve_serve_config().model == "ViT-B-32-quickgelu"
    assert resolve_serve_config(manifest=manifest).model == "from-manifest"
    clean_env.setenv("ZSDEMO_MODEL", "from-env")
    assert resolve_serve_config(manifest=manifest).model == "from-env"
    assert resolve_serve_config({"model": "from-flag"}, manifest).model == "from-flag"
    assert resolve_serve_config({"model": None}, manifest).model == "from-env"  # None = flag not given
    assert resolve_serve_config(manifest=manifest).pretrained == "manifest.safetensors"


def test_environment_types_and_errors(clean_env):
    clean_env.setenv("ZSDEMO_GALLERY", f"/a{':'}/b")
    clean_env.setenv("GRADIO_SERVER_PORT", "7999")
    clean_env.setenv("ZSDEMO_SHARE", "true")
    clean_env.setenv("ZSDEMO_QUERY_PRECISION", "fp32")
    cfg = resolve_serve_config()
    assert cfg.galleries == ["/a", "/b"] and cfg.port == 7999 and cfg.share and cfg.query_precision == "fp32"
    clean_env.setenv("GRADIO_SERVER_PORT", "seventy")
    with pytest.raises(ZsdemoError, match="GRADIO_SERVER_PORT"):
        resolve_serve_config()


def test_app_flags_and_cache_folders(clean_env, tmp_path):
    cfg = app.parse_args([])
    assert cfg == ServeConfig() and cfg.cache_dir == Path("gallery_cache/starter")
    cfg = app.parse_args(["--gallery", str(tmp_path), "--model", "zsdemo-tiny-vit", "--pretrained", "none",
                          "--prompts", "p.safetensors", "--cache", "c", "--host", "0.0.0.0", "--port", "8000",
                          "--query-precision", "int8"])
    assert cfg.galleries == [str(tmp_path)] and cfg.model == "zsdemo-tiny-vit" and cfg.pretrained == "none"
    assert (cfg.prompts, cfg.cache, cfg.host, cfg.port, cfg.query_precision) == ("p.safetensors", "c", "0.0.0.0", 8000, "int8")
    # A custom gallery gets its own cache folder, named after it; the CLI and the app share the rule.
    assert default_cache_dir([str(tmp_path)]).name.startswith(tmp_path.name + "-")
    assert default_cache_dir(["/x/photos"]) != default_cache_dir(["/y/photos"])


def test_hub_specs():
    assert parse_hub_spec("hf://datasets/me/photos@abc123/cats") == ("dataset", "me/photos", "abc123", "cats")
    assert parse_hub_spec("hf://me/prompts/sketchy.safetensors") == ("model", "me/prompts", None, "sketchy.safetensors")
    assert parse_hub_spec("hf://datasets/me/photos") == ("dataset", "me/photos", None, "")
    with pytest.raises(ZsdemoError, match="not a hub location"):
        parse_hub_spec("hf://justone")
    with pytest.raises(ZsdemoError, match="names a repository, not a file"):
        resolve_hub_file("hf://me/prompts")
    assert resolve_hub_file("local.safetensors") == "local.safetensors"
    assert resolve_hub_folder("~/photos") == Path.home() / "photos"


def test_hub_download_offline_is_a_readable_error(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline and not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ZsdemoError, match="Could not fetch hf://me/prompts/p.safetensors"):
        resolve_hub_file("hf://me/prompts/p.safetensors")
