"""Sketch and photo preprocessing on every input kind, and refusal of bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import draw_sketch
from zsdemo.errors import EmptySketchError, ImageError
from zsdemo.model.preprocess import ImageLimits, clean_sketch, flatten_to_rgb, load_photo, open_image


def ink_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    grey = np.asarray(image.convert("L"))
    ys, xs = np.nonzero(grey < 128)
    return (xs.min(), ys.min(), xs.max(), ys.max()) if len(xs) else None


def assert_clean(result: Image.Image) -> None:
    assert result.mode == "RGB" and result.width == result.height
    grey = np.asarray(result.convert("L"))
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    assert border.min() > 200, "padding must be white"
    assert (grey < 128).sum() > 20, "ink must survive"


def rgba_transparent_sketch() -> Image.Image:
    image = Image.new("RGBA", (200, 160), (0, 0, 0, 0))  # transparent *black*, like Gradio's RGBA canvas
    ImageDraw.Draw(image).line((20, 20, 150, 130), fill=(0, 0, 0, 255), width=5)
    return image


def variants() -> dict[str, object]:
    base = draw_sketch(200)
    rgba = rgba_transparent_sketch()
    la = rgba.convert("LA")
    p_ink = Image.new("P", (120, 120), 1)
    p_ink.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    ImageDraw.Draw(p_ink).line((10, 10, 100, 100), fill=0, width=4)
    i16 = Image.fromarray(np.asarray(base.convert("L")).astype("<u2") * 257)
    assert i16.mode == "I;16"
    return {
        "rgb": base,
        "L": base.convert("L"),
        "1": base.convert("1"),
        "CMYK": base.convert("CMYK"),
        "RGBA transparent": rgba,
        "LA": la,
        "P": p_ink,
        "P with transparency": p_ink.copy(),
        "I;16": i16,
        "numpy rgb": np.asarray(base),
        "numpy L": np.asarray(base.convert("L")),
        "numpy float": np.asarray(base.convert("L"), dtype=np.float32) / 255.0,
        "numpy rgba": np.asarray(rgba),
        "canvas strokes": {"width": 300, "height": 300, "strokes": [[60, 60, 240, 240, 60, 240]]},
    }


@pytest.mark.parametrize("kind", list(variants()))
def test_every_input_kind_gives_a_clean_square(kind):
    value = variants()[kind]
    if kind == "P with transparency":
        value.info["transparency"] = 2  # an unused index: must still work
    assert_clean(clean_sketch(value))


def test_file_path_and_bytes(tmp_path):
    path = tmp_path / "s.png"
    rgba_transparent_sketch().save(path)
    assert_clean(clean_sketch(str(path)))
    assert_clean(clean_sketch(path.read_bytes()))


def test_transparent_background_becomes_white_not_black():
    result = clean_sketch(rgba_transparent_sketch())
    grey = np.asarray(result.convert("L"))
    assert np.mean(grey > 200) > 0.8


def test_white_on_black_is_inverted():
    image = Image.new("L", (200, 200), 0)
    ImageDraw.Draw(image).ellipse((40, 40, 160, 160), outline=255, width=6)
    result = clean_sketch(image)
    assert_clean(result)


def test_crop_and_pad_make_position_and_canvas_size_irrelevant():
    a = clean_sketch(draw_sketch(256, "box", offset=0))
    b = clean_sketch(draw_sketch(256, "box", offset=40))
    assert a.size == b.size
    assert np.array_equal(np.asarray(a), np.asarray(b))
    big = Image.new("RGB", (1000, 700), "white")
    big.paste(draw_sketch(256, "box"), (500, 300))
    assert clean_sketch(big).size == a.size


def test_margin_around_ink():
    result = clean_sketch(draw_sketch(256, "box"))
    left, top, right, bottom = ink_box(result)
    assert left > 3 and top > 3 and right < result.width - 4 and bottom < result.height - 4


@pytest.mark.parametrize("value", [
    None,
    {"width": 448, "height": 448, "strokes": []},
    Image.new("RGB", (300, 300), "white"),
    Image.new("RGBA", (300, 300), (0, 0, 0, 0)),
    np.full((300, 300, 3), 255, np.uint8),
    np.zeros((0, 0, 3), np.uint8),
])
def test_empty_canvas_is_a_specific_error(value):
    with pytest.raises(EmptySketchError, match="empty"):
        clean_sketch(value)


def test_a_speck_of_dust_is_still_empty():
    image = Image.new("RGB", (800, 800), "white")
    image.putpixel((400, 400), (0, 0, 0))
    with pytest.raises(EmptySketchError):
        clean_sketch(image)


def test_unreadable_and_oversized_files_are_refused(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageError, match="not a readable image"):
        open_image(junk)
    with pytest.raises(ImageError, match="not found"):
        open_image(tmp_path / "missing.png")
    big = tmp_path / "big.png"
    Image.new("L", (3000, 3000), 255).save(big)
    with pytest.raises(ImageError, match="MP"):
        open_image(big, ImageLimits(max_pixels=1_000_000))
    with pytest.raises(ImageError, match="MB"):
        open_image(big, ImageLimits(max_file_bytes=100))
    with pytest.raises(ImageError):
        clean_sketch(str(junk))


def test_truncated_file_is_refused(tmp_path):
    buf = io.BytesIO()
    Image.effect_noise((300, 300), 60).convert("RGB").save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[:600])
    with pytest.raises(ImageError):
        open_image(path)


def test_photo_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (300, 100), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    photo = load_photo(path)
    assert photo.size == (100, 300) and photo.mode == "RGB"


def test_photo_modes_and_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (64, 48), c) for c in ("blue", "green")]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    photo = load_photo(gif)
    assert photo.mode == "RGB" and photo.size == (64, 48)
    assert photo.getpixel((5, 5))[2] > 200  # blue: the first frame
    assert flatten_to_rgb(Image.new("RGBA", (4, 4), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert flatten_to_rgb(Image.new("CMYK", (4, 4))).mode == "RGB"


def test_streams_and_arrays_obey_the_same_limits():
    from zsdemo.model.preprocess import sketch_to_image

    stream = io.BytesIO(b"\x00" * 2000)
    with pytest.raises(ImageError, match="MB limit"):
        open_image(stream, ImageLimits(max_file_bytes=1000))
    with pytest.raises(ImageError, match="MP"):
        sketch_to_image(np.zeros((12000, 12000), np.uint8))
    with pytest.raises(ImageError, match="MP"):
        sketch_to_image(Image.new("1", (9000, 9000)))


def test_no_pil_bomb_warning_before_our_own_refusal(tmp_path):
    import warnings

    big = tmp_path / "big.png"
    Image.new("1", (10000, 9500), 1).save(big)  # 95 MP: over PIL's warning threshold and our 40 MP limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match="95 MP"):
            open_image(big)


def test_messages_can_hide_server_file_names(tmp_path):
    junk = tmp_path / "tmpXYZ123.png"
    junk.write_bytes(b"garbage")
    with pytest.raises(ImageError) as info:
        open_image(junk, display_name="the sketch")
    assert "tmpXYZ123" not in str(info.value) and str(tmp_path) not in str(info.value)


def test_strokes_are_drawn_like_the_canvas():
    import json

    from zsdemo.model.preprocess import strokes_to_image

    value = {"width": 200, "height": 100, "brush": 6, "strokes": [[20, 50, 180, 50], [100, 80]]}
    image = strokes_to_image(json.dumps(value))
    assert image.size == (200, 100) and image.mode == "RGB"
    grey = np.asarray(image.convert("L"))
    assert grey[50, 100] < 50 and grey[80, 100] < 50 and grey[20, 100] == 255  # the line, the dot, paper
    assert clean_sketch(value).size == clean_sketch(json.dumps(value)).size
    with pytest.raises(EmptySketchError):
        clean_sketch({"width": 200, "height": 200, "strokes": []})
    for bad, why in [("{oops", "malformed"), ('{"strokes": [["x"]]}', "lists of numbers"),
                     ('{"width": 1e9, "strokes": []}', "between 8 and"),
                     (json.dumps({"strokes": [[1, 2] * 50_000]}), "too many points")]:
        with pytest.raises(ImageError, match=why):
            strokes_to_image(bad)


def test_a_sketchpad_value_is_no_longer_a_sketch():
    """The page sends strokes; a Gradio Sketchpad dict (what an older page sent) is refused, readably."""
    with pytest.raises(ImageError, match="Cannot read a sketch from a dict"):
        clean_sketch({"background": None, "layers": [], "composite": np.zeros((8, 8, 3), np.uint8)})
