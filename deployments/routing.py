"""Query-cache affinity: calls about the same query go to the same scorer replica.

A Ray Serve request router for the Scorer deployment. The first argument of a scorer call (a query, or
a list of queries whose first one counts) carries the query key; replicas are ranked by rendezvous hashing of that key (`scoring.store.affinity`), the home
replica first. Serve takes the first rank that has room, so a busy home spills to the next replica
instead of queueing, and a call without a key is routed by load as usual.
"""

from __future__ import annotations

from typing import List, Optional

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from scoring.store.affinity import rendezvous_order


def routing_key(request: Optional[PendingRequest]) -> str | None:
    if request is None or not request.args:
        return None
    first = request.args[0]
    if isinstance(first, list) and first:  # Scorer.score(queries, documents): the first query routes
        first = first[0]
    key = getattr(first, "key", None)
    return key if isinstance(key, str) else None


class QueryAffinityRouter(RequestRouter):
    async def choose_replicas(
        self,
        candidate_replicas: List[RunningReplica],
        pending_request: Optional[PendingRequest] = None,
    ) -> List[List[RunningReplica]]:
        key = routing_key(pending_request)
        if key is None:
            return [candidate_replicas]
        ordered = rendezvous_order(key, candidate_replicas, ident=lambda r: r.replica_id.unique_id)
        return [[replica] for replica in ordered]
