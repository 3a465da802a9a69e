"""What a session renders with (deployments/rendering) and the backend deployment's
construction (deployments/backend.py), without Ray: plain objects, fake handles."""
import asyncio
import io
import inspect

import numpy as np
import pytest
from PIL import Image
from ray import serve

from deployments.backend import BackendDeployment
from deployments.inputs.personas import PersonaStore
from deployments.rendering.gated import GatedBackend
from deployments.rendering.interface import Backend, IdleHold
from deployments.rendering.local import LocalBackend
from deployments.rendering.remote import RemoteBackend
from deployments.transports.encode import FrameFormat
from models.base import SAMPLES_PER_FRAME, Controls
from models.testing import PatternCarry, PatternPipeline

AUDIO = np.zeros(10 * SAMPLES_PER_FRAME, np.float32)  # (samples,) 10 frames of silence
JPEG_ONLY, RAW_TOO = FrameFormat(jpeg_quality=80), FrameFormat(jpeg_quality=80, raw=True)


@pytest.fixture
def store(tmp_path):
    s = PersonaStore(tmp_path / "personas")
    s.record = s.create(_png((90, 90, 90)), real_person=False, consent=None, save=True)
    return s


class Recording(Backend):
    """A backend that answers every call with what it was asked."""

    mode = "recording"

    async def _forward(self, method, persona_id, *args):
        return method, persona_id, args


def test_every_call_of_the_interface_is_forwarded_once_with_its_arguments():
    backend, c = Recording(), Controls()

    async def main():
        return [await backend.start("p", c), await backend.render("p", "carry", AUDIO, c, JPEG_ONLY),
                await backend.flush("p", "carry", c), await backend.idle("p", "carry", 3, c, RAW_TOO),
                await backend.interrupt("p", "carry", c), await backend.plan("p", "carry", AUDIO, c),
                await backend.warnings("p")]

    answers = asyncio.run(main())
    assert [(m, p) for m, p, _ in answers] == [(m, "p") for m in
                                              ("start", "render", "flush", "idle", "interrupt", "plan", "warnings")]
    assert answers[1][2] == ("carry", AUDIO, c, JPEG_ONLY) and answers[2][2] == ("carry", c, None)
    assert answers[3][2] == ("carry", 3, c, RAW_TOO) and answers[6][2] == ()
    coroutines = {name for name, f in inspect.getmembers(Backend, inspect.iscoroutinefunction) if name[0] != "_"}
    assert coroutines == {m for m, _, _ in answers}, "a call of the interface that is not forwarded"


def test_a_local_backend_runs_its_pipeline_and_returns_raw_frames_whatever_the_format(store):
    backend = LocalBackend(PatternPipeline(size=16, lookahead_frames=2), store)
    pid, c = store.record.persona_id, Controls()

    async def main():
        carry = await backend.start(pid, c)
        frames, carry = await backend.render(pid, carry, AUDIO, c, JPEG_ONLY)
        tail, carry = await backend.flush(pid, carry, c, JPEG_ONLY)
        idle, carry = await backend.idle(pid, carry, 4, c, RAW_TOO)
        return frames, tail, idle, await backend.interrupt(pid, carry, c), await backend.warnings(pid)

    frames, tail, idle, carry, warnings = asyncio.run(main())
    assert frames.shape == (8, 16, 16, 3) and frames.dtype == np.uint8  # 10 frames less the 2 held
    assert len(tail) == 2 and len(idle) == 4
    assert isinstance(carry, PatternCarry) and warnings == []


def test_a_local_backends_persona_cache_holds_max_personas(store):
    backend = LocalBackend(PatternPipeline(size=16), store, max_personas=1)
    other = store.create(_png((30, 120, 30)), real_person=False, consent=None, save=True)

    async def main():
        first = await backend.personas.get(store.record.persona_id)
        await backend.personas.get(other.persona_id)
        return first is await backend.personas.get(store.record.persona_id)

    assert backend.personas.capacity == 1 and not asyncio.run(main()), "the first persona was dropped"


def _png(rgb: tuple[int, int, int]) -> bytes:
    """A 64×64 portrait of one colour, as a PNG upload."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), rgb).save(buf, "PNG")
    return buf.getvalue()


def pattern_factory(mode: str, **options) -> PatternPipeline:
    return PatternPipeline(**options)


def test_an_idle_hold_is_open_until_the_session_cancels_it():
    async def main():
        stream = Recording().hold("p")
        held = asyncio.ensure_future(_drain(stream))
        await asyncio.sleep(0.05)
        still_open = not held.done()
        stream.cancel()
        await asyncio.wait_for(held, 1.0)
        return still_open

    assert asyncio.run(main())


async def _drain(stream) -> None:
    async for _ in stream:
        pass


class FakeHandle:
    """A deployment handle that notes each call: (method, options, args)."""

    def __init__(self):
        self.calls = []

    def options(self, **options):
        return _Bound(self, options)


class _Bound:
    def __init__(self, handle, options):
        self.handle, self.options = handle, options

    def __getattr__(self, method):
        return _Method(self, method)


class _Method:
    def __init__(self, bound, method):
        self.bound, self.method = bound, method

    def remote(self, *args):
        self.bound.handle.calls.append((self.method, self.bound.options, args))
        return _Answer(("answer", None))


class _Answer:
    """What a DeploymentResponse is to its caller: awaited once."""

    def __init__(self, value):
        self.value = value

    def __await__(self):
        yield from ()
        return self.value


def test_a_remote_backend_sends_jpegs_and_interrupts_direct_and_the_rest_through_the_object_store():
    handle, c = FakeHandle(), Controls()
    backend = RemoteBackend("pattern", handle)

    async def main():
        await backend.start("p", c)
        await backend.render("p", "carry", AUDIO, c, JPEG_ONLY)
        await backend.render("p", "carry", AUDIO, c, RAW_TOO)
        await backend.idle("p", "carry", 2, c, None)
        await backend.interrupt("p", "carry", c)
        await backend.plan("p", "carry", AUDIO, c)
        await backend.warnings("p")
        backend.hold("p")

    asyncio.run(main())
    direct = {"_by_reference": False, "multiplexed_model_id": "p"}
    stored = {"multiplexed_model_id": "p", "stream": False}
    assert [(m, o) for m, o, _ in handle.calls] == [
        ("start", stored), ("render", direct), ("render", stored), ("idle", stored), ("interrupt", direct),
        ("plan", stored), ("warnings", stored), ("hold", {"multiplexed_model_id": "p", "stream": True})]
    assert handle.calls[1][2] == ("carry", AUDIO, c, JPEG_ONLY), "the persona is the multiplex id, not an argument"


def test_a_gated_backend_forwards_to_the_resident_backend_and_holds_nothing():
    handle = FakeHandle()
    gate = GatedBackend("s1", "pattern", {"pattern": RemoteBackend("pattern", handle)}, vram=None, ready_timeout_s=1)
    gate.remote = gate.remotes["pattern"]
    assert asyncio.run(gate.plan("p", "carry", AUDIO, Controls()))[0] == "answer"
    assert asyncio.run(gate.warnings("p"))[0] == "answer"
    assert isinstance(gate.hold("p"), IdleHold), "the controller, not held calls, keeps its backends up"
    assert [m for m, _, _ in handle.calls] == ["plan", "warnings"]


def test_a_backend_deployment_builds_its_pipeline_with_the_factory_it_is_given(tmp_path):
    built = []

    def factory(mode, **options):
        built.append((mode, options))
        return PatternPipeline(**options)

    backend = BackendDeployment("pattern", str(tmp_path), {"size": 16, "cuda_memory_fraction": 0.5}, chunk_frames=5,
                                pipeline_factory=factory)
    assert built == [("pattern", {"size": 16})], "the deployment's own option is not the pipeline's"
    assert isinstance(backend.pipeline, PatternPipeline) and backend.pipeline.size == 16


def test_max_personas_per_replica_sizes_serve_multiplexing(store, monkeypatch):
    capacities, loaded = [], []

    def multiplexed(max_num_models_per_replica):
        capacities.append(max_num_models_per_replica)

        def wrap(load):
            async def load_model(model_id):
                loaded.append(model_id)
                return await load(model_id)

            return load_model

        return wrap

    monkeypatch.setattr(serve, "multiplexed", multiplexed)
    backend = BackendDeployment("pattern", str(store.root), {"size": 16}, pipeline_factory=pattern_factory,
                                max_personas=2)
    persona = asyncio.run(backend.get_persona(store.record.persona_id))
    assert capacities == [2] and loaded == [store.record.persona_id]
    assert persona.persona_id == store.record.persona_id and persona.media.frames[0].shape == (64, 64, 3)


def test_the_graph_gives_backends_the_real_factory_the_persona_count_and_the_keys_folder():
    from deployments.config import AppArgs, BackendArgs
    from graph import backend_kwargs
    from models.modes import build_pipeline

    args = AppArgs(data_dir="/srv/bod")
    assert backend_kwargs(BackendArgs(max_personas_per_replica=3), args) == {
        "pipeline_factory": build_pipeline, "max_personas": 3, "data_dir": "/srv/bod", "batch_sessions": 1}
    assert backend_kwargs(BackendArgs(batch_sessions=8), args)["batch_sessions"] == 8
    off = AppArgs(data_dir="/srv/bod", provenance={"enabled": False})
    assert backend_kwargs(BackendArgs(), off)["data_dir"] is None


def test_both_backend_deployments_take_every_keyword_the_graph_gives():
    import inspect

    from deployments.backend import LeasedBackendDeployment
    from deployments.config import AppArgs, BackendArgs
    from graph import backend_kwargs

    given = set(backend_kwargs(BackendArgs(), AppArgs()))
    for deployment in (BackendDeployment, LeasedBackendDeployment):
        assert given <= set(inspect.signature(deployment.__init__).parameters), deployment.__name__
