"""`join_inside`: names in data files stay inside their folder."""

import pytest

from llavamini.utils.paths import join_inside


@pytest.mark.parametrize("name", ["a.png", "sub/a.png", "sub/../a.png", "./a.png"])
def test_names_inside_the_folder_are_joined(tmp_path, name):
    assert join_inside(str(tmp_path), name, "--image-folder").startswith(str(tmp_path))


@pytest.mark.parametrize("name", ["../a.png", "sub/../../a.png", "/etc/hostname"])
def test_names_outside_the_folder_are_refused_naming_the_flag(tmp_path, name):
    with pytest.raises(ValueError, match="outside --image-folder"):
        join_inside(str(tmp_path), name, "--image-folder")


def test_absolute_names_are_taken_inside_their_folder(tmp_path):
    inside = str(tmp_path / "sub" / "a.png")
    assert join_inside(str(tmp_path), inside, "--image-folder") == inside
    assert join_inside("/", "/etc/hostname", "--image-folder") == "/etc/hostname"


def test_symbolic_links_inside_the_folder_are_followed_by_the_reader(tmp_path):
    """The check is on the name: a data folder that links to another disk still works."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "coco").symlink_to(tmp_path / "elsewhere")
    joined = join_inside(str(tmp_path / "data"), "coco/x.jpg", "--image-folder")
    assert joined == str(tmp_path / "data" / "coco" / "x.jpg")
