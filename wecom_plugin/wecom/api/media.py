"""Temporary media (contract §14.5): upload a file, get a ``media_id`` valid 3 days."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from wecom_plugin.wecom.client import UPLOAD_TIMEOUT

if TYPE_CHECKING:
    from wecom_plugin.wecom.client import WeComClient

MEDIA_TYPES = ("image", "voice", "video", "file")
#: Upper size limits in bytes (§14.5; every file must also be larger than 5 bytes).
MAX_BYTES = {"image": 10 * 1024 * 1024, "voice": 2 * 1024 * 1024, "video": 10 * 1024 * 1024, "file": 20 * 1024 * 1024}
MEDIA_TTL_SECONDS = 3 * 86400


@dataclass(frozen=True)
class Upload:
    media_id: str
    type: str
    created_at: int  # epoch seconds (WeCom sends a string)


def upload(
    client: WeComClient,
    media_type: str,
    content: bytes,
    filename: str,
    content_type: str = "application/octet-stream",
) -> Upload:
    """``POST /cgi-bin/media/upload?type=TYPE`` (multipart, part ``media``): a temporary ``media_id``.

    Doc: https://developer.work.weixin.qq.com/document/path/90253 (代开发 twin 96484; contract §14.5).
    Limits: every file > 5 B; image ≤10 MB JPG/PNG, voice ≤2 MB AMR (≤60 s), video ≤10 MB MP4, file ≤20 MB;
    the ``media_id`` lives 3 days and is shared by the corp's apps; the basic per-API limit applies.
    Sizes are checked here (``ValueError``) because WeCom would only refuse them after the upload.
    """
    if media_type not in MEDIA_TYPES:
        raise ValueError(f"media_type must be one of {MEDIA_TYPES}")
    if not 5 < len(content) <= MAX_BYTES[media_type]:
        raise ValueError(f"{media_type} must be 6 bytes to {MAX_BYTES[media_type]} bytes, got {len(content)}")
    data = client.post(
        "media/upload",
        files={"media": (filename, content, content_type)},
        params={"type": media_type},
        idempotent=True,  # a repeated upload only makes another temporary media id
        timeout=UPLOAD_TIMEOUT,
    )
    return Upload(str(data["media_id"]), str(data.get("type") or media_type), int(data.get("created_at") or 0))
