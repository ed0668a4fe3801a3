"""Soak: fuzz + flood + faults against a running daemon, and what it did meanwhile.

Starts ``genbridge serve`` with small real models and, for --seconds:
  - a flood of valid pings at --flood messages per second from one socket (replies unread),
  - mutated and random packets at --fuzz per second from another,
  - plays from a pad client at 4 per second over four instruments (real writes into the shared
    folder; its replies are read: plays served, fresh ratio, error replies by kind),
  - a probe that pings every 50 ms and times the reply,
  - a fault every --fault-every seconds, in turn: kill -9 of a model worker, SIGSTOP of a model
    worker (a hang: the supervisor must notice it), and - when run as root, the shared folder
    being a tmpfs of its own - the disk filled up for 8 s; after each, the time until the daemon
    has recovered (a new clip made by a new worker; a play written again),
  - a model that leaks (tests/fixtures/families/leaky_family.py, --leak-mb per clip) under a
    memory ceiling: its worker is restarted each time it crosses it, and must serve fresh again,
  - a watcher that opens every WAV appearing in the session folder and checks it is whole.
Prints packets sent by kind, error replies, drops by reason, plays served and the fresh ratio,
errors by kind, restarts by cause, each fault with its recovery time, the daemon's RSS and open
file descriptors at the start and the end, ping latency, and partial files seen (must be 0).
Usage: python bench/soak.py [--seconds 300] [--flood 10000] [--fuzz 1000] [--fault-every 45]
[--leak-mb 4]
"""

from __future__ import annotations

import argparse
import atexit
import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import soundfile as sf  # noqa: E402
from _common import percentile, save, table  # noqa: E402
from conftest import TINY_LENGTH, build_tiny_model  # noqa: E402
from helpers import Daemon, OscClient, osc_bundle, osc_message  # noqa: E402

FAMILIES = HERE.parent / "tests" / "fixtures" / "families"
INSTRUMENTS = ("kick", "snare", "hat", "perc")  # perc plays the leaky model
#: RSS and fds are also read after this much of the load: allocator arenas, the rate limiter's
#: table and the first error replies grow the daemon once; a leak keeps growing after.
WARM_UP_S = 60.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def config_text(model: Path, memory_limit_mb: float) -> str:
    """Three instruments on a healthy model, one on a leaky one under a memory ceiling; a
    short hang limit; a folder cap, swept often, so that hours of plays fit a small tmpfs."""
    lines = ['[audio]', 'device = "none"', '',
             '[engine]', 'threads = 1', 'heartbeat_timeout_s = 5', 'wait_timeout_s = 30', '',
             '[output]', 'max_mb = 24', 'min_age_s = 5', 'sweep_every_s = 5', '',
             '[models.m]', f'path = "{model}"', '',
             '[models.leak]', f'path = "{model}"', 'family = "leaky_family:LeakyFamily"',
             f'memory_limit_mb = {memory_limit_mb:g}', '']
    for name in INSTRUMENTS:
        lines += [f'[instruments.{name}]', f'model = "{"leak" if name == "perc" else "m"}"', 'pool = 4', '']
    return "\n".join(lines)


def error_kind(message: str) -> str:
    m = message.lower()
    for key, kind in (("no space", "disk full"), ("disk full", "disk full"), ("read-only", "disk read-only"),
                      ("hung", "worker hung"), ("memory ceiling", "worker over memory"), ("died", "worker died"),
                      ("busy", "busy"), ("timed out", "timed out"), ("rate", "rate limited")):
        if key in m:
            return kind
    return "other: " + message[:60]


def mount_tmpfs(path: Path, size_mb: int) -> bool:
    """A tmpfs of its own for the shared folder (root only), so the disk can be filled."""
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


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
    ap.add_argument("--fault-every", type=float, default=45.0, help="seconds between faults (0: none)")
    ap.add_argument("--leak-mb", type=float, default=4.0, help="MB the leaky model keeps per clip (0: no leak)")
    ap.add_argument("--memory-limit-mb", type=float, default=700.0, help="the leaky model's memory ceiling")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that atexit stops the daemon

    seeds = [osc_message("/genbridge/ping", 1), osc_message("/genbridge/drum/play", "kick", 100),
             osc_message("/genbridge/drum/generate", "snare", 2, 5), osc_message("/genbridge/status"),
             osc_message("/genbridge/kw/drum/generate", "hat", "steps", 3, "id", 9),
             osc_bundle(osc_message("/genbridge/ping", 2), osc_message("/genbridge/drum/play", "hat"))]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        out = tmp_path / "out"
        tmpfs = mount_tmpfs(out, 64)
        try:
            run(args, seeds, tmp_path, out, tmpfs)
        finally:
            if tmpfs:
                subprocess.run(["umount", "-l", str(out)], capture_output=True)


def run(args: argparse.Namespace, seeds: list[bytes], tmp_path: Path, out: Path, tmpfs: bool) -> None:
    model = build_tiny_model(tmp_path / "model")
    config = tmp_path / "c.toml"
    config.write_text(config_text(model, args.memory_limit_mb))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FAMILIES), os.environ.get("PYTHONPATH", "")]),
               GENBRIDGE_TEST_LEAK_MB=str(args.leak_mb))
    daemon = Daemon(out, config, env=env)
    atexit.register(daemon.stop)  # a soak stopped early (SIGTERM, Ctrl-C) leaves no daemon behind
    daemon.wait_for_ping()
    control = OscClient(daemon.port)
    control.wait_until(lambda s: all(i["ready"] >= i["target"] for i in s["instruments"].values()),
                       timeout=300, what="pools")
    pid = daemon.proc.pid
    rss0, fds0 = rss_mb(pid), fd_count(pid)
    session = daemon.session_dir()
    stop = threading.Event()
    sent = {"flood": 0, "fuzz": 0, "plays": 0, "probe": 0}
    played, fresh = [0], [0]
    errors: Counter[str] = Counter()
    faults: list[dict] = []
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
    senders = [ctx.Process(target=_sender, args=("flood", daemon.port, args.flood, proc_stop, counts["flood"], seeds)),
               ctx.Process(target=_sender, args=("fuzz", daemon.port, args.fuzz, proc_stop, counts["fuzz"], seeds))]

    def pads() -> None:
        pad = OscClient(daemon.port)
        pad.sock.setblocking(False)

        def one() -> None:
            pad.send("/genbridge/drum/play", INSTRUMENTS[sent["plays"] % len(INSTRUMENTS)], 100)
            sent["plays"] += 1
            while True:  # the replies to earlier plays
                try:
                    reply = pad.recv(0)
                except (BlockingIOError, socket.timeout, OSError):
                    return
                if reply.address == "/genbridge/drum/played":
                    played[0] += 1
                    fresh[0] += int(reply.args[3])
                elif reply.address == "/genbridge/error":
                    errors[error_kind(str(reply.args[2]))] += 1
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

    def status_until(st: OscClient, predicate, deadline: float, what: str) -> dict:
        """Ask for status until ``predicate`` holds; a request or reply the flood made the kernel
        drop (UDP) is asked again, not taken for the daemon's silence."""
        while True:
            try:
                st.send("/genbridge/status")
                while (reply := st.recv(min(2.0, max(0.1, deadline - time.monotonic())))).address != \
                        "/genbridge/status/reply":
                    pass
                status = json.loads(reply.args[1])
                if predicate(status):
                    return status
            except socket.timeout:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            stop.wait(0.05)

    def recovered_worker(st: OscClient, restarts: int, deadline: float) -> str | None:
        """None once the worker of model m was restarted and its new process made a clip (a
        refill, or one of the many generate jobs the fuzz's valid mutations queue); else what did
        not happen. ``st`` asks status and nothing else."""
        try:
            back = status_until(st, lambda s: s["models"]["m"]["restarts"] > restarts
                                and s["models"]["m"]["state"] == "ready", deadline, "the worker back")
            made = back["models"]["m"]["made"]
            status_until(st, lambda s: s["models"]["m"]["made"] > made, deadline, "a clip from the new worker")
        except (AssertionError, socket.timeout) as exc:
            return str(exc)[:200]
        return None

    def recovered_folder(c: OscClient, st: OscClient, deadline: float) -> str | None:
        """None once the folder takes writes again (status: output ok, no clip held in memory:
        every refill the full disk refused was written) and a play names a whole file; else what
        did not happen. Fresh plays are not asked for: the fuzz's valid generate jobs outrank
        refills, so how soon a pool is fresh again measures the fuzz, not the disk."""
        try:
            status_until(st, lambda s: s["output"]["state"] == "ok" and not s["output"]["held_clips"], deadline,
                         "the folder to take writes again")
        except (AssertionError, socket.timeout) as exc:
            return str(exc)[:200]
        c.send("/genbridge/drum/play", "kick", 100, "probe-play")
        try:
            while (reply := c.recv(max(0.1, deadline - time.monotonic()))).args[:1] != ["probe-play"]:
                pass
        except socket.timeout:
            return "no reply to a play"
        if reply.address != "/genbridge/drum/played":
            return f"{reply.address} {reply.args[1:]}"
        if sf.info(reply.args[2]).frames != TINY_LENGTH:
            return f"{reply.args[2]} is not whole"
        return None

    def fill_disk(folder: Path, st: OscClient, seconds: float) -> bool:
        """Keep the folder's filesystem full for ``seconds`` (the sweep frees space as it removes
        old clips: the filler takes it back at once), then free it. True when status said the
        folder was failing meanwhile (the fault happened)."""
        filler = folder / "filler"
        failing = False
        end = time.monotonic() + seconds
        with open(filler, "ab", buffering=0) as fh:
            while time.monotonic() < end:
                try:
                    while True:
                        fh.write(b"\0" * 65536)
                except OSError:
                    try:
                        while True:
                            fh.write(b"\0" * 512)
                    except OSError:
                        pass
                try:
                    failing = failing or st.status()["output"]["state"] == "failing"
                except socket.timeout:
                    pass  # a status the flood made the kernel drop: asked again on the next round
                stop.wait(0.2)
        filler.unlink()
        return failing

    def fault_loop() -> None:
        c, st = OscClient(daemon.port), OscClient(daemon.port)  # probes; status only
        kinds = ["kill -9 worker", "SIGSTOP worker"] + (["disk full"] if tmpfs else [])
        n = 0
        while not stop.wait(args.fault_every):
            kind = kinds[n % len(kinds)]
            n += 1
            status = status_until(st, lambda s: True, time.monotonic() + 30, "status")
            worker, restarts = status["models"]["m"]["pid"], status["models"]["m"]["restarts"]
            t = time.monotonic()
            if kind == "kill -9 worker" and worker:
                os.kill(worker, signal.SIGKILL)
                failure = recovered_worker(st, restarts, t + 60)
            elif kind == "SIGSTOP worker" and worker:
                os.kill(worker, signal.SIGSTOP)
                failure = recovered_worker(st, restarts, t + 60)
            elif kind == "disk full":
                failing = fill_disk(out, st, 8.0)
                t = time.monotonic()
                failure = recovered_folder(c, st, t + 60) if failing else "the daemon never said the disk was full"
            else:
                continue
            ok = failure is None
            faults.append({"kind": kind, "at_s": round(t - t0, 1), "recovered": ok,
                           "recovery_s": round(time.monotonic() - t, 2) if ok else None, "failure": failure})
            print(f"  fault {kind} at {t - t0:.0f} s: " + (f"recovered in {faults[-1]['recovery_s']} s" if ok
                                                           else f"NOT RECOVERED: {failure}"), flush=True)
        c.close()
        st.close()

    threads = [threading.Thread(target=f, daemon=True) for f in (pads, probe, watcher)]
    if args.fault_every > 0:
        threads.append(threading.Thread(target=fault_loop, daemon=True))
    print(f"soak for {args.seconds:g} s: flood {args.flood:g}/s, fuzz {args.fuzz:g}/s, plays 4/s, probe 20/s, "
          f"a fault every {args.fault_every:g} s (disk faults: {'yes, tmpfs' if tmpfs else 'no (not root)'}), "
          f"leak {args.leak_mb:g} MB per clip under a {args.memory_limit_mb:g} MB ceiling", flush=True)
    t0 = time.monotonic()
    warm: tuple[float, int] | None = None
    for p in senders:
        p.start()
    for t in threads:
        t.start()
    while time.monotonic() - t0 < args.seconds:
        time.sleep(min(30.0, args.seconds - (time.monotonic() - t0)))
        sent["flood"], sent["fuzz"] = counts["flood"].value, counts["fuzz"].value
        if warm is None and time.monotonic() - t0 >= WARM_UP_S:
            warm = (rss_mb(pid), fd_count(pid))
        print(f"  {time.monotonic() - t0:5.0f} s: flood {sent['flood']}, fuzz {sent['fuzz']}, plays {played[0]} "
              f"({fresh[0]} fresh), probes {len(latencies)} ok / {lost_probes[0]} lost, RSS {rss_mb(pid):.0f} MB, "
              f"fds {fd_count(pid)}", flush=True)
    stop.set()
    proc_stop.set()
    for t in threads:
        t.join(70)
    for p in senders:
        p.join(5)
    sent["flood"], sent["fuzz"] = counts["flood"].value, counts["fuzz"].value
    elapsed = time.monotonic() - t0
    time.sleep(2.0)  # the last replies in flight
    rss1, fds1 = rss_mb(pid), fd_count(pid)
    final = control.status()
    alive = control.request("/genbridge/ping", 99, reply="/genbridge/pong").args[0] == 99 and daemon.proc.poll() is None
    control.close()
    daemon.stop()

    osc, counters = final["osc"], final["counters"]
    recovered = sum(f["recovered"] for f in faults)
    took = [f["recovery_s"] for f in faults if f["recovered"]]
    rows = [
        ["packets sent: flood (valid pings)", sent["flood"]], ["packets sent: fuzz", sent["fuzz"]],
        ["packets sent: plays", sent["plays"]], ["packets sent: probe pings", sent["probe"]],
        ["packets received by the daemon", osc["packets"]], ["malformed", osc["malformed"]],
        ["error replies sent", osc["errors_sent"]], ["error replies suppressed (rate limit)", osc["errors_suppressed"]],
        ["dropped: busy / rate / oversize / not allowed",
         f"{osc['dropped_busy']} / {osc['dropped_rate']} / {osc['dropped_oversize']} / {osc['dropped_not_allowed']}"],
        ["plays served / fresh ratio", f"{played[0]} / {fresh[0] / max(1, played[0]):.3f}"],
        ["play errors by kind", ", ".join(f"{k} {v}" for k, v in errors.most_common()) or "none"],
        ["restarts m / leak (worker crashes, hangs, memory)",
         f"{final['models']['m']['restarts']} / {final['models']['leak']['restarts']} "
         f"({counters['worker_crashes']}, {counters['worker_hangs']}, {counters['worker_memory_restarts']})"],
        ["faults / followed by recovery", f"{len(faults)} / {recovered}"],
        ["recovery s: median / max", f"{percentile(took, 50):.2f} / {max(took, default=float('nan')):.2f}"],
        ["daemon RSS start / end / peak MB", f"{rss0:.0f} / {rss1:.0f} / {rss_peak[0]:.0f} "
                                             f"({(rss1 - rss0) / rss0 * 100:+.1f} %)"],
        ["daemon RSS after warm-up / end MB", f"{warm[0]:.0f} / {rss1:.0f} ({(rss1 - warm[0]) / warm[0] * 100:+.1f} %)"
         if warm else "n/a"],
        ["daemon open fds start / end", f"{fds0} / {fds1} ({(fds1 - fds0) / max(1, fds0) * 100:+.1f} %)"],
        ["probe ping p50 / p99 / max ms", f"{percentile(latencies, 50):.2f} / {percentile(latencies, 99):.2f} / "
                                          f"{max(latencies) if latencies else float('nan'):.2f}"],
        ["probe pings lost (>1 s)", lost_probes[0]], ["partial files seen", len(partial)],
        ["daemon alive at the end (0 crashes)", alive],
    ]
    print()
    print(table(["figure", "value"], rows))
    print(f"{elapsed:.0f} s; flood achieved {sent['flood'] / elapsed:.0f}/s, fuzz {sent['fuzz'] / elapsed:.0f}/s")
    if partial:
        print("PARTIAL FILES:", partial[:10])
    path = save("soak", {"seconds": elapsed, "sent": sent, "osc": osc, "engine": counters,
                         "restarts": {name: m["restarts"] for name, m in final["models"].items()},
                         "last_exits": {name: m["health"].get("last_exit") for name, m in final["models"].items()},
                         "plays": {"served": played[0], "fresh": fresh[0], "errors": dict(errors)},
                         "faults": faults,
                         "rss_mb": {"start": rss0, "after_warm_up": warm[0] if warm else None, "end": rss1,
                                    "peak": rss_peak[0]},
                         "fds": {"start": fds0, "end": fds1},
                         "ping_ms": {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
                                     "max": max(latencies) if latencies else None, "n": len(latencies),
                                     "lost": lost_probes[0]},
                         "partial_files": partial, "alive": alive})
    print(f"wrote {path}")
    ok = alive and not partial and recovered == len(faults)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
