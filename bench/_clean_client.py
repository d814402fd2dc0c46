"""Run by ``bench_outbound.py`` inside a clean ``pip install`` venv (the package and its declared
dependencies only): CPU per async call, plain httpx vs ``AsyncMeshTransport``, to real upstreams.

Prints one JSON object: µs of this process's CPU per call for each client (best of the rounds:
the machine's noise only ever adds), whether ``sniffio`` was importable, how often per
mesh call ``import sniffio`` reached the import system, and the statuses seen.
Nothing here may import the dev extra (tenacity, trio, ...): that is the point of the venv.

    python _clean_client.py URL [URL ...] --calls 500 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import json
import sys
import time


class _Lookups:
    """Counts the imports of ``sniffio`` that reached the import system (not answered from
    ``sys.modules``): each one that fails walks every ``sys.path`` entry."""

    count = 0

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "sniffio":
            _Lookups.count += 1


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    sys.meta_path.insert(0, _Lookups())  # type: ignore[arg-type]
    import httpx

    from asgimesh import AsyncMeshTransport, MeshRuntime, MeshSettings

    policy = {"services": {"pay": {"endpoints": args.urls}}}
    settings = MeshSettings(service="bench", policy=json.dumps(policy))
    runtime = MeshRuntime(settings, start=False)
    statuses: dict[str, int] = {}
    best = {"plain": float("inf"), "mesh": float("inf")}
    async with (
        httpx.AsyncClient(transport=httpx.AsyncHTTPTransport()) as plain_client,
        httpx.AsyncClient(transport=AsyncMeshTransport(runtime=runtime)) as mesh_client,
    ):
        rr = itertools.cycle(args.urls)

        async def plain() -> int:
            return (await plain_client.get(next(rr) + "/")).status_code

        async def mesh() -> int:
            return (await mesh_client.get("http://pay/")).status_code

        async def drive(call: object, calls: int) -> float:
            remaining = itertools.count()

            async def worker() -> None:
                while next(remaining) < calls:
                    status = await call()  # type: ignore[operator]
                    statuses[str(status)] = statuses.get(str(status), 0) + 1

            start = time.process_time()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            return (time.process_time() - start) / calls * 1e6

        await drive(plain, 100)
        await drive(mesh, 100)
        before = _Lookups.count
        await drive(mesh, 100)
        lookups = (_Lookups.count - before) / 100
        for index in range(args.rounds):
            pair = [("plain", plain), ("mesh", mesh)]
            for name, call in pair if index % 2 == 0 else reversed(pair):
                best[name] = min(best[name], await drive(call, args.calls))
    print(
        json.dumps(
            {
                **best,
                "sniffio_installed": importlib.util.find_spec("sniffio") is not None,
                "sniffio_imported": "sniffio" in sys.modules,
                "sniffio_lookups_per_call": lookups,
                "statuses": statuses,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
