"""The README's main command, run in-process: build, load, answer."""

from llavamini.cli import main


def test_demo_answers_a_question_about_the_example_image(tmp_path, capsys):
    main(["demo", "--output-dir", str(tmp_path / "tiny"), "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    assert "Q: What is unusual about this image?\nA: " in out
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (tmp_path / "tiny" / name).is_file(), name


def test_demo_rejects_a_missing_image(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="does not exist"):
        main(["demo", "--image", str(tmp_path / "nope.jpg"), "--output-dir", str(tmp_path)])
