"""Persona storage: validated portraits in a local directory, ids generated here.

Layout (nothing a client sends becomes a path):

    <persona_dir>/<persona_id>/portrait.png   RGB, downscaled to portrait_max_side_px
    <persona_dir>/<persona_id>/meta.json      PersonaRecord
    <persona_dir>/<persona_id>/sessions/<id>  one marker per live session using it

Every replica on the machine shares the directory; reference changes take an
flock so that the last session to leave deletes an ephemeral persona once.
A multi-node cluster needs the directory on shared storage.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import re
import secrets
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel

from models.base import PersonaMedia

from ..api.errors import ServiceError
from ..config import Limits

PERSONA_ID = re.compile(r"^p_[0-9a-f]{24}$")
SESSION_ID = re.compile(r"^[A-Za-z0-9]{1,32}\.[A-Za-z0-9_-]{16,32}$")
ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP"}
MIN_CONSENT_CHARS = 10


class PersonaRecord(BaseModel):
    persona_id: str
    created_at: float
    real_person: bool
    consent: str | None
    consent_at: float | None
    save: bool
    width: int
    height: int
    source_format: str


def check_persona_id(persona_id: str) -> str:
    if not PERSONA_ID.match(persona_id or ""):
        raise ServiceError("unknown_persona", f"no persona {persona_id!r}")
    return persona_id


def decode_portrait(data: bytes, limits: Limits) -> tuple[Image.Image, str]:
    """Validate an uploaded image and return it as RGB, upright, within the size limits."""
    if len(data) > limits.max_upload_bytes:
        raise ServiceError("too_large", f"image is {len(data)} bytes; the limit is {limits.max_upload_bytes}")
    try:
        img = Image.open(io.BytesIO(data))
        fmt = img.format or ""
        if fmt not in ALLOWED_FORMATS:
            raise ServiceError("unsupported_media_type", f"image format {fmt or 'unknown'}; send JPEG, PNG or WebP")
        w, h = img.size  # read from the header: no pixels decoded yet (decompression bombs)
        if max(w, h) > limits.max_image_side_px:
            raise ServiceError("too_large", f"image is {w}×{h}; the limit is {limits.max_image_side_px} px a side")
        if min(w, h) < limits.min_image_side_px:
            raise ServiceError("too_small", f"image is {w}×{h}; at least {limits.min_image_side_px} px a side")
        img = ImageOps.exif_transpose(img).convert("RGB")
    except ServiceError:
        raise
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as err:
        raise ServiceError("not_an_image", f"cannot read the upload as an image: {err}") from None
    img.thumbnail((limits.portrait_max_side_px, limits.portrait_max_side_px), Image.Resampling.LANCZOS)
    return img, fmt


class PersonaStore:
    def __init__(self, root: Path, limits: Limits | None = None):
        self.root = Path(root)
        self.limits = limits or Limits()
        self.root.mkdir(parents=True, exist_ok=True)

    # ---- create / read / delete ----
    def create(self, data: bytes, real_person: bool, consent: str | None, save: bool) -> PersonaRecord:
        consent = (consent or "").strip() or None
        if real_person and (consent is None or len(consent) < MIN_CONSENT_CHARS):
            raise ServiceError("consent_required",
                "this portrait is of a real person: a consent statement (at least "
                f"{MIN_CONSENT_CHARS} characters) from that person is required, or set real_person=false",
            )
        img, fmt = decode_portrait(data, self.limits)
        now = time.time()
        record = PersonaRecord(
            persona_id="p_" + secrets.token_hex(12), created_at=now, real_person=real_person,
            consent=consent, consent_at=now if consent else None, save=save,
            width=img.width, height=img.height, source_format=fmt,
        )
        tmp = self.root / f".tmp-{record.persona_id}"
        (tmp / "sessions").mkdir(parents=True)
        img.save(tmp / "portrait.png")
        (tmp / "meta.json").write_text(record.model_dump_json())
        tmp.rename(self._dir(record.persona_id))  # atomic: readers never see half a persona
        return record

    def get(self, persona_id: str) -> PersonaRecord:
        path = self._dir(check_persona_id(persona_id)) / "meta.json"
        try:
            return PersonaRecord.model_validate_json(path.read_text())
        except FileNotFoundError:
            raise ServiceError("unknown_persona", f"no persona {persona_id!r}") from None

    def sessions_of(self, persona_id: str) -> list[str]:
        d = self._dir(check_persona_id(persona_id)) / "sessions"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def load_media(self, persona_id: str) -> PersonaMedia:
        path = self._dir(check_persona_id(persona_id)) / "portrait.png"
        try:
            with Image.open(path) as img:
                frame = np.asarray(img.convert("RGB"))  # H×W×3 uint8 RGB
        except FileNotFoundError:
            raise ServiceError("unknown_persona", f"no persona {persona_id!r}") from None
        return PersonaMedia(frames=[frame])

    def delete(self, persona_id: str, force: bool = False) -> None:
        with self._locked():
            self.get(persona_id)
            users = self.sessions_of(persona_id)
            if users and not force:
                raise ServiceError("persona_in_use", f"persona is used by {len(users)} live session(s); close them first")
            shutil.rmtree(self._dir(persona_id), ignore_errors=True)

    # ---- session references ----
    def acquire(self, persona_id: str, session_id: str) -> None:
        with self._locked():
            self.get(persona_id)
            (self._dir(persona_id) / "sessions" / self._marker(session_id)).touch()

    def release(self, persona_id: str, session_id: str) -> bool:
        """Drop a session's reference; deletes an unsaved persona with its last session. True if deleted."""
        with self._locked():
            d = self._dir(check_persona_id(persona_id))
            (d / "sessions" / self._marker(session_id)).unlink(missing_ok=True)
            try:
                record = self.get(persona_id)
            except ServiceError:
                return False
            if not record.save and not self.sessions_of(persona_id):
                shutil.rmtree(d, ignore_errors=True)
                return True
            return False

    def sweep_unused(self, ttl_s: float, now: float | None = None) -> list[str]:
        """Delete ephemeral personas that no session has used within ttl_s of their upload."""
        now = time.time() if now is None else now
        deleted = []
        with self._locked():
            for d in self.root.glob("p_*"):
                try:
                    record = self.get(d.name)
                except ServiceError:
                    continue
                if not record.save and not self.sessions_of(d.name) and now - record.created_at > ttl_s:
                    shutil.rmtree(d, ignore_errors=True)
                    deleted.append(d.name)
        return deleted

    # ---- helpers ----
    def _dir(self, persona_id: str) -> Path:
        return self.root / persona_id

    @staticmethod
    def _marker(session_id: str) -> str:
        if not SESSION_ID.match(session_id):
            raise ValueError(f"bad session id {session_id!r}")
        return session_id

    @contextlib.contextmanager
    def _locked(self):
        with open(self.root / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
