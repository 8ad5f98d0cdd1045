"""Preprocessing as the reference's inference path: pad colour, crop order, shapes."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from llavamini.apps.tiny import tiny_config, tiny_image_processor
from llavamini.data import expand_to_square, process_images, split_image

EXAMPLE = Path(__file__).resolve().parents[2] / "playground" / "examples" / "extreme_ironing.jpg"
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])


def quadrants() -> Image.Image:
    image = Image.new("RGB", (4, 4))
    for (x, y), colour in {(0, 0): "red", (2, 0): "green", (0, 2): "blue", (2, 2): "white"}.items():
        image.paste(Image.new("RGB", (2, 2), colour), (x, y))
    return image


def test_expand_to_square_centres_on_the_background():
    square = expand_to_square(Image.new("RGB", (4, 2), (255, 0, 0)), (122, 116, 104))
    assert square.size == (4, 4)
    assert square.getpixel((0, 0)) == (122, 116, 104)
    assert square.getpixel((0, 1)) == (255, 0, 0) and square.getpixel((3, 2)) == (255, 0, 0)
    assert square.getpixel((3, 3)) == (122, 116, 104)


def test_split_image_is_row_major_then_global_view():
    parts = split_image(quadrants(), 2)
    colours = [part.getpixel((0, 0)) for part in parts[:4]]
    assert colours == [(255, 0, 0), (0, 128, 0), (0, 0, 255), (255, 255, 255)]
    assert parts[4].size == (4, 4)
    assert split_image(quadrants(), 1)[0].size == (4, 4)


@pytest.mark.parametrize(
    ("aspect", "ratio", "parts"), [("pad", 1, 1), ("square", 1, 1), ("pad", 2, 5)]
)
def test_process_images_shape(aspect, ratio, parts):
    config = tiny_config(10, image_aspect_ratio=aspect, resolution_ratio=ratio)
    with Image.open(EXAMPLE) as image:  # 570 x 380
        pixels = process_images([image, image], tiny_image_processor(), config)
    assert pixels.shape == (2, parts, 3, 336, 336) and pixels.dtype == torch.float32


def test_pad_fills_with_the_normalised_clip_mean():
    config = tiny_config(10, image_aspect_ratio="pad")
    with Image.open(EXAMPLE) as image:
        padded = process_images([image], tiny_image_processor(), config)[0, 0]
        cropped = process_images(
            [image], tiny_image_processor(), tiny_config(10, image_aspect_ratio="square")
        )[0, 0]
    border = padded[:, :10, :].mean(dim=(1, 2))  # the top band is background
    expected = (torch.tensor([122, 116, 104]) / 255 - CLIP_MEAN) / CLIP_STD
    torch.testing.assert_close(border, expected, atol=2e-2, rtol=0)
    assert not torch.allclose(cropped[:, :10, :].mean(dim=(1, 2)), expected, atol=2e-2)


@pytest.mark.parametrize(("width", "height"), [(20000, 20000), (13000, 13000)])
def test_an_image_too_large_to_decode_is_named_with_the_limit(tmp_path, width, height):
    """Past Pillow's limit (20000^2: its DecompressionBombError) and between the limit and twice
    it (13000^2: only a warning from Pillow, gigabytes to decode), a clear `ValueError`."""
    from llavamini.data.image_processing import load_image
    from tests.conftest import png_header_only

    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(width, height))
    with pytest.raises(ValueError, match=rf"bomb\.png.*{width * height} pixels.*MAX_IMAGE_PIXELS"):
        load_image(str(path))


def test_fit_for_square_keeps_ordinary_images_and_shrinks_long_strips():
    from llavamini.data.image_processing import fit_for_square

    photo = Image.new("RGB", (4000, 3000))
    assert fit_for_square(photo) is photo  # under the limit: the reference's pixels
    strip = fit_for_square(Image.new("RGB", (1, 1_000_000)))
    side = max(strip.size)
    assert strip.size[0] == 1 and side * side <= Image.MAX_IMAGE_PIXELS < (side + 1) ** 2
