"""Provenance end to end without Ray: a session's frames and a one-shot render carry the
session's mark, the render its signed manifest, the ledger says whose; `lockn-bod verify`."""
import asyncio
import io
import json

import numpy as np
import pytest
from PIL import Image

from deployments.config import AppArgs
from deployments.inputs.personas import PersonaStore
from deployments.rendering.local import LocalBackend
from deployments.session.manager import SessionManager
from deployments.transports.provenance import Provenance, tag_hex
from models.base import Controls
from models.cli import main as cli
from models.provenance.keys import load_keys
from models.provenance.watermark import FrameMarker
from models.still import StillPipeline
from tests.speech import espeak_16k, needs_espeak


def portrait(side: int = 256) -> bytes:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    image = np.stack([yy, xx, (yy + xx) // 2], -1) * (200 / side) + rng.normal(0, 6, (side, side, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def manager(tmp_path):
    args = AppArgs(data_dir=tmp_path)
    store = PersonaStore(args.persona_dir)
    store.record = store.create(portrait(), real_person=False, consent=None, save=True)
    still = LocalBackend(StillPipeline(), store, inline=True)
    return SessionManager(args, store, host_id="h", still=still, provenance=Provenance.from_args(args))


def verify(path, data_dir, *extra) -> tuple[int, dict]:
    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        code = cli(["verify", str(path), "--data-dir", str(data_dir), "--json", *extra])
    return code, json.loads(out.getvalue())


@needs_espeak
def test_a_render_is_marked_signed_and_traced_to_its_job(manager, tmp_path):
    audio = espeak_16k("Provenance test.")
    mp4 = asyncio.run(manager.render_offline(manager.store.record.persona_id, "still", audio, Controls()))
    path = tmp_path / "render.mp4"
    path.write_bytes(mp4)
    code, report = verify(path, tmp_path)
    assert code == 0 and report["c2pa_state"] == "Trusted"
    assert report["watermark_tag"] == report["declared"]["watermark_tag"]
    assert [e["event"] for e in report["ledger"]] == ["start", "end"] and report["ledger"][0]["mode"] == "still"

    changed = bytearray(mp4)
    changed[-300] ^= 0x01
    (tmp_path / "changed.mp4").write_bytes(bytes(changed))
    assert verify(tmp_path / "changed.mp4", tmp_path)[0] == 1


def test_a_session_s_frames_carry_its_tag_and_two_sessions_differ(manager, tmp_path):
    async def main():
        tags, frames = [], []
        for _ in range(2):
            info = await manager.create_session(manager.store.record.persona_id, "still", 16000, Controls())
            session = manager.get(info["session_id"])
            viewer = session.subscribe()
            jpegs = []
            while len(jpegs) < 10:
                item = await asyncio.wait_for(viewer.queue.get(), 5)
                jpegs += getattr(item, "jpegs", [])
            tags.append(session.mark_tag)
            frames.append([np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs])
        await manager.shutdown()
        return tags, frames

    tags, frames = asyncio.run(main())
    assert tags[0] != tags[1]
    marker = FrameMarker(load_keys(tmp_path).watermark_secret)
    for tag, session_frames in zip(tags, frames):
        reading = marker.read(np.stack(session_frames))
        assert reading.tag == tag and reading.matches(tag)
    jpeg = tmp_path / "frame.jpg"
    Image.fromarray(frames[0][0]).save(jpeg, quality=90)
    code, report = verify(jpeg, tmp_path)
    assert code == 0 and report["c2pa_state"] == "none" and report["watermark_tag"] == tag_hex(tags[0])
    assert report["ledger"][0]["session_id"].startswith("h.")


def test_a_live_session_s_poster_is_signed_and_declares_its_tag(manager, tmp_path):
    async def main():
        info = await manager.create_session(manager.store.record.persona_id, "still", 16000, Controls())
        session = manager.get(info["session_id"])
        viewer = session.subscribe()
        while session.last_jpeg is None:
            await asyncio.wait_for(viewer.queue.get(), 5)
        poster = await manager.provenance_poster(info["session_id"])
        await manager.shutdown()
        return poster, session.mark_tag

    poster, tag = asyncio.run(main())
    path = tmp_path / "poster.jpg"
    path.write_bytes(poster)
    code, report = verify(path, tmp_path)
    assert code == 0 and report["c2pa_state"] == "Trusted"
    assert report["declared"]["watermark_tag"] == report["watermark_tag"] == tag_hex(tag)


def test_unmarked_unsigned_files_are_nothing_found(tmp_path):
    Provenance(tmp_path)  # keys and a ledger exist, but this file never met them
    path = tmp_path / "photo.png"
    path.write_bytes(portrait(300))
    code, report = verify(path, tmp_path)
    assert code == 3 and report["watermark_tag"] is None and report["c2pa_state"] == "none"


def test_provenance_off_marks_and_signs_nothing(tmp_path):
    args = AppArgs(data_dir=tmp_path, provenance={"enabled": False})
    store = PersonaStore(args.persona_dir)
    store.record = store.create(portrait(), real_person=False, consent=None, save=True)
    manager = SessionManager(args, store, host_id="h", still=LocalBackend(StillPipeline(), store, inline=True),
                             provenance=Provenance.from_args(args))

    async def main():
        info = await manager.create_session(store.record.persona_id, "still", 16000, Controls())
        ready = manager.get(info["session_id"]).subscribe().queue.get_nowait().event
        await manager.shutdown()
        return ready

    assert asyncio.run(main()).provenance is False
    assert not (tmp_path / "keys").exists()


def test_a_backend_replica_marks_the_frames_it_encodes_with_the_session_s_tag(tmp_path):
    """The remote path: BackendDeployment marks after the pipeline, before the JPEGs, from the
    keys in the data folder, for the tag the session's FrameFormat carries."""
    from deployments.backend import BackendDeployment
    from deployments.transports.encode import FrameFormat, decode_jpeg
    from models.modes import build_pipeline

    keys_at = Provenance(tmp_path)  # as the SessionHost does at its start
    backend = BackendDeployment("pattern", str(tmp_path / "personas"), {"size": 256}, chunk_frames=5,
                                pipeline_factory=build_pipeline, data_dir=str(tmp_path))
    pipeline = backend.pipeline
    persona = pipeline.prepare(None)
    tag = keys_at.tag("h.someone")
    encoded, _ = backend._rendered(FrameFormat(90, raw=True, mark_tag=tag), pipeline.idle, persona,
                                   pipeline.start(persona, Controls()), 25, Controls())
    frames = np.stack([decode_jpeg(j) for j in encoded.jpegs])
    assert keys_at.marker.read(frames).matches(tag, max_bit_errors=0)
    assert keys_at.marker.read(encoded.raw).matches(tag, max_bit_errors=0)  # WebRTC's raw frames too
    plain, _ = backend._rendered(FrameFormat(90), pipeline.idle, persona, pipeline.start(persona, Controls()), 25,
                                 Controls())
    assert not keys_at.marker.read(np.stack([decode_jpeg(j) for j in plain.jpegs])).matches(tag)
