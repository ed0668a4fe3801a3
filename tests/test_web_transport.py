"""The web console's WebSocket transport against a real daemon: the same requests and replies as
OSC, the same admission rules, and the guards a browser needs (Origin, Host, token)."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
import soundfile as sf
from conftest import pools_full, write_config
from helpers import GENBRIDGE, REPO, Daemon, free_udp_port
from web_client import WebPage


def _wav_data(path: str) -> bytes:
    audio, _ = sf.read(path, dtype="int32")
    return audio.tobytes()


def test_play_and_generate_get_the_replies_osc_gets(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    daemon, client = start_daemon(write_config(tmp_path / "c.toml", tiny_model, pool=2))
    client.wait_until(pools_full(), what="pools to fill")
    osc_played = client.request("/genbridge/drum/play", "kick", 100, 5, reply="/genbridge/drum/played")
    client.send("/genbridge/drum/generate", "snare", 2, 7, 0, 6)
    osc_generate = [client.recv() for _ in range(4)]  # job/started, drum/ready x2, job/done

    async def scenario() -> None:
        async with WebPage(daemon.web_port) as page:
            await page.osc("/genbridge/drum/play", "kick", 100, 5)
            played = await page.next_of("reply", reply="drum/played")
            assert played["address"] == osc_played.address
            rid, inst, path, fresh = played["args"]
            assert [rid, inst, fresh] == [osc_played.args[0], osc_played.args[1], osc_played.args[3]] == [5, "kick", 1]
            assert Path(path).parent == Path(osc_played.args[2]).parent == daemon.session_dir()
            assert played["named"] == {"id": 5, "instrument": "kick", "path": path, "fresh": 1}

            # the named form gives the same request
            named = await page.request("drum.play", "drum/played", instrument="hat", velocity=90)
            rid, inst, path, fresh = named["args"]
            assert (inst, fresh) == ("hat", 1) and Path(path).parent == daemon.session_dir() and Path(path).is_file()

            await page.send({"request": "drum.generate", "args": {"instrument": "snare", "count": 2, "seed": 7},
                             "id": 6})
            web_generate = [await page.next_of("reply") for _ in range(4)]
            assert [r["address"] for r in web_generate] == [r.address for r in osc_generate]
            assert web_generate[0]["args"][2:] == osc_generate[0].args[2:] == ["snare", 2]
            # the same seeds make the same sounds, whichever transport asked
            for web, osc in zip(web_generate[1:3], osc_generate[1:3]):
                assert web["args"][1] == osc.args[1] == "snare"
                assert _wav_data(web["args"][2]) == _wav_data(osc.args[2])
            assert web_generate[3]["args"][2] == osc_generate[3].args[2] == 2

            # a bad request: the same error message OSC gets
            client.send("/genbridge/drum/play", "cowbell", 9)
            osc_error = client.expect("/genbridge/error")
            await page.osc("/genbridge/drum/play", "cowbell", 9)
            web_error = await page.next_of("reply", reply="error")
            assert web_error["args"] == osc_error.args and "cowbell" in web_error["named"]["message"]

    asyncio.run(scenario())


def test_pages_hear_of_clips_and_status(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    """A clip an OSC client plays shows up on every page; status comes every second."""
    daemon, client = start_daemon(write_config(tmp_path / "c.toml", tiny_model, pool=2))
    client.wait_until(pools_full(), what="pools to fill")

    async def scenario() -> None:
        async with WebPage(daemon.web_port) as page:
            assert [e["name"] for e in page.hello["endpoints"]][:3] == ["ping", "status", "drum.play"]
            first = await page.next_of("status", timeout=5)
            assert set(first["status"]["instruments"]) == {"kick", "snare", "hat"}
            assert first["status"]["web"]["pages"] == 1
            # and it keeps coming: a later one says more time has passed (the first pushed tick may
            # come right after the status sent on connecting, within uptime's 0.1 s rounding)
            later = first
            while later["status"]["uptime_s"] <= first["status"]["uptime_s"]:
                later = await page.next_of("status", timeout=3)
            played = client.request("/genbridge/drum/play", "snare", reply="/genbridge/drum/played")
            clip = await page.next_of("clip", timeout=5)
            assert clip["clip"]["name"] == Path(played.args[2]).name and clip["clip"]["instrument"] == "snare"
            assert clip["clip"]["meta"]["frames"] > 0
            # the page can fetch it: the very file the reply names
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{daemon.web_port}/{clip['clip']['url']}") as response:
                    assert response.status == 200
                    assert await response.read() == Path(played.args[2]).read_bytes()
                for bad in ("..%2F..%2Fetc%2Fpasswd", ".hidden.wav", "nothing-here.wav"):
                    async with http.get(f"http://127.0.0.1:{daemon.web_port}/clips/{bad}") as response:
                        assert response.status == 404, bad
        async with WebPage(daemon.web_port) as again:  # a new page lists what was made before it
            assert Path(played.args[2]).name in [c["name"] for c in again.hello["clips"]]

    asyncio.run(scenario())


def test_a_foreign_origin_and_a_rebound_host_are_refused(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    daemon, client = start_daemon(write_config(tmp_path / "c.toml", tiny_model, pool=1))
    port = daemon.web_port

    async def scenario() -> None:
        for origin in ("http://evil.example", "null", f"http://localhost:{port + 1}"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with WebPage(port, origin=origin):
                    pass
            assert refused.value.status == 403, origin
        async with WebPage(port, origin=f"http://127.0.0.1:{port}") as page:  # the console's own page
            assert (await page.request("ping", "pong"))["args"][1]
        async with aiohttp.ClientSession() as http:
            # DNS rebinding: a page of evil.example that resolved its name to 127.0.0.1
            async with http.get(f"http://127.0.0.1:{port}/", headers={"Host": f"evil.example:{port}"}) as response:
                assert response.status == 403
            async with http.get(f"http://localhost:{port}/") as response:
                assert response.status == 200 and "<html" in (await response.text()).lower()

    asyncio.run(scenario())
    status = client.status()["web"]
    assert status["refused"] >= 4 and status["pages"] == 0


def test_hosts_outside_the_allow_list_are_refused(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=1,
                          extra='\n[server]\nallow = ["10.0.0.0/8"]\n')
    daemon = Daemon(tmp_path / "out", config)
    try:
        async def scenario() -> None:
            deadline = asyncio.get_running_loop().time() + 60
            async with aiohttp.ClientSession() as http:
                while True:  # the daemon's port opens once it has started
                    try:
                        async with http.get(f"http://127.0.0.1:{daemon.web_port}/") as response:
                            assert response.status == 403 and "not allowed" in await response.text()
                            break
                    except aiohttp.ClientConnectionError:
                        assert asyncio.get_running_loop().time() < deadline, daemon.log()
                        assert daemon.proc.poll() is None, daemon.log()
                        await asyncio.sleep(0.1)  # polling a port that is not open yet
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with WebPage(daemon.web_port):
                    pass
            assert refused.value.status == 403

        asyncio.run(scenario())
    finally:
        daemon.stop()


def test_beyond_loopback_the_console_needs_the_token_the_log_prints(tmp_path: Path, tiny_model: Path) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=1,
                          extra='\n[server]\nhost = "0.0.0.0"\nallow = ["127.0.0.0/8"]\n')
    daemon = Daemon(tmp_path / "out", config)
    try:
        daemon.wait_for_ping()
        line = next(line for line in daemon.log().splitlines() if "web console on" in line)
        url = line.split("web console on ", 1)[1].strip()
        token = url.split("?token=", 1)[1]
        assert len(token) >= 16

        async def scenario() -> None:
            base = f"http://127.0.0.1:{daemon.web_port}"
            async with aiohttp.ClientSession() as http:
                for query in ("", "?token=wrong", "?token=%C3%A9"):
                    async with http.get(f"{base}/{query}") as response:
                        assert response.status == 403 and "token" in await response.text()
                async with http.get(f"{base}/console.js") as response:
                    assert response.status == 403
            # a browser: the URL's token becomes a cookie, and the page's own files load with it
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
                async with browser.get(f"{base}/?token={token}") as response:
                    assert response.status == 200
                    assert response.cookies[f"genbridge_token_{daemon.web_port}"]["httponly"]
                for name in ("console.js", "console.css"):
                    async with browser.get(f"{base}/{name}") as response:
                        assert response.status == 200, name
            with pytest.raises(aiohttp.WSServerHandshakeError):
                async with WebPage(daemon.web_port):
                    pass
            async with WebPage(daemon.web_port, token=token) as page:
                assert (await page.request("ping", "pong"))["reply"] == "pong"

        asyncio.run(scenario())
    finally:
        daemon.stop()


def _fuzzed(rng: random.Random) -> str:
    """Broken JSON, wrong shapes, wrong types, unknown names: what a buggy page might send."""
    choices = [
        lambda: "".join(rng.choice('{}[]":,0123456789abc\\ ') for _ in range(rng.randint(0, 40))),
        lambda: json.dumps(rng.choice([[], 3, "x", None, True, {"args": []}, {"request": 5}])),
        lambda: json.dumps({"address": rng.choice(["/genbridge/drum/play", "/nope", "/genbridge/kw/drum/play", 7]),
                            "args": rng.choice([[], [None], [[1]], [{"a": 1}], ["kick", "loud"], ["kick", 1e309],
                                                ["kick", 500], "kick"])}),
        lambda: json.dumps({"request": rng.choice(["drum.play", "drum.generate", "nope", "client.reply_port"]),
                            "args": rng.choice([{}, {"instrument": 3}, {"instrument": "kick", "velocity": "x"},
                                                {"instrument": "cowbell"}, {"port": 9}, [1], {"count": -1}]),
                            "id": rng.choice([1, "a", None, 2.5, [1]])}),
        lambda: "[" * 5000 + "]" * 5000,
        lambda: json.dumps({"request": "drum.play", "args": {"instrument": "k" * 20000}}),
    ]
    return rng.choice(choices)()


def test_fuzzed_json_gets_error_replies_and_disturbs_nothing(tmp_path: Path, tiny_model: Path,
                                                             start_daemon) -> None:
    # every error answered (the error budget is its own test's business: OSC's)
    config = write_config(tmp_path / "c.toml", tiny_model, pool=1, extra="\n[server]\nerror_replies_per_s = 100000\n")
    daemon, client = start_daemon(config)
    client.wait_until(pools_full(), what="pools to fill")
    before = client.status()["instruments"]
    rng = random.Random(19)
    messages = [_fuzzed(rng) for _ in range(300)]

    async def scenario() -> None:
        async with WebPage(daemon.web_port) as page:
            for text in messages:
                await page.send(text)
            await page.ws.send_bytes(b"\x00\x01binary")
            errors = 0
            while errors < len(messages) + 1:
                reply = await page.next_of("reply", timeout=20)
                assert reply["reply"] == "error", reply
                assert isinstance(reply["named"]["message"], str) and reply["named"]["message"]
                errors += 1
            assert (await page.request("ping", "pong"))["reply"] == "pong"

    asyncio.run(scenario())
    status = client.status()
    assert client.request("/genbridge/ping", reply="/genbridge/pong").args
    assert status["web"]["malformed"] > 0 and status["web"]["errors_sent"] == len(messages) + 1
    assert {n: i["served_fresh"] for n, i in status["instruments"].items()} == \
        {n: i["served_fresh"] for n, i in before.items()}  # nothing was played by junk


def test_tempo_listen_on_a_page_ends_with_the_page(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    daemon, client = start_daemon(write_config(tmp_path / "c.toml", tiny_model, pool=1))
    client.request("/genbridge/tempo/set", 480.0, reply="/genbridge/tempo/reply")  # a bar each 0.5 s

    async def scenario() -> None:
        async with WebPage(daemon.web_port) as page:
            reply = await page.request("tempo.listen", "tempo/reply", bars=100)
            assert reply["named"]["bpm"] == 480.0
            bar = await page.next_of("reply", reply="tempo/bar", timeout=5)
            assert bar["named"]["phase"] < 0.01 or bar["named"]["phase"] > 3.99
            assert client.status()["tempo"]["listeners"] == 1

    asyncio.run(scenario())
    client.wait_until(lambda s: s["tempo"]["listeners"] == 0, timeout=10, what="the closed page's listening to end")


def test_a_taken_web_port_refuses_the_start_in_one_line(tmp_path: Path, tiny_model: Path) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run([*GENBRIDGE, "serve", "--config", str(config), "--out", str(tmp_path / "o"),
                              "--osc-port", str(free_udp_port()), "--web-port", str(port)],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if "web console" in line]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "web_port" in errors[0], run.stderr


def test_web_port_zero_turns_the_console_off(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    daemon, client = start_daemon(write_config(tmp_path / "c.toml", tiny_model, pool=1),
                                  extra=["--web-port", "0"])
    assert "web" not in client.status()
    assert "web console" not in daemon.log()


def test_stopping_with_a_page_open_and_a_request_waiting_is_quick(tmp_path: Path, tiny_model: Path) -> None:
    """SIGTERM while a page waits on a play that cannot be served soon (a pool of 0, a slow
    model, dry_policy wait): the page is closed, its request gets an error, the daemon is gone
    within seconds (not after engine.wait_timeout_s)."""
    from conftest import SLOW

    config = write_config(tmp_path / "c.toml", tiny_model, pool=1, dry_policy="wait", instruments=("kick",),
                          extra=SLOW)
    daemon = Daemon(tmp_path / "out", config)
    try:
        daemon.wait_for_ping()

        async def scenario() -> float:
            async with WebPage(daemon.web_port) as page:
                await page.send({"request": "drum.play", "args": {"instrument": "slow"}, "id": 9})
                await page.next_of("status", timeout=5)  # the play is in the daemon by now
                started = time.monotonic()
                daemon.proc.send_signal(signal.SIGTERM)
                await page.wait_closed(10)
                assert await asyncio.to_thread(daemon.proc.wait, 15) == 0
                return time.monotonic() - started

        took = asyncio.run(scenario())
        assert took < 6, f"the daemon took {took:.1f} s to stop"
    finally:
        daemon.stop()


def test_a_page_that_stops_reading_is_disconnected_not_buffered_without_end() -> None:
    """The bound on what waits for one page: past MAX_QUEUED messages it is closed (and nothing
    more is queued), so a background tab cannot grow the daemon's memory."""
    from bridge.web import MAX_QUEUED, _Page

    class FakeSocket:
        def __init__(self) -> None:
            self.closed_with: int | None = None

        async def close(self, code: int, message: bytes) -> None:
            self.closed_with = code

    async def scenario() -> None:
        ws = FakeSocket()
        page = _Page(ws, "127.0.0.1", 1)  # type: ignore[arg-type]
        for k in range(MAX_QUEUED + 50):
            page.push({"type": "reply", "n": k})
        assert page.stuck and page.gone and page.queue.qsize() == MAX_QUEUED
        await page.closing
        assert ws.closed_with == 1008

    asyncio.run(scenario())
