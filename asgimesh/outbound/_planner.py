"""The call planner: from a request's method, host and path to a :class:`Call`, or pass-through.

Holds what outlives a call: the compiled policy (recompiled only when the runtime's snapshot is a
different object, so a policy change applies to the next call without a new client) and one
:class:`Upstream` per service (endpoints and their statistics). It picks the call's config
(service and route), its backend (traffic split), its injected fault and whether it is mirrored
(a :class:`Mirror`, within this transport's in-flight cap); the :class:`Call` then runs the
protocol. Each transport owns one planner; the clock and the random source are injected
so tests drive it deterministically.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from .._context import current_context
from .._runtime import MeshRuntime
from ..policy import PolicySnapshot
from ._call import Call
from ._compile import CallConfig, CompiledPolicy, HeaderLookup, MirrorConfig, compile_policy
from ._hedge import HedgedCall
from ._metrics import UpstreamMetrics
from ._mirror import Mirror, MirrorGate
from ._traffic import choose_backend, draw_fault, draw_mirror
from ._upstream import Upstream

__all__ = ["CallPlanner"]

#: Pass-through hosts measured at most: metric labels must not grow without bound.
MAX_PASSTHROUGH_HOSTS = 1000


class CallPlanner:
    def __init__(
        self,
        runtime: MeshRuntime,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.runtime = runtime
        self._on_request = runtime.on_request
        self.clock = clock
        #: ``MESH_MTLS=strict``: calls to mesh services go to https (mTLS) endpoints only.
        self.strict = runtime.settings.mtls == "strict"
        #: ``MESH_ZONE``: where calls with ``zone_affinity`` prefer to stay.
        self.zone = runtime.settings.zone
        self.rng = rng if rng is not None else random.Random()  # noqa: S311 - not for secrets
        self._lock = threading.Lock()
        self._snapshot: PolicySnapshot | None = None
        self._compiled = CompiledPolicy({}, {})
        self.upstreams: dict[str, Upstream] = {}
        self._passthrough: dict[str, UpstreamMetrics] = {}
        #: This transport's mirrors in flight, and their cap.
        self.mirrors = MirrorGate()

    def compiled(self) -> CompiledPolicy:
        """The compiled policy of the snapshot in force (compiled once per snapshot)."""
        snapshot = self.runtime.policy.current
        if snapshot is not self._snapshot:
            with self._lock:
                if snapshot is not self._snapshot:
                    self._apply(snapshot)
        return self._compiled

    def _apply(self, snapshot: PolicySnapshot) -> None:
        compiled = compile_policy(snapshot.policy)
        now = self.clock()
        for name, backend in compiled.backends.items():
            upstream = self.upstreams.get(name)
            if upstream is None:
                self.upstreams[name] = Upstream(
                    backend, self.runtime.metrics, self.rng, now, self.zone
                )
            else:
                upstream.configure(backend, now)
        for name in [n for n in self.upstreams if n not in compiled.backends]:
            del self.upstreams[name]
        self._compiled, self._snapshot = compiled, snapshot

    def plan(
        self,
        method: str,
        host: str,
        path: str,
        *,
        replayable: bool,
        header: HeaderLookup | None = None,
        query: bytes | str = b"",
    ) -> Call | None:
        """The call to ``host`` (lower case, as httpx gives it) if it names a mesh service,
        else ``None`` (pass-through). ``header`` and ``query`` serve routes that match on them."""
        if self._on_request is not None:
            self._on_request()  # serverless policy refresh: starts one if due, never waits
        compiled = self.compiled()
        routes = compiled.services.get(host)
        if routes is None:
            return None
        config = routes.config_for(method, path, header, query)
        backend = config.service or routes.name
        if config.split:
            backend = choose_backend(backend, config.split, self.rng)
        delay, abort = (0.0, None) if config.fault is None else draw_fault(config.fault, self.rng)
        upstream = self.upstreams[backend]
        kind = Call if config.hedge is None else _kind(config, method, replayable)
        call = kind(
            upstream,
            config,
            method,
            replayable=replayable,
            now=self.clock(),
            rng=self.rng,
            context=current_context(),
            delay=delay,
            abort=abort,
            strict=self.strict,
            by_zone=(
                upstream.config.zone_affinity
                if config.zone_affinity is None
                else config.zone_affinity
            ),
        )
        mirror = config.mirror
        # An aborted call sends nothing, so nothing is copied (Envoy's fault filter runs before
        # its router mirrors); a call that itself goes to the mirror target is not copied to it.
        if mirror is not None and abort is None and mirror.service != backend:
            call.mirror = self._mirror(mirror, call, replayable)
        return call

    def _mirror(self, mirror: MirrorConfig, call: Call, replayable: bool) -> Mirror | None:
        """The drawn share of calls gets a :class:`Mirror`, unless its body cannot be sent
        twice (``skipped``: a stream is read once, by the call) or the cap is reached
        (``dropped``). Counted under the mirror target."""
        if not draw_mirror(mirror, self.rng):
            return None
        upstream = self.upstreams[mirror.service]
        if not replayable:
            upstream.metrics.mirror("skipped")
            return None
        if not self.mirrors.acquire():
            upstream.metrics.mirror("dropped")
            return None
        return Mirror(upstream, self.mirrors, call, self.clock())

    def passthrough_metrics(self, host: str) -> UpstreamMetrics | None:
        """Metric children for a host that is not a mesh service (labelled with the host)."""
        metrics = self._passthrough.get(host)
        if metrics is None and len(self._passthrough) < MAX_PASSTHROUGH_HOSTS:
            metrics = UpstreamMetrics(self.runtime.metrics, host)
            self._passthrough[host] = metrics
        return metrics


def _kind(config: CallConfig, method: str, replayable: bool) -> type[Call]:
    """A hedge policy hedges only what may be sent twice: an idempotent call (its method, or
    the route's ``idempotent: true``) whose body can be sent again."""
    return HedgedCall if replayable and config.is_idempotent(method) else Call
