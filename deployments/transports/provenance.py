"""Provenance where frames leave: each session's watermark tag, the marking of its frames,
the ledger line that traces the tag to the session, and the C2PA signature of a one-shot
MP4 (models/provenance/ holds the scheme, the keys, the manifests and the ledger).

Frames are marked once, on the whole frame after paste-back, just before they are encoded
once for every viewer: in the backend replica for remote backends (`FrameFormat.mark_tag`),
in the session's host for local ones (still mode), and before muxing for a one-shot render.
An unchanged frame (still mode) reuses its marked copy, as its JPEG bytes are reused.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from models.provenance.keys import Keys, ensure_keys
from models.provenance.ledger import Ledger, ledger_path
from models.provenance.watermark import MIN_SIDE, FrameMarker, session_tag

from .encode import same_frame

log = logging.getLogger("ray.serve")


def tag_hex(tag: int) -> str:
    return f"{tag:014x}"  # 56 bits


class FrameMarking:
    """Marks a session's frames with its tag; a frame unchanged since the last call (the same
    buffer, as still mode broadcasts it) gets the same marked copy back."""

    def __init__(self, marker: FrameMarker, tag: int):
        self.marker, self.tag = marker, tag
        self._last_in: np.ndarray | None = None
        self._last_out: np.ndarray | None = None

    def apply(self, frames: np.ndarray) -> np.ndarray:
        """N×H×W×3 uint8 RGB -> the same, marked (frames under MIN_SIDE pass unchanged)."""
        if not len(frames) or min(frames.shape[1:3]) < MIN_SIDE:
            return frames
        return np.stack([self._one(frame) for frame in frames])

    def _one(self, frame: np.ndarray) -> np.ndarray:
        if same_frame(frame, self._last_in):
            return self._last_out
        self._last_in, self._last_out = frame, self.marker.embed(frame, self.tag)
        return self._last_out


class Provenance:
    """One process's provenance: keys (made on first start), the marker, the ledger. With
    `enabled` false (an operator's explicit choice) nothing is marked, signed or logged."""

    def __init__(self, data_dir: Path, enabled: bool = True, tsa_url: str | None = None):
        self.enabled, self.tsa_url = enabled, tsa_url
        self.keys: Keys | None = ensure_keys(data_dir) if enabled else None
        self.marker = FrameMarker(self.keys.watermark_secret) if enabled else None
        self.ledger = Ledger(ledger_path(data_dir))

    @classmethod
    def from_args(cls, args) -> "Provenance":
        return cls(args.data_dir, args.provenance.enabled, args.provenance.tsa_url)

    def tag(self, session_id: str) -> int | None:
        return session_tag(self.keys.watermark_secret, session_id) if self.enabled else None

    def marking(self, tag: int | None) -> FrameMarking | None:
        return FrameMarking(self.marker, tag) if self.enabled and tag is not None else None

    def record(self, event: str, session_id: str, persona_id: str, mode: str, tag: int | None) -> None:
        """A ledger line: `start` or `end` of a session or render."""
        if tag is None:
            return
        self.ledger.append({"event": event, "tag": tag_hex(tag), "session_id": session_id,
                            "persona_id": persona_id, "mode": mode, "at": time.time()})

    def poster(self, jpeg: bytes, tag: int | None, session_id: str, mode: str) -> bytes:
        """A live session's signed manifest: its newest frame (marked), as a JPEG whose C2PA
        manifest declares the session's tag. Live streams have no C2PA format of their own."""
        from models.provenance import manifest

        payload = {"watermark_tag": tag_hex(tag) if tag is not None else None, "session_id": session_id,
                   "mode": mode}
        signed = manifest.sign(jpeg, "image/jpeg", self.keys, payload, self.tsa_url)
        if signed.warning:
            log.warning("provenance: %s", signed.warning)
        return signed.data

    def sign_mp4(self, data: bytes, tag: int | None, mode: str) -> bytes:
        """A one-shot render's MP4 with its signed C2PA manifest (unchanged when disabled)."""
        if not self.enabled:
            return data
        from models.provenance import manifest

        payload = {"watermark_tag": tag_hex(tag) if tag is not None else None, "mode": mode}
        signed = manifest.sign(data, "video/mp4", self.keys, payload, self.tsa_url)
        if signed.warning:
            log.warning("provenance: %s", signed.warning)
        return signed.data
