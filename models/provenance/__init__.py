"""Provenance for rendered video: an invisible per-frame watermark carrying a session tag.

See `watermark.py` for the scheme. Not wired into serving yet.
"""
from models.provenance.watermark import (
    MIN_SIDE,
    SYNC_BITS,
    TAG_BITS,
    FrameMarker,
    Reading,
    session_tag,
)

__all__ = ["MIN_SIDE", "SYNC_BITS", "TAG_BITS", "FrameMarker", "Reading", "session_tag"]
