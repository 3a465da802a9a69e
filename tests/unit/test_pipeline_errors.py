"""A pipeline's error keeps its code end to end: through Ray's wrappers to the edge's status,
and into a session's `error` event while the session goes on in still mode (no Ray cluster)."""
from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import RayTaskError

from deployments.api.edge import http_status, unwrap
from deployments.api.errors import ServiceError, pipeline_error, service_error
from deployments.session.engine import warm_up_error
from models.base import PersonaError, WeightsMissingError
from models.testing import PatternPipeline
from tests.unit.test_session import has, open_session, watch

NO_FACE = PersonaError("no face found in the portrait", code="no_face")


def ray_wrapped(err: BaseException, times: int = 1) -> BaseException:
    """`err` as a caller of a Serve replica sees it: Ray's task error posing as its cause."""
    for _ in range(times):
        err = RayTaskError("render", "Traceback: ...", err).as_instanceof_cause()
    return err


@pytest.mark.parametrize("times", [0, 1, 2])
def test_no_face_is_a_422_with_its_code_however_deep_ray_wrapped_it(times):
    err = unwrap(ray_wrapped(NO_FACE, times))
    assert isinstance(err, ServiceError)
    assert (http_status(err.code), err.code, err.reason) == (422, "no_face", "no face found in the portrait")


def test_missing_weights_are_a_409_and_other_errors_stay_what_they_are():
    err = service_error(ray_wrapped(WeightsMissingError("missing file; run `lockn-bod weights fetch ditto`")))
    assert (http_status(err.code), err.code) == (409, "weights_missing")
    crash = ray_wrapped(RuntimeError("CUDA error"))
    assert pipeline_error(crash) is None and unwrap(crash) is crash
    chained = RuntimeError("while preparing")
    chained.__cause__ = NO_FACE
    assert pipeline_error(chained) is NO_FACE


def test_a_session_warm_up_error_names_the_pipelines_code():
    assert warm_up_error("liveportrait", ray_wrapped(NO_FACE)).code == "no_face"
    timeout = warm_up_error("liveportrait", asyncio.TimeoutError())
    assert timeout.code == "backend_unavailable" and "TimeoutError" in timeout.reason


class FacelessPattern(PatternPipeline):
    """The pattern pipeline with a portrait in which its face detector finds no face."""

    def prepare(self, media, persona_id=""):
        raise NO_FACE


def test_a_faceless_portrait_gives_a_no_face_event_and_still_frames(store):
    async def main():
        session = await open_session(store, pipeline=FacelessPattern())
        events, frames = await watch(session, lambda e, f: has(e, "error") and len(f) >= 25)
        await session.close()
        return session, events, frames

    session, events, frames = asyncio.run(main())
    error = next(e for e in events if e["type"] == "error")
    assert error["code"] == "no_face" and "no face" in error["reason"]
    assert session.mode == "still" and len(frames) >= 25  # it keeps streaming the portrait


def test_a_viewer_that_joins_after_the_no_face_error_is_told_why_the_session_is_still(store):
    async def main():
        session = await open_session(store, pipeline=FacelessPattern())
        for _ in range(200):  # the warm-up fails with no viewer there to hear it
            if session._still_because is not None:
                break
            await asyncio.sleep(0.01)
        events, frames = await watch(session, lambda e, f: has(e, "error") and len(f) >= 5)
        await session.close()
        return events

    events = asyncio.run(main())
    assert [e["type"] for e in events[:2]] == ["session_ready", "error"]
    assert events[0]["mode"] == "still" and events[1]["code"] == "no_face"
