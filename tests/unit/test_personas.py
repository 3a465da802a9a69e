"""Persona store: validation, consent, limits, ids, ephemeral lifetime, orphans of crashed hosts."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from deployments.api.edge import http_status
from deployments.api.errors import ServiceError
from deployments.config import Limits
from deployments.inputs.personas import PersonaStore, decode_portrait


def image_bytes(w=128, h=96, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8)).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def store(tmp_path):
    return PersonaStore(tmp_path / "personas", Limits(max_upload_bytes=200_000, portrait_max_side_px=100))


def test_create_load_delete(store):
    record = store.create(image_bytes(fmt="WEBP"), real_person=False, consent=None, save=True)
    assert record.persona_id.startswith("p_") and record.source_format == "WEBP"
    assert (record.width, record.height) == (100, 75)  # downscaled to the portrait limit, aspect kept
    media = store.load_media(record.persona_id)
    assert media.frames[0].shape == (75, 100, 3)
    store.delete(record.persona_id)
    with pytest.raises(ServiceError) as err:
        store.get(record.persona_id)
    assert http_status(err.value.code) == 404


def test_real_person_needs_consent(store):
    with pytest.raises(ServiceError) as err:
        store.create(image_bytes(), real_person=True, consent="", save=False)
    assert err.value.code == "consent_required"
    record = store.create(image_bytes(), real_person=True, consent="I, Ada, agree to this use.", save=False)
    assert record.consent_at is not None


@pytest.mark.parametrize("data,status", [
    (b"not an image at all", 415),
    (b"GIF89a" + b"\x00" * 100, 415),
])
def test_bad_uploads(store, data, status):
    with pytest.raises(ServiceError) as err:
        store.create(data, real_person=False, consent=None, save=False)
    assert http_status(err.value.code) == status


def test_size_limits(store):
    with pytest.raises(ServiceError) as err:
        store.create(b"x" * 300_000, real_person=False, consent=None, save=False)
    assert http_status(err.value.code) == 413
    with pytest.raises(ServiceError) as err:
        store.create(image_bytes(20, 20), real_person=False, consent=None, save=False)
    assert http_status(err.value.code) == 422
    gif = io.BytesIO()
    Image.new("RGB", (80, 80)).save(gif, "GIF")
    with pytest.raises(ServiceError) as err:
        store.create(gif.getvalue(), real_person=False, consent=None, save=False)
    assert http_status(err.value.code) == 415


def test_client_ids_never_become_paths(store):
    for bad in ["../etc", "p_../../x", "p_" + "0" * 23 + "/", ""]:
        with pytest.raises(ServiceError) as err:
            store.get(bad)
        assert http_status(err.value.code) == 404


def test_ephemeral_persona_dies_with_its_last_session(store):
    record = store.create(image_bytes(), real_person=False, consent=None, save=False)
    pid = record.persona_id
    store.acquire(pid, "host1.aaaaaaaaaaaaaaaaaaaa")
    store.acquire(pid, "host1.bbbbbbbbbbbbbbbbbbbb")
    with pytest.raises(ServiceError) as err:
        store.delete(pid)
    assert http_status(err.value.code) == 409
    assert store.release(pid, "host1.aaaaaaaaaaaaaaaaaaaa") is False
    assert store.release(pid, "host1.bbbbbbbbbbbbbbbbbbbb") is True
    assert not (store.root / pid).exists()


def test_saved_persona_outlives_sessions_and_unused_are_swept(store):
    saved = store.create(image_bytes(), real_person=False, consent=None, save=True)
    store.acquire(saved.persona_id, "h.cccccccccccccccccccc")
    assert store.release(saved.persona_id, "h.cccccccccccccccccccc") is False
    unused = store.create(image_bytes(), real_person=False, consent=None, save=False)
    assert store.sweep_unused(ttl_s=60, now=unused.created_at + 30) == []
    assert store.sweep_unused(ttl_s=60, now=unused.created_at + 61) == [unused.persona_id]
    assert store.get(saved.persona_id)


# ---------------- orphans: markers of sessions whose host is gone ----------------
class FakeClock:
    """Seconds since the epoch, moved by the test."""

    def __init__(self, now_s: float = 1_700_000_000.0):
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def timed_store(tmp_path, clock):
    return PersonaStore(tmp_path / "personas", Limits(portrait_max_side_px=100), clock=clock, host_ttl_s=10.0)


def persona(store, save=False) -> str:
    return store.create(image_bytes(), real_person=False, consent=None, save=save).persona_id


def test_the_sessions_of_a_host_that_stops_heartbeating_stop_counting(timed_store, clock):
    kept, saved = persona(timed_store), persona(timed_store, save=True)
    timed_store.acquire(kept, "hostA.aaaaaaaaaaaaaaaaaaaa")
    timed_store.acquire(saved, "hostB.cccccccccccccccccccc")
    assert timed_store.live_hosts() == {"hostA", "hostB"}
    for _ in range(3):  # hostA keeps heartbeating; hostB has crashed
        clock.now_s += 5
        timed_store.heartbeat("hostA")
    assert timed_store.live_hosts() == {"hostA"}
    assert timed_store.sessions_of(kept) == ["hostA.aaaaaaaaaaaaaaaaaaaa"]
    assert timed_store.sessions_of(saved) == []  # the crashed session no longer counts


def test_sweep_deletes_an_unsaved_persona_once_its_sessions_host_is_gone(timed_store, clock):
    kept, lost, saved = persona(timed_store), persona(timed_store), persona(timed_store, save=True)
    timed_store.acquire(kept, "hostA.aaaaaaaaaaaaaaaaaaaa")
    timed_store.acquire(lost, "hostB.bbbbbbbbbbbbbbbbbbbb")
    timed_store.acquire(saved, "hostB.cccccccccccccccccccc")
    clock.now_s += 8
    timed_store.heartbeat("hostA")
    assert timed_store.sweep_unused(ttl_s=600) == []  # hostB is 8 s quiet: within its 10 s
    clock.now_s += 8
    timed_store.heartbeat("hostA")
    assert timed_store.sweep_unused(ttl_s=600) == [lost]  # at once, long before the unused TTL
    assert sorted(p.name for p in timed_store.root.glob("p_*")) == sorted([kept, saved])
    assert not (timed_store.root / saved / "sessions" / "hostB.cccccccccccccccccccc").exists()
    assert not (timed_store.root / ".hosts" / "hostB").exists()  # a gone host's heartbeat is forgotten
    timed_store.delete(saved)  # no 409: nothing live uses it


def test_delete_ignores_a_crashed_hosts_marker_without_a_sweep(timed_store, clock):
    pid = persona(timed_store, save=True)
    timed_store.acquire(pid, "hostB.bbbbbbbbbbbbbbbbbbbb")
    with pytest.raises(ServiceError) as err:
        timed_store.delete(pid)
    assert err.value.code == "persona_in_use"
    clock.now_s += 11
    timed_store.delete(pid)
    assert not (timed_store.root / pid).exists()


def test_a_marker_from_a_host_that_never_heartbeat_is_an_orphan(timed_store):
    """As a marker left by an earlier server run: its host id never heartbeat in this directory."""
    unsaved, saved = persona(timed_store), persona(timed_store, save=True)
    for pid in (unsaved, saved):
        (timed_store.root / pid / "sessions" / "oldrun.dddddddddddddddddddd").touch()
    assert timed_store.sessions_of(saved) == []
    timed_store.delete(saved)
    assert timed_store.sweep_unused(ttl_s=600) == [unsaved]


def test_a_session_is_live_from_its_acquire_before_its_hosts_first_sweep(timed_store, clock):
    pid = persona(timed_store)
    timed_store.acquire(pid, "fresh.eeeeeeeeeeeeeeeeeeee")  # no heartbeat() call yet
    assert timed_store.sweep_unused(ttl_s=600) == []
    assert timed_store.sessions_of(pid) == ["fresh.eeeeeeeeeeeeeeeeeeee"]


def test_release_deletes_an_unsaved_persona_when_only_orphans_remain(timed_store, clock):
    pid = persona(timed_store)
    timed_store.acquire(pid, "hostB.bbbbbbbbbbbbbbbbbbbb")
    clock.now_s += 11
    timed_store.acquire(pid, "hostA.aaaaaaaaaaaaaaaaaaaa")
    assert timed_store.release(pid, "hostA.aaaaaaaaaaaaaaaaaaaa") is True


def test_heartbeats_share_one_clock_through_the_directory(tmp_path, clock):
    """Two stores on one directory (two processes): one's heartbeat is seen by the other."""
    host = PersonaStore(tmp_path / "p", clock=clock, host_ttl_s=10.0)
    router = PersonaStore(tmp_path / "p", clock=clock, host_ttl_s=10.0)
    host.heartbeat("hostA")
    assert router.live_hosts() == {"hostA"}
    clock.now_s += 11
    assert router.live_hosts() == set()
    with pytest.raises(ValueError):
        host.heartbeat("../x")


# ---------------- consent text ----------------
@pytest.mark.parametrize("consent", [
    "I, Ada, agree\x00 to this use.",
    "I, Ada, agree to \x1b[2Jthis use.",
    "I, Ada, agree to this use.\x7f",
    "I, Ada, agree to \u202ethis use.",  # right-to-left override: the record would read reversed
    "I, Ada, agree to \u2066this\u2069 use.",
    "I, Ada, agree to this use.\ud800",  # a lone surrogate cannot even be stored as UTF-8
    "I, Ada, agree to this use. " * 200,
])
def test_consent_with_control_characters_is_refused(store, consent):
    with pytest.raises(ServiceError) as err:
        store.create(image_bytes(), real_person=True, consent=consent, save=False)
    assert err.value.code == "invalid_consent" and http_status("invalid_consent") == 422


def test_consent_keeps_line_breaks_and_any_script(store):
    text = "I, Ada Lovelace,\r\nconsent\tto this — 我同意 — أوافق"
    assert store.create(image_bytes(), real_person=True, consent=text, save=False).consent == text


def test_consent_that_is_not_text_is_refused(store):
    with pytest.raises(ServiceError) as err:
        store.create(image_bytes(), real_person=True, consent=io.BytesIO(b"a file"), save=False)
    assert err.value.code == "invalid_consent"


# ---------------- images that once answered 500 or the wrong status ----------------
def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with(extra: bytes, before_idat: bool = True) -> bytes:
    """A valid PNG with `extra` chunks after IHDR (read at open) or before IEND (read at load)."""
    png = image_bytes()
    ihdr_end, iend = 8 + 25, len(png) - 12
    return png[:ihdr_end] + extra + png[ihdr_end:] if before_idat else png[:iend] + extra + png[iend:]


@pytest.mark.parametrize("chunk", [
    png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\x00" * 20_000_000, 9)),
    png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(b"\x00" * 68_000_000, 9)),
    png_chunk(b"iTXt", b"Comment\x00\x01\x00\x00\x00" + zlib.compress(b"\x00" * 20_000_000, 9)),
])
@pytest.mark.parametrize("before_idat", [True, False])
def test_png_metadata_that_inflates_past_pillows_limit_is_too_large(store, chunk, before_idat):
    with pytest.raises(ServiceError) as err:
        decode_portrait(png_with(chunk, before_idat), Limits())
    assert err.value.code == "too_large" and http_status("too_large") == 413


def test_a_60000_pixel_square_is_413_as_documented(store):
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
    png = b"\x89PNG\r\n\x1a\n" + ihdr + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b"")
    with pytest.raises(ServiceError) as err:
        store.create(png, real_person=False, consent=None, save=False)
    assert err.value.code == "too_large" and http_status(err.value.code) == 413


def test_a_phone_cameras_multi_picture_jpeg_is_a_jpeg(store):
    buf = io.BytesIO()
    Image.new("RGB", (80, 80), "red").save(buf, "MPO", save_all=True, append_images=[Image.new("RGB", (80, 80))])
    record = store.create(buf.getvalue(), real_person=False, consent=None, save=False)
    assert record.source_format == "MPO" and store.load_media(record.persona_id).frames[0][0, 0, 0] > 200


# ---- avatar3d's avatars live in the same store ----
def avatar_glb() -> bytes:
    from tests.unit.test_avatar_glb import glb

    return glb()


def test_an_avatar_is_stored_with_its_licence_and_consent_and_goes_with_its_last_session(store):
    record = store.create_avatar(avatar_glb(), "CC0-1.0", real_person=True,
                                 consent="I, Ada Lovelace, consent to this avatar of my face", save=False)
    assert record.persona_id.startswith("av_") and (record.kind, record.licence) == ("avatar", "CC0-1.0")
    assert store.load_avatar(record.persona_id) == avatar_glb()
    store.acquire(record.persona_id, "h.abcdefghijklmnopqrstuv")
    with pytest.raises(ServiceError) as in_use:
        store.delete(record.persona_id)
    assert in_use.value.code == "persona_in_use"
    assert store.release(record.persona_id, "h.abcdefghijklmnopqrstuv")  # unsaved: deleted with it
    with pytest.raises(ServiceError) as gone:
        store.load_avatar(record.persona_id)
    assert gone.value.code == "unknown_avatar"


@pytest.mark.parametrize("licence, real_person, consent, code", [
    ("", False, None, "licence_required"),
    (None, False, None, "licence_required"),
    ("CC0\nand more", False, None, "invalid_licence"),
    ("x" * 201, False, None, "invalid_licence"),
    ("CC0-1.0", True, None, "consent_required"),
])
def test_an_avatar_without_a_licence_or_consent_is_refused(store, licence, real_person, consent, code):
    with pytest.raises(ServiceError) as err:
        store.create_avatar(avatar_glb(), licence, real_person=real_person, consent=consent, save=False)
    assert err.value.code == code and http_status(code) == 422


def test_a_glb_talkinghead_cannot_drive_is_refused_with_what_it_lacks(store):
    from tests.unit.test_avatar_glb import glb

    with pytest.raises(ServiceError) as err:
        store.create_avatar(glb(morphs=()), "CC0-1.0", real_person=False, consent=None, save=False)
    assert err.value.code == "invalid_avatar" and "viseme_aa" in str(err.value)
    assert not list(store.root.glob("av_*"))


def test_the_sweep_deletes_an_unused_unsaved_avatar(store):
    record = store.create_avatar(avatar_glb(), "CC0-1.0", real_person=False, consent=None, save=False)
    assert store.sweep_unused(ttl_s=600, now=record.created_at + 601) == [record.persona_id]
