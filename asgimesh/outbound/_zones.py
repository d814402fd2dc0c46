"""Zone-aware routing: keep calls in the caller's zone while that zone is healthy and not
overloaded, and spill over to the other zones when it is not (istio#4702; Envoy's zone-aware
routing and Istio's locality failover are what users know).

Crossing zones costs twice: latency (a millisecond or more against tens of microseconds) and
money (clouds bill cross-zone traffic). So a caller in ``MESH_ZONE`` prefers the endpoints the
policy places in the same zone, but never at the price of failures or queueing:

- **healthy**: at least :data:`HEALTHY_SHARE` of the zone's endpoints are in rotation (not
  ejected by outlier detection). Below that the zone is failing, and what is left of it would
  take all of the zone's traffic; every zone's endpoints share the calls instead.
- **has capacity**: the balancer's pick in the zone costs (peak-EWMA latency times the queue a
  try would join) at most :data:`SPILL_FACTOR` times the cheapest of the other zones'. The other
  zones' latency already includes the crossing, so a call leaves the zone only when queueing in
  it costs more than twice the trip. Estimates of endpoints without news decay, so now and then
  one call crosses and refreshes the other zones' figures, which keeps the comparison honest.
- a retry goes to an endpoint of the zone the call has not tried yet, then to the other zones.

Pure: no clock, no random source of its own (the balancer has one), no I/O.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from ._balancer import Balancer
from ._endpoint import Endpoint

__all__ = ["HEALTHY_SHARE", "SPILL_FACTOR", "pick_by_zone"]

#: The share of the zone's endpoints that must be in rotation for calls to stay in it.
HEALTHY_SHARE = 0.5
#: Calls stay in the zone while its pick costs at most this many times the other zones' best.
SPILL_FACTOR = 2.0
#: Past this many endpoints in the other zones, their best cost is read from a sample of two.
SAMPLE_ABOVE = 4


def pick_by_zone(
    balancer: Balancer,
    local: Sequence[Endpoint],
    remote: Sequence[Endpoint],
    local_total: int,
    now: float,
    exclude: Collection[Endpoint] = (),
    rng: random.Random | None = None,
) -> tuple[Endpoint, bool]:
    """The endpoint of the next try and whether it is in the caller's zone.

    ``local``/``remote``: the endpoints in rotation in the caller's zone and in the others (not
    both empty); ``local_total``: how many the caller's zone has, ejected ones included;
    ``exclude``: the endpoints this call already tried. The balancer picks once, in the zone the
    call goes to (a round robin stays a round robin); the other zones' cost is read from a
    sample of two of them (``rng``) where they are many.
    """
    if not remote:
        return balancer.pick(local, now, exclude), True
    if not local or (exclude and all(endpoint in exclude for endpoint in local)):
        return balancer.pick(remote, now, exclude), False
    if len(local) < HEALTHY_SHARE * local_total:  # the zone is failing: every zone shares
        chosen = balancer.pick([*local, *remote], now, exclude)
        return chosen, chosen in local
    near = balancer.pick(local, now, exclude)
    if near.cost(now) <= SPILL_FACTOR * _cheapest(remote, now, rng):
        return near, True
    return balancer.pick(remote, now, exclude), False


def _cheapest(endpoints: Sequence[Endpoint], now: float, rng: random.Random | None) -> float:
    """The lowest cost among ``endpoints``, or among two drawn at random when there are many."""
    if len(endpoints) > SAMPLE_ABOVE and rng is not None:
        count = len(endpoints)
        return min(
            endpoints[int(rng.random() * count)].cost(now),
            endpoints[int(rng.random() * count)].cost(now),
        )
    return min(endpoint.cost(now) for endpoint in endpoints)
