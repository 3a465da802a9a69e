"""`lockn-bod verify FILE`: what a file says about where it came from.

Three layers, each read independently:
- the C2PA manifest: Trusted / Valid (untrusted signer) / Invalid (with the validator's
  codes) / none, and the watermark tag it declares;
- the invisible per-frame mark, read with the server's watermark secret (an operator's
  check: the secret never leaves the server): the decoded tag and how sure the reader is;
- the ledger: the session (or render) that tag belongs to.

The verdict, and the exit code:
- CONSISTENT (0): a valid manifest, and no mark that contradicts it; or, without a manifest
  (a re-encoded clip), a mark whose tag the ledger knows;
- TAMPERED (1): the manifest is invalid, or the mark and the declared tag disagree;
- NOTHING (3): neither a manifest nor a mark we know (2 is argparse's usage error).
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import manifest
from .ledger import Ledger

CONSISTENT, TAMPERED, NOTHING = 0, 1, 3
VERDICTS = {CONSISTENT: "marked and consistent", TAMPERED: "tampered or mismatched", NOTHING: "nothing found"}
MIME_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/mp4", ".webm": "video/webm",
              ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
MAX_FRAMES = 50  # 2 s at 25 fps: the mark is pooled over them


@dataclass
class Report:
    file: str
    c2pa_state: str
    c2pa_codes: list[str]
    c2pa_untrusted: bool
    declared: dict | None
    watermark_tag: str | None
    watermark_confidence: float | None
    watermark_frames: int
    ledger: list[dict]
    verdict: int

    def as_dict(self) -> dict:
        return asdict(self) | {"verdict_text": VERDICTS[self.verdict]}


def verify_file(path: Path, trust_pem: bytes | None = None, secret: bytes | None = None,
                ledger: Ledger | None = None) -> Report:
    path = Path(path)
    mime = MIME_TYPES.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"cannot verify {path.name}: one of {', '.join(sorted(MIME_TYPES))} expected")
    data = path.read_bytes()
    c2pa = manifest.read(data, mime, trust_pem)
    declared = c2pa.payload
    tag, confidence, frames = read_mark(data, mime, secret) if secret else (None, None, 0)
    candidates = {t for t in (tag, (declared or {}).get("watermark_tag")) if t}
    entries = [e for t in sorted(candidates) for e in (ledger.find(t) if ledger else [])]
    return Report(str(path), c2pa.state, c2pa.codes, c2pa.untrusted, declared, tag, confidence, frames, entries,
                  verdict(c2pa.state, declared, tag, entries))


def verdict(c2pa_state: str, declared: dict | None, tag: str | None, entries: list[dict]) -> int:
    declared_tag = (declared or {}).get("watermark_tag")
    if c2pa_state == "Invalid" or (tag and declared_tag and tag != declared_tag):
        return TAMPERED
    if c2pa_state in ("Trusted", "Valid") or (tag and entries):
        return CONSISTENT
    return NOTHING


def read_mark(data: bytes, mime: str, secret: bytes) -> tuple[str | None, float | None, int]:
    """(the decoded tag in hex or None, the reader's confidence, frames read)."""
    from .watermark import MIN_SIDE, FrameMarker

    frames = video_frames(data) if mime.startswith("video/") else [image_frame(data)]
    frames = [f for f in frames if min(f.shape[:2]) >= MIN_SIDE]
    if not frames:
        return None, None, 0
    reading = FrameMarker(secret).read(np.stack(frames))
    if not reading.found:
        return None, round(float(reading.confidence), 3), len(frames)
    return f"{reading.tag:014x}", round(float(reading.confidence), 3), len(frames)


def video_frames(data: bytes) -> list[np.ndarray]:
    """Up to MAX_FRAMES decoded frames, H×W×3 uint8 RGB."""
    import av

    frames = []
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) >= MAX_FRAMES:
                break
    return frames


def image_frame(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def format_report(report: Report) -> str:
    """The human-readable form `lockn-bod verify` prints."""
    lines = [f"{report.file}: {VERDICTS[report.verdict]}"]
    trust = " (signer not in the trust list; pass --trust ca.pem)" if report.c2pa_untrusted else ""
    lines.append(f"  C2PA: {report.c2pa_state}{trust}" + (f"  {', '.join(report.c2pa_codes)}" if report.c2pa_codes else ""))
    if report.declared is not None:
        lines.append(f"  declared: {report.declared}")
    if report.watermark_frames:
        mark = report.watermark_tag or "none found"
        lines.append(f"  watermark: {mark} (confidence {report.watermark_confidence}, {report.watermark_frames} frames)")
    for entry in report.ledger:
        lines.append(f"  ledger: {entry}")
    return "\n".join(lines)
