"""Session affinity: every call for a session reaches the SessionHost replica that holds it.

A session id is `<host replica unique id>.<random token>`, minted by the host
that creates the session. Calls carry `session_id=` as a keyword argument;
this request router sends them to that replica. Calls without a session id
(creating a session) may go to any host. If the owning replica is gone, the
call goes to any replica, which answers "unknown session" (404), so nothing
waits for a replica that will never come back.
"""
from __future__ import annotations

import random

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica


def host_of(session_id: str) -> str:
    return session_id.split(".", 1)[0]


class SessionAffinityRouter(RequestRouter):
    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        session_id = (pending_request.kwargs or {}).get("session_id") if pending_request else None
        if session_id:
            owner = host_of(str(session_id))
            match = [r for r in candidate_replicas if r.replica_id.unique_id == owner]
            if match:
                return [match]
        # New sessions (or a lost owner): two random hosts; the base class picks the less loaded.
        return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]
