"""The long poll kept open (``Accept: application/x-ndjson``), over a real socket."""

import json
import threading
import time

import httpx

from asgimesh.testing import control_plane


def test_an_open_long_poll_carries_one_line_per_version_until_the_wait_ends() -> None:
    with control_plane() as cp:
        lines: list[dict] = []
        ended: list[float] = []

        def watch() -> None:
            with httpx.stream(
                "GET",
                cp.url + "/v1/policy?after=0&wait=1.5",
                headers={"accept": "application/x-ndjson"},
                timeout=10,
            ) as response:
                assert response.headers["content-type"].startswith("application/x-ndjson")
                lines.extend(json.loads(line) for line in response.iter_lines() if line)
            ended.append(time.monotonic())

        start = time.monotonic()
        thread = threading.Thread(target=watch)
        thread.start()
        time.sleep(0.2)
        for timeout in ("1s", "2s"):
            httpx.put(
                cp.url + "/v1/policy",
                json={"defaults": {"timeout": timeout}},
                headers=cp.admin_headers,
            )
            time.sleep(0.1)
        thread.join(10)
        assert [line["version"] for line in lines] == [1, 2]
        assert lines[1]["policy"] == {"defaults": {"timeout": "2s"}}
        assert 1.2 < ended[0] - start < 5  # the stream ends when the wait does


def test_without_the_accept_header_it_is_the_plain_long_poll() -> None:
    with control_plane() as cp:
        httpx.put(cp.url + "/v1/policy", json={}, headers=cp.admin_headers)
        answer = httpx.get(cp.url + "/v1/policy?after=0&wait=5")
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["version"] == 1
        none_newer = httpx.get(
            cp.url + "/v1/policy?after=1&wait=0.3", headers={"accept": "application/x-ndjson"}
        )
        assert none_newer.status_code == 304
