"""`llavamini data check` reports every problem of a broken manifest, with counts."""

import json

import pytest
from PIL import Image

from llavamini.cli import main
from tests.conftest import ramp_frames, write_video


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


def test_videos_are_checked_at_the_frame_cap(tmp_path, capsys, assets):
    """A video is sampled as training samples it: capped at `--video-max-frames` (each frame
    counted in the length), and the report says how many videos reached the cap."""
    write_video(tmp_path / "clip.mp4", ramp_frames(12, 48, 64, step=20), fps=4)  # 3 s: 3 frames
    turns = [{"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "a"}]
    record = {"id": "clip", "video": "clip.mp4", "conversations": turns}
    manifest = tmp_path / "data.json"
    manifest.write_text(json.dumps([record]))
    args = ["data", "check", "--data", str(manifest), "--image-folder", str(tmp_path),
            "--tokenizer", assets["llm"], "--vision-tokens", "200",
            "--max-length", "550"]  # fmt: skip

    def report(*extra: str) -> tuple[int | None, str]:
        try:
            main([*args, *extra])
            code = None
        except SystemExit as error:
            code = error.code
        return code, capsys.readouterr().out

    code, out = report("--video-max-frames", "2")
    assert code in (None, 0) and "1 samples checked, 0 bad" in out, out
    assert "1 video(s) at the frame cap: 2 frames sampled from each" in out
    code, out = report()  # the default cap is far above 3 frames: 600 vision tokens
    assert code == 1 and "[over-length] Sample clip" in out and "frame cap" not in out
