"""Session-affinity routing on a real local Ray cluster, with concurrent calls from one request.

A WebSocket's stream and its first audio push, or the VRAM controller telling two
sessions of a shed, are calls made at the same time while one request is served.
Ray Serve 2.60 gives them one internal request id; through our custom request
router one of them then never reached a replica (deployments/calls.py says why).
"""
import asyncio

import httpx
import pytest
from ray import serve
from ray.serve.config import RequestRouterConfig

from deployments.ray_private import call
from deployments.session_router import host_of

pytestmark = pytest.mark.graph
APP = "affinity-check"


@serve.deployment(
    num_replicas=2, ray_actor_options={"num_cpus": 0.05}, max_ongoing_requests=100,
    request_router_config=RequestRouterConfig(
        request_router_class="deployments.session_router:SessionAffinityRouter"),
)
class Owner:
    """Stands in for a SessionHost: mints ids that name this replica, says who answered."""

    def __init__(self):
        self.me = serve.get_replica_context().replica_id.unique_id

    async def mint(self) -> str:
        return f"{self.me}.token"

    async def whoami(self, session_id: str) -> str:
        await asyncio.sleep(0.05)  # long enough for the calls to wait on the router together
        return self.me


@serve.deployment(ray_actor_options={"num_cpus": 0.05})
class Caller:
    def __init__(self, owner):
        self.owner = owner

    async def __call__(self, request) -> dict:
        session_ids: set[str] = set()
        for _ in range(40):  # new ids go to either replica: collect one from each
            session_ids.add(await call(self.owner.mint))
            if len({host_of(s) for s in session_ids}) == 2:
                break
        asked = sorted(session_ids) * 4
        try:
            answers = await asyncio.wait_for(
                asyncio.gather(*(call(self.owner.whoami, session_id=s) for s in asked)), 10)
        except TimeoutError:
            return {"hung": True}
        return {"asked": [host_of(s) for s in asked], "answered": answers}


@pytest.fixture(scope="module")
def caller(ray_serve):
    serve.run(Caller.bind(Owner.bind()), name=APP, route_prefix=f"/{APP}")
    yield f"{ray_serve}/{APP}"
    serve.delete(APP)


def test_concurrent_calls_from_one_request_all_reach_their_owner(caller):
    for _ in range(3):
        result = httpx.get(caller, timeout=30).json()
        assert not result.get("hung"), "a call from the request never reached a replica"
        assert len(set(result["asked"])) == 2, "the ids name both replicas"
        assert result["answered"] == result["asked"], "each call reached the replica its session id names"
