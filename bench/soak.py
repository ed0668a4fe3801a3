"""Soak: fuzz + flood + faults against a running daemon, and what it did meanwhile.

Starts ``genbridge serve`` with a small real model and, for --seconds:
  - a flood of valid pings at --flood messages per second from one socket (replies unread),
  - mutated and random packets at --fuzz per second from another,
  - plays from a pad client at 4 per second (real writes into the shared folder),
  - a probe that pings every 50 ms and times the reply,
  - kill -9 of a model worker every --kill-every seconds,
  - a watcher that opens every WAV appearing in the session folder and checks it is whole.
Prints packets sent by kind, error replies sent and suppressed, drops by reason, worker
restarts, the daemon's RSS growth, ping latency during the flood, and partial files seen
(must be 0). Usage: python bench/soak.py [--seconds 300] [--flood 10000] [--fuzz 1000]
[--kill-every 30]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import soundfile as sf  # noqa: E402
from _common import percentile, save, table  # noqa: E402
from conftest import TINY_LENGTH, build_tiny_model, write_config  # noqa: E402
from helpers import Daemon, OscClient, osc_bundle, osc_message  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def mutate(rng: random.Random, base: bytes) -> bytes:
    data = bytearray(base)
    kind = rng.randrange(5)
    if kind == 0 and data:
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:
        data = data[: rng.randrange(len(data) + 1)]
    elif kind == 2:
        data = bytearray(rng.randbytes(rng.randrange(1, 700)))
    elif kind == 3:
        for _ in range(rng.randint(1, 7)):
            data = bytearray(b"#bundle\0" + b"\0" * 7 + b"\1" + len(data).to_bytes(4, "big") + bytes(data))
    else:
        data += rng.randbytes(rng.randrange(1, 40))
    return bytes(data)


def _sender(kind: str, port: int, rate: float, stop, count, seeds: list[bytes]) -> None:
    """A paced UDP sender in its own process: valid pings ("flood") or mutated packets ("fuzz")."""
    rng = random.Random(1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    ping = osc_message("/genbridge/ping", 7)
    start, n = time.monotonic(), 0
    while not stop.is_set():
        try:
            s.sendto(ping if kind == "flood" else mutate(rng, rng.choice(seeds)), ("127.0.0.1", port))
        except OSError:
            pass
        n += 1
        if n % 100 == 0:
            count.value = n
        ahead = start + n / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    count.value = n
    s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--flood", type=float, default=10000.0, help="valid pings per second")
    ap.add_argument("--fuzz", type=float, default=1000.0, help="mutated packets per second")
    ap.add_argument("--kill-every", type=float, default=30.0, help="seconds between worker kills (0: none)")
    args = ap.parse_args()

    seeds = [osc_message("/genbridge/ping", 1), osc_message("/genbridge/drum/play", "kick", 100),
             osc_message("/genbridge/drum/generate", "snare", 2, 5), osc_message("/genbridge/status"),
             osc_bundle(osc_message("/genbridge/ping", 2), osc_message("/genbridge/drum/play", "hat"))]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = build_tiny_model(tmp_path / "model")
        config = write_config(tmp_path / "c.toml", model, pool=4)
        daemon = Daemon(tmp_path / "out", config)
        daemon.wait_for_ping()
        control = OscClient(daemon.port)
        control.wait_until(lambda s: all(i["ready"] >= i["target"] for i in s["instruments"].values()),
                           timeout=300, what="pools")
        pid = daemon.proc.pid
        rss0 = rss_mb(pid)
        session = daemon.session_dir()
        stop = threading.Event()
        sent = {"flood": 0, "fuzz": 0, "plays": 0, "probe": 0, "kills": 0}
        latencies: list[float] = []
        lost_probes = [0]
        partial: list[str] = []
        rss_peak = [rss0]

        def paced(rate: float, body) -> None:
            start, n = time.monotonic(), 0
            while not stop.is_set():
                body()
                n += 1
                ahead = start + n / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

        # The flood and the fuzz run in their own processes: in this one they would hold the
        # GIL against the probe and the probe would time the benchmark, not the daemon.
        ctx = multiprocessing.get_context("spawn")
        proc_stop = ctx.Event()
        counts = {"flood": ctx.Value("q", 0), "fuzz": ctx.Value("q", 0)}
        senders = [ctx.Process(target=_sender,
                               args=("flood", daemon.port, args.flood, proc_stop, counts["flood"], seeds)),
                   ctx.Process(target=_sender,
                               args=("fuzz", daemon.port, args.fuzz, proc_stop, counts["fuzz"], seeds))]

        def pads() -> None:
            pad = OscClient(daemon.port)
            pad.sock.setblocking(False)
            insts = ["kick", "snare", "hat"]

            def one() -> None:
                pad.send("/genbridge/drum/play", insts[sent["plays"] % 3], 100)
                sent["plays"] += 1
            paced(4.0, one)
            pad.close()

        def probe() -> None:
            c = OscClient(daemon.port)
            c.sock.settimeout(1.0)

            def one() -> None:
                sent["probe"] += 1
                t = time.perf_counter()
                c.send("/genbridge/ping", sent["probe"])
                try:
                    while True:
                        reply = c.recv(1.0)
                        if reply.address == "/genbridge/pong" and reply.args[0] == sent["probe"]:
                            latencies.append((time.perf_counter() - t) * 1000)
                            return
                except socket.timeout:
                    lost_probes[0] += 1
            paced(20.0, one)
            c.close()

        def watcher() -> None:
            seen: set[Path] = set()
            while not stop.is_set():
                for wav in session.glob("*.wav"):
                    if wav in seen:
                        continue
                    seen.add(wav)
                    try:
                        if sf.info(str(wav)).frames != TINY_LENGTH:
                            partial.append(wav.name)
                    except (RuntimeError, sf.LibsndfileError) as exc:
                        if wav.exists():  # swept away meanwhile is fine; unreadable is not
                            partial.append(f"{wav.name}: {exc}")
                rss_peak[0] = max(rss_peak[0], rss_mb(pid))
                stop.wait(0.2)

        def killer() -> None:
            status_client = OscClient(daemon.port)
            while not stop.wait(args.kill_every):
                worker = status_client.status()["models"]["m"]["pid"]
                if worker:
                    os.kill(worker, signal.SIGKILL)
                    sent["kills"] += 1
            status_client.close()

        threads = [threading.Thread(target=f, daemon=True) for f in (pads, probe, watcher)]
        if args.kill_every > 0:
            threads.append(threading.Thread(target=killer, daemon=True))
        print(f"soak for {args.seconds:g} s: flood {args.flood:g}/s, fuzz {args.fuzz:g}/s, plays 4/s, "
              f"probe 20/s, worker kill every {args.kill_every:g} s", flush=True)
        t0 = time.monotonic()
        for p in senders:
            p.start()
        for t in threads:
            t.start()
        while time.monotonic() - t0 < args.seconds:
            time.sleep(min(10.0, args.seconds - (time.monotonic() - t0)))
            sent["flood"], sent["fuzz"] = counts["flood"].value, counts["fuzz"].value
            print(f"  {time.monotonic() - t0:5.0f} s: flood {sent['flood']}, fuzz {sent['fuzz']}, probes "
                  f"{len(latencies)} ok / {lost_probes[0]} lost, RSS {rss_mb(pid):.0f} MB", flush=True)
        stop.set()
        proc_stop.set()
        for t in threads:
            t.join(5)
        for p in senders:
            p.join(5)
        sent["flood"], sent["fuzz"] = counts["flood"].value, counts["fuzz"].value
        elapsed = time.monotonic() - t0
        final = control.status()
        alive = control.request("/genbridge/ping", 99, reply="/genbridge/pong").args[0] == 99
        control.close()
        daemon.stop()

    osc, counters = final["osc"], final["counters"]
    restarts = final["models"]["m"]["restarts"]
    rows = [
        ["packets sent: flood (valid pings)", sent["flood"]], ["packets sent: fuzz", sent["fuzz"]],
        ["packets sent: plays", sent["plays"]], ["packets sent: probe pings", sent["probe"]],
        ["packets received by the daemon", osc["packets"]], ["malformed", osc["malformed"]],
        ["error replies sent", osc["errors_sent"]], ["error replies suppressed (rate limit)", osc["errors_suppressed"]],
        ["dropped: busy", osc["dropped_busy"]], ["dropped: rate per client", osc["dropped_rate"]],
        ["dropped: oversize", osc["dropped_oversize"]],
        ["dropped: not allowed", osc["dropped_not_allowed"]],
        ["engine refused busy", counters["refused_busy"]],
        ["worker kills / restarts", f"{sent['kills']} / {restarts}"],
        ["RSS start / peak / growth MB", f"{rss0:.0f} / {rss_peak[0]:.0f} / {rss_peak[0] - rss0:.1f}"],
        ["probe ping p50 / p99 / max ms", f"{percentile(latencies, 50):.2f} / {percentile(latencies, 99):.2f} / "
                                          f"{max(latencies) if latencies else float('nan'):.2f}"],
        ["probe pings lost (>1 s)", lost_probes[0]], ["partial files seen", len(partial)],
        ["daemon alive at the end", alive],
    ]
    print()
    print(table(["figure", "value"], rows))
    print(f"{elapsed:.0f} s; flood achieved {sent['flood'] / elapsed:.0f}/s, fuzz {sent['fuzz'] / elapsed:.0f}/s")
    if partial:
        print("PARTIAL FILES:", partial[:10])
    path = save("soak", {"seconds": elapsed, "sent": sent, "osc": osc, "engine": counters, "restarts": restarts,
                         "rss_mb": {"start": rss0, "peak": rss_peak[0]},
                         "ping_ms": {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
                                     "max": max(latencies) if latencies else None, "n": len(latencies),
                                     "lost": lost_probes[0]},
                         "partial_files": partial, "alive": alive})
    print(f"wrote {path}")
    sys.exit(0 if alive and not partial else 1)


if __name__ == "__main__":
    main()
