"""Bad input, floods and outsiders: the daemon keeps answering, replies to errors at a bounded
rate, and drops what it must not serve."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import write_config
from helpers import GENBRIDGE, REPO, Daemon, OscClient, osc_bundle, osc_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.protocol import ENDPOINTS

VALID = [osc_message(e.address, *[("kick" if a.kind == "str" else 1) for a in e.args if a.required])
         for e in ENDPOINTS if e.name not in ("client.reply_port", "kit.select", "capture.save")]
VALID += [osc_bundle(osc_message("/genbridge/ping", 1), osc_message("/genbridge/status"))]


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@st.composite
def mutated_packets(draw) -> list[bytes]:
    """A batch of packets: valid ones with bytes flipped, cut, repeated or spliced, type tags
    rewritten, nested bundles, and plain noise."""
    out = []
    for _ in range(100):
        base = bytearray(draw(st.sampled_from(VALID)))
        kind = draw(st.integers(0, 6))
        if kind == 0 and base:  # flip bytes
            for _ in range(draw(st.integers(1, 8))):
                base[draw(st.integers(0, len(base) - 1))] = draw(st.integers(0, 255))
        elif kind == 1:  # truncate
            base = base[: draw(st.integers(0, len(base)))]
        elif kind == 2:  # rewrite the type tag string
            i = base.find(b",")
            if i >= 0:
                tags = draw(st.text(alphabet="ifsbhdTFNIcrm[]", min_size=1, max_size=12)).encode()
                base = base[:i + 1] + tags + b"\0" * (4 - (i + 1 + len(tags)) % 4) + base[i + 1 + len(tags):]
        elif kind == 3:  # noise
            base = bytearray(draw(st.binary(min_size=0, max_size=600)))
        elif kind == 4:  # nest in bundles, sometimes too deep
            for _ in range(draw(st.integers(1, 7))):
                base = bytearray(b"#bundle\0" + b"\0" * 7 + b"\1" + len(base).to_bytes(4, "big") + bytes(base))
        elif kind == 5:  # lie about a bundle element's size
            size = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
            base = bytearray(b"#bundle\0" + b"\0" * 8 + size + bytes(base))
        out.append(bytes(base))
    return out


def test_twenty_thousand_mutated_packets_leave_the_daemon_answering(tmp_path: Path, tiny_model: Path,
                                                                    start_daemon) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=1)
    # every mutated packet must reach the parser: no per-client rate limit in this test
    config.write_text("[server]\nmax_rate_per_client = 1000000.0\n" + config.read_text())
    daemon, client = start_daemon(config)
    client.wait_until(lambda s: s["models"]["m"]["state"] == "ready", what="the worker")
    rss_before = _rss_kb(daemon.proc.pid)
    fuzzer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fuzzer.bind(("127.0.0.1", 0))
    fuzzer.setblocking(False)  # replies pile up unread: that is the point, nobody reads them
    sent = {"n": 0}
    start = time.monotonic()

    @settings(max_examples=200, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutated_packets())
    def flood(batch: list[bytes]) -> None:
        for packet in batch:
            fuzzer.sendto(packet, ("127.0.0.1", daemon.port))
            sent["n"] += 1
        client.request("/genbridge/ping", sent["n"], reply="/genbridge/pong", timeout=10)  # still answering

    try:
        flood()
    finally:
        fuzzer.close()
    elapsed = time.monotonic() - start
    assert sent["n"] >= 20_000
    status = client.status()
    osc = status["osc"]
    assert osc["malformed"] > 1000, osc
    assert osc["errors_suppressed"] > 0, "error replies were rate-limited"
    # 20 per second per host plus the burst, and the few this test's own client caused
    assert osc["errors_sent"] <= 20 * elapsed + 40, (osc, elapsed)
    growth_mb = (_rss_kb(daemon.proc.pid) - rss_before) / 1024
    assert growth_mb < 50, f"RSS grew {growth_mb:.1f} MB"
    assert client.request("/genbridge/ping", 1, reply="/genbridge/pong").args[0] == 1


def test_oversize_and_deep_packets_get_an_error(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    daemon, client = start_daemon(write_config(tmp_path / "c.toml", tiny_model, pool=0))
    client.send_raw(osc_message("/genbridge/ping") + b"\0" * 9000)
    assert "refused" in client.expect("/genbridge/error").args[2]
    deep = osc_message("/genbridge/ping", 5)
    for _ in range(6):
        deep = b"#bundle\0" + b"\0" * 7 + b"\1" + len(deep).to_bytes(4, "big") + deep
    client.send_raw(deep)
    assert "nested deeper" in client.expect("/genbridge/error").args[2]
    many = osc_bundle(*[osc_message("/genbridge/ping", i) for i in range(65)])
    client.send_raw(many)
    assert "more than 64 messages" in client.expect("/genbridge/error").args[2]
    assert client.status()["osc"]["dropped_oversize"] == 1


def test_only_allowed_networks_are_served(tmp_path: Path, tiny_model: Path) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=0)
    config.write_text("[server]\nhost = \"0.0.0.0\"\nallow = [\"127.0.0.1/32\"]\n" + config.read_text())
    daemon = Daemon(tmp_path / "out", config)
    outsider = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    outsider.bind(("127.0.0.2", 0))  # another address of this machine, outside the allow-list
    outsider.settimeout(0.5)
    try:
        daemon.wait_for_ping()
        client = OscClient(daemon.port)
        for _ in range(3):
            outsider.sendto(osc_message("/genbridge/ping", 9), ("127.0.0.1", daemon.port))
        with pytest.raises(socket.timeout):
            outsider.recv(1024)
        assert client.status()["osc"]["dropped_not_allowed"] == 3
        client.close()
    finally:
        outsider.close()
        daemon.stop()


def test_listening_beyond_loopback_needs_an_allow_list(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[server]\nhost = "0.0.0.0"\n')
    run = subprocess.run([*GENBRIDGE, "serve", "--config", str(config)], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "server.allow" in run.stderr and "allow-list" in run.stderr


def test_a_burst_of_bad_requests_is_answered_at_a_bounded_rate(tmp_path: Path, tiny_model: Path,
                                                              start_daemon) -> None:
    daemon, client = start_daemon(write_config(tmp_path / "c.toml", tiny_model, pool=0))
    for i in range(200):
        client.send("/genbridge/nope", i)
    errors = 0
    client.sock.settimeout(0.5)
    try:
        while True:
            client.sock.recv(65536)
            errors += 1
    except socket.timeout:
        pass
    assert 1 <= errors <= 40, errors  # the burst of 20, and what refilled while they were read
    assert client.status()["osc"]["errors_suppressed"] >= 150


def test_a_runaway_sender_is_rate_limited_and_others_are_still_served(tmp_path: Path, tiny_model: Path,
                                                                      start_daemon) -> None:
    daemon, client = start_daemon(write_config(tmp_path / "c.toml", tiny_model, pool=0))
    runaway = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    runaway.bind(("127.0.0.1", 0))
    ping = osc_message("/genbridge/ping", 1)
    try:
        for _ in range(5000):  # far above server.max_rate_per_client (1000/s, burst 1000)
            runaway.sendto(ping, ("127.0.0.1", daemon.port))
        assert client.request("/genbridge/ping", 2, reply="/genbridge/pong").args[0] == 2
        osc = client.status()["osc"]
        assert osc["dropped_rate"] >= 2000, osc
    finally:
        runaway.close()
