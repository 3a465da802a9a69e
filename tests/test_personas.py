"""Persona store: validation, consent, limits, ids, ephemeral lifetime."""
import io

import numpy as np
import pytest
from PIL import Image

from deployments.api.edge import http_status
from deployments.api.errors import ServiceError
from deployments.config import Limits
from deployments.inputs.personas import PersonaStore


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
