import numpy as np
import pytest
from PIL import Image

from synthtl.data.images import load_rgb, to_rgb
from synthtl.errors import BadImageError


def _save(tmp_path, name, img, **kw):
    p = tmp_path / name
    img.save(p, **kw)
    return p


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGB", "YCbCr"])
def test_common_modes_become_rgb(tmp_path, mode):
    img = Image.new("RGB", (10, 8), (200, 100, 50)).convert(mode)
    fmt = "JPEG" if mode == "YCbCr" else "PNG"
    out = load_rgb(_save(tmp_path, f"x.{fmt.lower()}", img, format=fmt))
    assert out.mode == "RGB" and out.size == (10, 8)


def test_rgba_and_la_composite_over_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    out = load_rgb(_save(tmp_path, "a.png", rgba))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    la = Image.new("LA", (4, 4), (0, 255))  # opaque black
    assert load_rgb(_save(tmp_path, "la.png", la)).getpixel((1, 1)) == (0, 0, 0)


def test_palette_with_transparency(tmp_path):
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.info["transparency"] = 0
    out = load_rgb(_save(tmp_path, "p.png", p, transparency=0))
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (6, 6), (0, 255, 255, 0))  # red in CMYK
    out = load_rgb(_save(tmp_path, "c.jpg", cmyk, format="JPEG"))
    r, g, b = out.getpixel((3, 3))
    assert out.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_16_bit_grayscale_keeps_range(tmp_path):
    arr = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    out = load_rgb(_save(tmp_path, "g16.png", Image.fromarray(arr)))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((1, 0)) == (255, 255, 255)
    assert 120 < out.getpixel((0, 1))[0] < 135


def test_float_image_in_unit_range():
    f = Image.fromarray(np.array([[0.0, 1.0]], dtype=np.float32), mode="F")
    assert to_rgb(f).getpixel((1, 0)) == (255, 255, 255)


def test_truncated_jpeg_names_the_file(tmp_path):
    p = _save(tmp_path, "t.jpg", Image.new("RGB", (64, 64), (1, 2, 3)), format="JPEG")
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(BadImageError, match=r"t\.jpg.*(truncated|corrupt)") as e:
        load_rgb(p)
    assert "on_bad_image=skip" in str(e.value)


def test_not_an_image_and_missing_file(tmp_path):
    p = tmp_path / "n.jpg"
    p.write_text("hello")
    with pytest.raises(BadImageError, match="not a recognised image"):
        load_rgb(p)
    with pytest.raises(BadImageError, match="not found"):
        load_rgb(tmp_path / "missing.jpg")


def test_reduced_scale_jpeg_decode_keeps_the_short_side(tmp_path):
    p = _save(tmp_path, "big.jpg", Image.new("RGB", (1200, 800), (10, 200, 30)), format="JPEG")
    out = load_rgb(p, min_short_side=256)
    assert min(out.size) >= 256 and out.size[0] < 1200  # decoded at 1/2 scale (600x400)
    assert load_rgb(p).size == (1200, 800)


def _sideways_jpeg(path, orientation=6):
    """A 40x20 JPEG stored sideways (left half red, right half blue) whose EXIF says: rotate 90 degrees clockwise."""
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, format="JPEG", exif=exif, quality=95)
    return path


def test_exif_orientation_is_applied(tmp_path):
    out = load_rgb(_sideways_jpeg(tmp_path / "phone.jpg"))
    assert out.size == (20, 40)  # upright: portrait
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60  # the left edge is now on top
    assert load_rgb(_sideways_jpeg(tmp_path / "plain.jpg", orientation=1)).size == (40, 20)


def test_cached_copy_of_a_rotated_jpeg_is_upright(tmp_path, folder_data):
    from synthtl.data.cache import scan_images
    from synthtl.data.datasets import load_split

    _sideways_jpeg(folder_data / "train" / "red_fox" / "phone.jpg")
    res = scan_images(load_split("folder", "train", folder_data), tmp_path / "c", short_side=16, progress=False)
    with Image.open(res.images.path(res.source.paths.index("red_fox/phone.jpg"))) as im:
        assert im.size == (16, 32) and im.getexif().get(0x0112, 1) == 1  # no tag left to rotate it twice
