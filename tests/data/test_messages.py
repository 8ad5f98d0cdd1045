"""`media_in_placeholder_order`: the k-th `<image>` of a prompt takes its k-th image and the k-th
`<video>` its k-th video, whatever the interleaving (the transformers processor and the vLLM
plug-in both place media with it)."""

import pytest

from llavamini.data.messages import media_in_placeholder_order


def test_each_placeholder_takes_its_own_media_in_order():
    prompts = ["<image> then <video>, <image> and <video>?", "only <image>"]
    media = media_in_placeholder_order(
        prompts, [["first", "second"], ["third"]], [["clip-a", "clip-b"], []]
    )
    assert media == [
        [("image", "first"), ("video", "clip-a"), ("image", "second"), ("video", "clip-b")],
        [("image", "third")],
    ]


def test_swapped_images_swap_places():
    (forward,) = media_in_placeholder_order(["<image><image> Q"], [["a", "b"]], None)
    (backward,) = media_in_placeholder_order(["<image><image> Q"], [["b", "a"]], None)
    assert [m for _, m in forward] == ["a", "b"] and [m for _, m in backward] == ["b", "a"]


def test_a_missing_image_is_refused():
    with pytest.raises(ValueError):
        media_in_placeholder_order(["<image><image> Q"], [["a"]], None)
