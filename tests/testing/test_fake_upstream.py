"""The fake upstream helper: behaviours, counters and run-time control (in process, ASGI)."""

from __future__ import annotations

import httpx
import pytest

from asgimesh.testing import Behaviour, FakeUpstream, parse_behaviour


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ok", Behaviour("ok")),
        ("fail:502", Behaviour("fail", status=502)),
        ("slow:0.25", Behaviour("slow", seconds=0.25)),
        ("flaky:50:503", Behaviour("flaky", status=503, percent=50)),
        ("hang", Behaviour("hang")),
        ("reset", Behaviour("reset")),
    ],
)
def test_parse_behaviour_round_trips(text: str, expected: Behaviour) -> None:
    assert parse_behaviour(text) == expected
    assert parse_behaviour(str(expected)) == expected


@pytest.mark.parametrize("text", ["", "fail:abc", "slow", "explode", "ok:1"])
def test_bad_behaviour_is_named(text: str) -> None:
    with pytest.raises(ValueError, match="expected ok, fail:STATUS"):
        parse_behaviour(text)


@pytest.mark.anyio
async def test_behaviours_and_control_paths() -> None:
    app = FakeUpstream("flaky:50:503", name="u9", seed=1)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://u") as client:
        statuses = [(await client.post("/x", content=b"abc")).status_code for _ in range(200)]
        assert 70 < statuses.count(503) < 130 and statuses.count(200) + statuses.count(503) == 200
        stats = (await client.get("/_upstream/stats")).json()
        assert stats["requests"] == 200 and stats["by_method"] == {"POST": 200}
        assert stats["name"] == "u9" and stats["behaviour"] == "flaky:50:503"
        assert (await client.put("/_upstream/behaviour", content=b"fail:418")).status_code == 200
        await client.put("/_upstream/retry-after", content=b"3")
        assert (await client.post("/_upstream/reset-stats")).json() == {"requests": 0}
        answer = await client.get("/y", headers={"x-probe": "1"})
        assert answer.status_code == 418 and answer.json()["headers"]["x-probe"] == "1"
        assert "retry-after" not in answer.headers  # only on 429/503
        bad = await client.put("/_upstream/behaviour", content=b"nonsense")
        assert bad.status_code == 422 and "expected ok" in bad.json()["detail"]
        await client.put("/_upstream/behaviour", content=b"fail:503")
        assert "retry-after" not in (await client.get("/z")).headers  # a new behaviour: cleared
        await client.put("/_upstream/retry-after", content=b"3")
        assert (await client.get("/z")).headers["retry-after"] == "3"
        assert (await client.get("/stream")).status_code == 503
        await client.put("/_upstream/behaviour", content=b"ok")
        chunks = [c async for c in (await client.get("/stream")).aiter_bytes()]
        assert b"".join(chunks).count(b"chunk") == 10
