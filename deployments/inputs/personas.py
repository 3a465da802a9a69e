"""Persona storage: validated portraits, and avatar3d's avatars, in a local directory, ids
generated here. An avatar (a GLB) is kept, referenced by sessions, consented to and
deleted exactly as a portrait is; only its media differs.

Layout (nothing a client sends becomes a path):

    <persona_dir>/<persona_id>/portrait.png   RGB, downscaled to portrait_max_side_px
    <persona_dir>/<avatar_id>/avatar.glb      a validated glTF 2.0 binary (avatar ids start with av_)
    <persona_dir>/<persona_id>/meta.json      PersonaRecord
    <persona_dir>/<persona_id>/sessions/<id>  one marker per live session using it
    <persona_dir>/.hosts/<host id>            a SessionHost's heartbeat (its mtime)

Every replica on the machine shares the directory; reference changes take an
flock so that the last session to leave deletes an ephemeral persona once.
A multi-node cluster needs the directory on shared storage.

A marker outlives a host that crashes, so a marker counts only while its host
(the session id's prefix) has heartbeat within `host_ttl_s`: otherwise it is an
orphan, ignored by `delete` and removed by the sweep, which then deletes the
unsaved persona it held (face data is not kept past its sessions, crashed or not).
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import struct
import secrets
import shutil
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel

from models.base import PersonaMedia

from ..api.errors import ServiceError
from ..config import Limits

PERSONA_ID = re.compile(r"^p_[0-9a-f]{24}$")
AVATAR_ID = re.compile(r"^av_[0-9a-f]{24}$")
MAX_LICENCE_CHARS = 200
SESSION_ID = re.compile(r"^[A-Za-z0-9]{1,32}\.[A-Za-z0-9_-]{16,32}$")
HOST_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
HOSTS_DIR = ".hosts"
# A host silent this long is gone: many sweep periods (1 s), so a busy host is not taken for dead.
HOST_TTL_S = 30.0
ALLOWED_FORMATS = {"JPEG", "MPO", "PNG", "WEBP"}  # MPO: a phone camera's JPEG with a preview after it
MIN_CONSENT_CHARS = 10
MAX_CONSENT_CHARS = 2000
CONSENT_CONTROLS_ALLOWED = {"\t", "\n", "\r"}  # a statement typed in a text area
# Bidirectional controls: they make a stored statement read differently from what was sent.
BIDI_CONTROLS = {"\u061c", "\u200e", "\u200f", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}
# What Pillow's plugins raise on crafted files besides OSError: a bad upload each, not a fault.
IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError,
                EOFError, ZeroDivisionError, OverflowError, struct.error)


class PersonaRecord(BaseModel):
    persona_id: str  # an avatar's id too
    created_at: float
    real_person: bool
    consent: str | None
    consent_at: float | None
    save: bool
    width: int = 0  # a portrait's size; 0 for an avatar
    height: int = 0
    source_format: str
    kind: str = "portrait"  # or "avatar"
    licence: str | None = None  # an avatar's licence, as the uploader stated it
    size_bytes: int | None = None


def check_persona_id(persona_id: str) -> str:
    if not PERSONA_ID.match(persona_id or ""):
        raise ServiceError("unknown_persona", f"no persona {persona_id!r}")
    return persona_id


def check_avatar_id(avatar_id: str) -> str:
    if not AVATAR_ID.match(avatar_id or ""):
        raise ServiceError("unknown_avatar", f"no avatar {avatar_id!r}")
    return avatar_id


def _check_stored_id(stored_id: str) -> str:
    """A portrait's or an avatar's id."""
    return check_avatar_id(stored_id) if stored_id.startswith("av_") else check_persona_id(stored_id)


def check_licence(licence: object) -> str:
    """An avatar's licence statement: required text (e.g. `CC0-1.0`, `made by me`)."""
    if not isinstance(licence, str) or not licence.strip():
        raise ServiceError("licence_required", "say under what licence this avatar may be used (field `licence`)")
    licence = licence.strip()
    if len(licence) > MAX_LICENCE_CHARS or any(_refused_in_consent(c) or c in "\r\n" for c in licence):
        raise ServiceError("invalid_licence", f"licence must be one line of at most {MAX_LICENCE_CHARS} characters")
    return licence


def check_consent(consent: object) -> str | None:
    """The consent statement as stored: stripped, or None when empty. Refused when it holds
    control or bidirectional-override characters (a record must read as it was given) or is
    not text at all (a file sent in the `consent` field)."""
    if consent is None:
        return None
    if not isinstance(consent, str):
        raise ServiceError("invalid_consent", "consent must be text, not a file")
    consent = consent.strip()
    if len(consent) > MAX_CONSENT_CHARS:
        raise ServiceError("invalid_consent", f"consent is {len(consent)} characters; at most {MAX_CONSENT_CHARS}")
    bad = next((c for c in consent if _refused_in_consent(c)), None)
    if bad is not None:
        raise ServiceError("invalid_consent", f"consent holds the control character U+{ord(bad):04X}")
    return consent or None


def _refused_in_consent(char: str) -> bool:
    category = unicodedata.category(char)
    control = category == "Cc" and char not in CONSENT_CONTROLS_ALLOWED
    return control or category == "Cs" or char in BIDI_CONTROLS


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
    except Image.DecompressionBombError as err:  # Pillow's own pixel limit, from the header
        raise ServiceError("too_large", f"image is too large: {err}") from None
    except IMAGE_ERRORS as err:
        raise _image_error(err) from None
    img.thumbnail((limits.portrait_max_side_px, limits.portrait_max_side_px), Image.Resampling.LANCZOS)
    return img, fmt


def _image_error(err: Exception) -> ServiceError:
    """Pillow's refusal as a client error: metadata that inflates past Pillow's limits (PNG
    zTXt/iTXt/iCCP chunks) is `too_large`; anything else cannot be read as an image."""
    message = str(err)
    if isinstance(err, ValueError) and ("too large" in message.lower() or "too much memory" in message.lower()):
        return ServiceError("too_large", f"image metadata inflates past the limit: {message}")
    return ServiceError("not_an_image", f"cannot read the upload as an image: {message or type(err).__name__}")


class PersonaStore:
    """The persona directory. `clock` (seconds, as time.time) dates records and heartbeats;
    a host whose heartbeat is older than `host_ttl_s` is gone."""

    def __init__(self, root: Path, limits: Limits | None = None, clock: Callable[[], float] = time.time,
                 host_ttl_s: float = HOST_TTL_S):
        self.root = Path(root)
        self.limits = limits or Limits()
        self.clock, self.host_ttl_s = clock, host_ttl_s
        self.root.mkdir(parents=True, exist_ok=True)

    # ---- create / read / delete ----
    def create(self, data: bytes, real_person: bool, consent: str | None, save: bool) -> PersonaRecord:
        consent = _checked_consent(consent, real_person, "portrait")
        img, fmt = decode_portrait(data, self.limits)
        now = self.clock()
        record = PersonaRecord(
            persona_id="p_" + secrets.token_hex(12), created_at=now, real_person=real_person,
            consent=consent, consent_at=now if consent else None, save=save,
            width=img.width, height=img.height, source_format=fmt,
        )
        self._store(record, lambda d: img.save(d / "portrait.png"))
        return record

    def create_avatar(self, data: bytes, licence: object, real_person: bool, consent: str | None,
                      save: bool) -> PersonaRecord:
        """A user's avatar3d GLB; 422 `invalid_avatar` lists what TalkingHead would miss."""
        from models.avatar3d.glb import validate_avatar_glb  # numpy and json only

        consent = _checked_consent(consent, real_person, "avatar")
        licence = check_licence(licence)
        problems = validate_avatar_glb(data)
        if problems:
            raise ServiceError("invalid_avatar", "this GLB cannot be used as an avatar: " + "; ".join(problems))
        now = self.clock()
        record = PersonaRecord(
            persona_id="av_" + secrets.token_hex(12), created_at=now, real_person=real_person,
            consent=consent, consent_at=now if consent else None, save=save,
            source_format="GLB", kind="avatar", licence=licence, size_bytes=len(data),
        )
        self._store(record, lambda d: (d / "avatar.glb").write_bytes(data))
        return record

    def _store(self, record: PersonaRecord, write_media: Callable[[Path], object]) -> None:
        tmp = self.root / f".tmp-{record.persona_id}"
        (tmp / "sessions").mkdir(parents=True)
        write_media(tmp)
        (tmp / "meta.json").write_text(record.model_dump_json())
        tmp.rename(self._dir(record.persona_id))  # atomic: readers never see half a persona

    def get(self, persona_id: str) -> PersonaRecord:
        path = self._dir(_check_stored_id(persona_id)) / "meta.json"
        try:
            return PersonaRecord.model_validate_json(path.read_text())
        except FileNotFoundError:
            kind = "avatar" if persona_id.startswith("av_") else "persona"
            raise ServiceError(f"unknown_{kind}", f"no {kind} {persona_id!r}") from None

    def sessions_of(self, persona_id: str) -> list[str]:
        """The persona's live sessions: those whose host still heartbeats (orphans left out)."""
        live_hosts = self.live_hosts()
        return [m for m in self._markers(_check_stored_id(persona_id)) if _host_of(m) in live_hosts]

    def load_avatar(self, avatar_id: str) -> bytes:
        """An uploaded avatar's GLB."""
        try:
            return (self._dir(check_avatar_id(avatar_id)) / "avatar.glb").read_bytes()
        except FileNotFoundError:
            raise ServiceError("unknown_avatar", f"no avatar {avatar_id!r}") from None

    def load_media(self, persona_id: str) -> PersonaMedia:
        path = self._dir(check_persona_id(persona_id)) / "portrait.png"
        try:
            with Image.open(path) as img:
                frame = np.asarray(img.convert("RGB"))  # H×W×3 uint8 RGB
        except FileNotFoundError:
            raise ServiceError("unknown_persona", f"no persona {persona_id!r}") from None
        return PersonaMedia(frames=[frame])

    def delete(self, persona_id: str, force: bool = False) -> None:
        """Refused while live sessions use it; markers of crashed hosts do not count."""
        with self._locked():
            self.get(persona_id)
            users = self.sessions_of(persona_id)
            if users and not force:
                raise ServiceError("persona_in_use", f"persona is used by {len(users)} live session(s); close them first")
            shutil.rmtree(self._dir(persona_id), ignore_errors=True)

    # ---- session references ----
    def acquire(self, persona_id: str, session_id: str) -> None:
        """Mark the persona used by the session; its host heartbeats here too, so that another
        host's sweep never takes a marker made before the host's first sweep for an orphan."""
        with self._locked():
            self.get(persona_id)
            marker = self._marker(session_id)
            self.heartbeat(_host_of(marker))
            (self._dir(persona_id) / "sessions" / marker).touch()

    def release(self, persona_id: str, session_id: str) -> bool:
        """Drop a session's reference; deletes an unsaved persona with its last session. True if deleted."""
        with self._locked():
            d = self._dir(_check_stored_id(persona_id))
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
        """Remove the markers of sessions whose host is gone, then delete ephemeral personas
        left with no live session: at once if crashed sessions used them, else once no session
        has used them within ttl_s of their upload. Returns the deleted ids."""
        now = self.clock() if now is None else now
        deleted = []
        with self._locked():
            live_hosts = self.live_hosts(now)
            for d in [*self.root.glob("p_*"), *self.root.glob("av_*")]:
                if self._sweep_one(d.name, live_hosts, ttl_s, now):
                    shutil.rmtree(d, ignore_errors=True)
                    deleted.append(d.name)
            self._forget_dead_hosts(live_hosts)
        return deleted

    def _sweep_one(self, persona_id: str, live_hosts: set[str], ttl_s: float, now: float) -> bool:
        """Drop the persona's orphan markers; True if it is now to be deleted."""
        try:
            record = self.get(persona_id)
        except ServiceError:
            return False
        markers = self._markers(persona_id)
        orphans = [m for m in markers if _host_of(m) not in live_hosts]
        for marker in orphans:
            (self._dir(persona_id) / "sessions" / marker).unlink(missing_ok=True)
        if record.save or len(orphans) < len(markers):
            return False
        return bool(orphans) or now - record.created_at > ttl_s

    # ---- host liveness ----
    def heartbeat(self, host_id: str, now: float | None = None) -> None:
        """The host is alive at `now`: every SessionHost calls this on each sweep."""
        if not HOST_ID.match(host_id or ""):
            raise ValueError(f"bad host id {host_id!r}")
        now = self.clock() if now is None else now
        path = self.root / HOSTS_DIR / host_id
        path.parent.mkdir(exist_ok=True)
        path.touch()
        os.utime(path, (now, now))  # our clock, not the file system's: hosts on shared storage agree

    def live_hosts(self, now: float | None = None) -> set[str]:
        """Hosts that heartbeat within host_ttl_s of `now`."""
        now = self.clock() if now is None else now
        live = set()
        for path in self._heartbeat_files():
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime <= self.host_ttl_s:
                    live.add(path.name)
        return live

    def _forget_dead_hosts(self, live_hosts: set[str]) -> None:
        """Heartbeat files of hosts gone (a replaced replica never comes back under its id)."""
        for path in self._heartbeat_files():
            if path.name not in live_hosts:
                path.unlink(missing_ok=True)

    def _heartbeat_files(self) -> list[Path]:
        d = self.root / HOSTS_DIR
        return list(d.iterdir()) if d.is_dir() else []

    # ---- helpers ----
    def _dir(self, persona_id: str) -> Path:
        return self.root / persona_id

    def _markers(self, persona_id: str) -> list[str]:
        """Every session marker, live or orphan."""
        d = self._dir(persona_id) / "sessions"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

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


def _checked_consent(consent: object, real_person: bool, what: str) -> str | None:
    consent = check_consent(consent)
    if real_person and (consent is None or len(consent) < MIN_CONSENT_CHARS):
        raise ServiceError("consent_required",
            f"this {what} is of a real person: a consent statement (at least "
            f"{MIN_CONSENT_CHARS} characters) from that person is required, or set real_person=false",
        )
    return consent


def _host_of(session_id: str) -> str:
    """The host a session lives on: its id's prefix (`<host id>.<token>`)."""
    return session_id.partition(".")[0]
