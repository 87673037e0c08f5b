"""Hostile input against the engine (no server): bounded decoding in every dimension, one readable refusal for
every per-image failure, a bad photo never blocking a gallery, a strokes parser that only refuses or draws."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from zsdemo.errors import EmptySketchError, ImageError
from zsdemo.limits import neutralise, parse_strokes, safe_stem
from zsdemo.model.preprocess import MAX_SKETCH_SIDE, clean_sketch, load_photo, open_image, strokes_to_image
from zsdemo.store.build import build_gallery
from zsdemo.store.gallery import Gallery
from zsdemo.store.layout import RUN_PREFIX
from zsdemo.store.uploads import add_photos


def photos_in(folder, n: int = 4):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((40, 60, 3), i * 50, np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_a_long_thin_png_is_refused_before_the_transform(tmp_path, tiny_encoder):
    path = tmp_path / "line.png"
    Image.new("L", (39_000_000, 1), 255).save(path)  # ~38 KB on disk, under the 40 MP limit
    with pytest.raises(ImageError, match="pixels a side"):
        open_image(path)
    Image.new("L", (10_000, 100), 255).save(tmp_path / "thin.png")
    with pytest.raises(ImageError, match="long and thin"):
        open_image(tmp_path / "thin.png")
    with pytest.raises(ImageError):  # was OverflowError from PIL's resize inside the transform
        tiny_encoder.encode_photos([path])


def test_the_transform_turns_any_failure_into_the_readable_refusal(tiny_encoder):
    with pytest.raises(ImageError, match="could not be processed"):  # an in-memory image skips the decode limits
        tiny_encoder.transform(Image.new("RGB", (39_000_000, 1)))


def test_ink_at_two_far_ends_does_not_make_a_huge_square():
    image = Image.new("RGB", (4000, 200), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 20, 20), fill="black")
    draw.rectangle((3979, 179, 3999, 199), fill="black")
    square = clean_sketch(image)
    assert square.width == square.height <= round(MAX_SKETCH_SIDE * 1.16) + 2  # was 4642 px a side


def test_hostile_strokes_get_readable_refusals():
    deep = "[" * 100_000 + "]" * 100_000  # was RecursionError
    for bad in (deep, '{"width": Infinity, "strokes": []}', '{"width": NaN}',
                '{"strokes": [[' + "9" * 4000 + ', 1]]}', "12", "[1, 2]", '{"strokes": {"a": 1}}',
                '{"strokes": [[true, false]]}', '{"strokes": [[1e999, 1]]}', '{"strokes": [[1, 2, 3]]}'):
        with pytest.raises(ImageError):
            strokes_to_image(bad)
    with pytest.raises(ImageError):
        strokes_to_image({"width": 448.5, "height": 448, "strokes": []})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=6) | st.dictionaries(
                        st.sampled_from(["width", "height", "brush", "strokes", "x"]), children, max_size=5),
                    max_leaves=40))
def test_fuzz_strokes_parser_only_refuses_or_draws(value):
    started = time.monotonic()
    for candidate in (value, json.dumps(value, allow_nan=True) if not isinstance(value, str) else value):
        try:
            image = strokes_to_image(candidate)
        except ImageError:
            continue
        assert image.mode == "RGB" and min(image.size) >= 8 and max(image.size) <= 2048
    assert time.monotonic() - started < 5.0  # generous: any example is milliseconds of work


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=2000), st.integers(1, 60), st.integers(1, 60))
def test_fuzz_image_decoder_only_refuses_or_decodes(noise, width, height):
    import io

    started = time.monotonic()
    # a valid PNG header with random bytes spliced in, and the raw noise itself
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, "PNG")
    valid = buffer.getvalue()
    for data in (noise, valid[:33] + noise + valid[33:], valid[: len(valid) // 2] + noise):
        for decode in (load_photo, clean_sketch):
            try:
                out = decode(data)
            except (ImageError, EmptySketchError):
                continue
            assert out.mode == "RGB"
    assert time.monotonic() - started < 10.0


def test_a_photo_that_fails_the_transform_is_skipped_not_blocking(tmp_path, tiny_encoder, monkeypatch):
    photos = photos_in(tmp_path / "p", 4)
    Image.fromarray(np.zeros((40, 61, 3), np.uint8)).save(photos / "bad.png")
    original = tiny_encoder.transform

    def transform(image):
        if image.width == 61:
            raise OverflowError("simulated")  # what PIL raised for the 39,000,000 x 1 upload
        return original(image)

    from zsdemo.model.preprocess import guarded

    monkeypatch.setattr(tiny_encoder, "transform", guarded(transform))
    gallery, report = build_gallery([photos], tmp_path / "c", tiny_encoder)
    assert len(gallery) == 4 and [p for p, _ in report.skipped] == [str((photos / "bad.png").resolve())]
    assert "could not be processed" in report.skipped[0][1]
    again, second = build_gallery([photos], tmp_path / "c", tiny_encoder)  # remembered: not retried
    assert len(again) == 4 and second.added == 0 and not list((tmp_path / "c").glob(f"{RUN_PREFIX}*"))


def test_a_failed_build_leaves_no_build_folder_and_the_old_generation(tmp_path, tiny_encoder):
    photos = photos_in(tmp_path / "p", 3)
    first, _ = build_gallery([photos], tmp_path / "c", tiny_encoder)
    Image.fromarray(np.full((40, 60, 3), 7, np.uint8)).save(photos / "new.png")

    def broken(run, encoder, progress):
        raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError):
        build_gallery([photos], tmp_path / "c", tiny_encoder, runner=broken)
    assert not list((tmp_path / "c").glob(f"{RUN_PREFIX}*"))
    assert [g.name for g in (tmp_path / "c").glob("gen-*")] == [first.generation_dir.name]
    assert len(Gallery.open(tmp_path / "c", tiny_encoder)) == 3


def test_uploads_that_fail_are_removed_and_odd_names_are_kept_renamed(tmp_path, tiny_encoder, monkeypatch):
    gallery, _ = build_gallery([photos_in(tmp_path / "p", 3)], tmp_path / "c", tiny_encoder)
    up = tmp_path / "up"
    up.mkdir()
    Image.fromarray(np.full((30, 30, 3), 90, np.uint8)).save(up / ".hidden.jpg")
    Image.fromarray(np.full((30, 30, 3), 120, np.uint8)).save(up / "..\\..\\x.png")
    Image.fromarray(np.zeros((40, 61, 3), np.uint8)).save(up / "bad.png")
    original = tiny_encoder.transform

    def transform(image):
        if image.width == 61:
            raise OverflowError("simulated")
        return original(image)

    from zsdemo.model.preprocess import guarded

    monkeypatch.setattr(tiny_encoder, "transform", guarded(transform))
    files = [up / ".hidden.jpg", up / "..\\..\\x.png", up / "bad.png"]
    after, report = add_photos(gallery, files, tiny_encoder)
    assert report.added == 2 and len(after) == 5  # was "Added 0": hidden names were dropped silently
    assert ("bad.png", report.skipped[0][1]) == report.skipped[0] and len(report.skipped) == 1
    assert dict(report.renamed) == {".hidden.jpg": "hidden.jpg", "..\\..\\x.png": "x.png"}
    stored = sorted(p.name for p in gallery.uploads_dir.iterdir())
    assert len(stored) == 2 and not any(n.startswith("bad") for n in stored)
    more, _ = add_photos(after, [up / ".hidden.jpg"], tiny_encoder)  # the next upload works
    assert len(more) == 5


def test_names_and_captions_are_neutralised():
    assert safe_stem("..\\..\\x") == "x" and safe_stem(".hidden") == "hidden" and safe_stem("\u202egpj.exe") == "gpj.exe"
    assert "\u202e" not in neutralise("a\u202eb") and neutralise("a b") == "a b"
    assert parse_strokes('{"width": 100, "height": 50, "strokes": [[1, 2, 3, 4]]}').strokes == [[1.0, 2.0, 3.0, 4.0]]
