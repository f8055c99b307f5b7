"""media/upload (contract §14.5)."""

from __future__ import annotations

import re

from .conftest import AMR, JPG, MP4, PNG

MB = 1024 * 1024


def test_upload_returns_a_media_id_with_empty_errmsg_and_string_created_at(emulator):
    body = emulator.upload(PNG, "image", "pic.png")
    assert body["errcode"] == 0 and body["errmsg"] == "" and body["type"] == "image"
    assert isinstance(body["created_at"], str) and body["created_at"].isdigit()
    assert re.fullmatch(r"[0-9A-Za-z]{20,}", body["media_id"])
    assert emulator.requests(endpoint="media/upload")[0]["body"] == {"media": {"filename": "pic.png", "size": len(PNG)}}


def test_every_media_type_uploads(emulator):
    for kind, content in (("image", JPG), ("voice", AMR), ("video", MP4), ("file", b"plain text file")):
        assert emulator.upload(content, kind)["errcode"] == 0


def test_unknown_type_is_40005(emulator):
    assert emulator.upload(PNG, "sticker")["errcode"] == 40005


def test_files_of_5_bytes_or_less_are_40006_and_empty_is_44001(emulator):
    assert emulator.upload(b"12345", "file")["errcode"] == 40006
    assert emulator.upload(b"123456", "file")["errcode"] == 0
    assert emulator.upload(b"", "file")["errcode"] == 44001


def test_missing_media_part_is_44001(emulator):
    resp = emulator.http.post(
        emulator.url + "media/upload",
        params={"access_token": emulator.token(), "type": "file"},
        files={"other": ("a", b"123456789")},
    )
    assert resp.json()["errcode"] == 44001


def test_image_over_10mb_is_40009(emulator):
    assert emulator.upload(PNG + b"\0" * (10 * MB), "image")["errcode"] == 40009


def test_voice_over_2mb_is_45001_and_must_be_amr(emulator):
    assert emulator.upload(AMR + b"\0" * (2 * MB), "voice")["errcode"] == 45001
    assert emulator.upload(b"RIFF....WAVEfmt ", "voice")["errcode"] == 301017


def test_video_over_10mb_is_40011(emulator):
    assert emulator.upload(MP4 + b"\0" * (10 * MB), "video")["errcode"] == 40011


def test_file_over_20mb_is_45001(emulator):
    assert emulator.upload(b"\0" * (20 * MB + 1), "file")["errcode"] == 45001


def test_image_must_be_jpg_or_png_40004(emulator):
    assert emulator.upload(b"GIF89a" + b"\0" * 64, "image")["errcode"] == 40004
    emulator.flags(media_check_format=False)
    assert emulator.upload(b"GIF89a" + b"\0" * 64, "image")["errcode"] == 0
