"""`llavamini data check` reports every problem of a broken manifest, with counts."""

import json

import pytest
from PIL import Image

from llavamini.cli import main


def test_broken_manifest_is_reported_in_full(tmp_path, capsys, assets):
    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "broken.mp4").write_bytes(b"nope")

    def turns(question, answer="a"):
        return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]

    records = [
        {"id": "fine", "image": "ok.png", "conversations": turns("<image>\nq")},
        {"id": "gone", "image": "missing.png", "conversations": turns("<image>\nq")},
        {"id": "corrupt", "image": "broken.png", "conversations": turns("<image>\nq")},
        {"id": "bad-video", "video": "broken.mp4", "conversations": turns("<video>\nq")},
        {"id": "roles", "image": "ok.png", "conversations": turns("<image>\nq")[::-1]},
        {"id": "stray-tag", "conversations": turns("<image>\nno image here")},
        {
            "id": "long",
            "image": "ok.png",
            "conversations": turns("<image>\n" + "many words " * 300),
        },
        {"id": "fine-text", "conversations": turns("hello", "hi")},
    ]
    manifest = tmp_path / "data.json"
    manifest.write_text(json.dumps(records))
    args = ["data", "check", "--data", str(manifest), "--image-folder", str(tmp_path),
            "--tokenizer", assets["llm"], "--max-length", "256"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    problems = [
        ("gone", "missing media"),
        ("corrupt", "undecodable media"),
        ("bad-video", "undecodable media"),
        ("roles", "malformed conversation"),
        ("stray-tag", "malformed conversation"),
        ("long", "over-length"),
    ]
    for sample_id, kind in problems:
        assert f"[{kind}] Sample {sample_id} " in out, sample_id
    assert "Sample fine " not in out and "Sample fine-text" not in out
    assert "8 samples checked, 6 bad" in out
    assert "  missing media: 1\n  undecodable media: 2\n  malformed conversation: 2\n" in out
    assert "  over-length: 1" in out
