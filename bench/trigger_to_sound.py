"""OSC or MIDI trigger -> first sample at a JACK recorder: what a drummer feels.

For each block size (256 and 64 frames at 48 kHz) it starts its own ``jackd -d dummy``, the
daemon (as the README starts it) with a small real model, and a JACK-Client recorder on the
daemon's output ports, then sends triggers one at a time and times each from the moment the
OSC packet is sent to the first recorded sample of that clip. Twice: idle (pools full, no model
running) and generating (another instrument's pool refilling the whole time). Prints p50/p99,
the ratio to the block duration, and the underflow counts from /genbridge/status.

With ``--via midi`` the trigger is a JACK MIDI note-on (36, velocity 127) from a JACK-Client
sender into the daemon's virtual input, timed from the cycle it was sent in.

Usage: python bench/trigger_to_sound.py [--triggers 300] [--blocks 256 64] [--via osc midi]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import soxr  # noqa: E402
from _common import percentile, save, table  # noqa: E402
from conftest import build_tiny_model, write_config  # noqa: E402
from helpers import Daemon, OscClient  # noqa: E402
from jack_peer import RATE, JackServer, MidiSender, Recorder  # noqa: E402

THRESHOLD = 1e-3


def first_above(x: np.ndarray) -> int:
    idx = np.flatnonzero(np.abs(x) > THRESHOLD)
    return int(idx[0]) if len(idx) else -1


def run(block: int, triggers: int, generating: bool, model: Path, tmp: Path, via: str = "osc") -> dict[str, float]:
    server = JackServer(period=block)
    audio = f'device = "system"\nblock_size = {block}\ninput_channels = 0'
    extra = '\n[midi]\nbackend = "mido.backends.rtmidi/UNIX_JACK"\nvirtual = true\n' if via == "midi" else ""
    if generating:  # a long generate job keeps the model worker busy for the whole run
        extra += '\n[instruments.bg]\nmodel = "m"\npool = 0\nsteps = 30\n'
    # idle: no pool, so the first trigger generates a clip and every later one replays it and
    # nothing runs in the background; generating: a full pool, refills and a long job running
    pool = triggers + 10 if generating else 0
    config = write_config(tmp / f"c{block}{generating}{via}.toml", model, pool=pool, instruments=("kick",),
                          extra=extra, audio=audio)
    config.write_text("[server]\nmax_count = 10000\n" + config.read_text())
    daemon = Daemon(tmp / f"out{block}{generating}{via}", config, env=server.env())
    recorder = sender = None
    try:
        daemon.wait_for_ping()
        client = OscClient(daemon.port)
        client.wait_until(lambda s: s["audio"]["state"] == "running"
                          and s["instruments"]["kick"]["ready"] >= pool, timeout=900, what="pool")
        if not generating:
            client.request("/genbridge/drum/play", "kick", 127, reply="/genbridge/drum/played", timeout=60)
        recorder = Recorder(server, server.wait_for_port("PortAudio"), seconds=triggers * 0.3 + 30)
        if generating:
            client.request("/genbridge/drum/generate", "bg", 10000, 1, 0, "bg", reply="/genbridge/job/started")
            client.wait_until(lambda s: s["models"]["m"]["busy"], what="generation running")
        before = client.status()["audio"]
        latencies, fresh = [], 0
        if via == "midi":
            sender = MidiSender(server, "genbridge:genbridge")
        session = daemon.session_dir()
        for k in range(triggers):
            start = recorder.mark()
            if via == "midi":
                known = set(session.glob("*-kick.wav"))
                sent_before = len(sender.sent_at)
                sender.send(0x99, 36, 127)  # note-on, channel 10
                while len(sender.sent_at) == sent_before:
                    time.sleep(0.0005)
                sent = sender.sent_at[-1]
                recorder.wait_frames(int(0.05 * RATE))
                new = sorted(set(session.glob("*-kick.wav")) - known)
                path = str(new[-1]) if new else str(sorted(session.glob("*-kick.wav"))[-1])
                fresh += bool(new)
            else:
                sent = time.monotonic()
                client.send("/genbridge/drum/play", "kick", 127, k + 1)
                reply = client.recv()
                while reply.address != "/genbridge/drum/played":  # drum/ready of the background job
                    reply = client.recv()
                fresh += reply.args[3]
                path = reply.args[2]
            clip, rate = sf.read(path, dtype="float32")
            clip = soxr.resample(clip, rate, RATE, quality="HQ")
            recorder.wait_frames(len(clip) + 2 * block)
            rec = recorder.since(start)
            i = first_above(rec.audio[:, 0])
            j = first_above(clip)
            if i < 0 or j < 0:
                continue
            latencies.append(rec.time_of(i - j) - sent)
        client.sock.settimeout(0.2)
        after = None
        while after is None:  # status, skipping background drum/ready replies
            client.send("/genbridge/status")
            try:
                while True:
                    r = client.recv(timeout=1.0)
                    if r.address == "/genbridge/status/reply":
                        import json

                        after = json.loads(r.args[1])
                        break
            except OSError:
                continue
        client.close()
    finally:
        if sender is not None:
            sender.close()
        if recorder is not None:
            recorder.close()
        daemon.stop()
        server.kill()
    ms = [v * 1000 for v in latencies]
    audio = after["audio"]
    return {"via": via, "block": block, "generating": generating, "n": len(ms), "fresh": fresh,
            "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "max_ms": max(ms),
            "block_ms": block / RATE * 1000, "underflows": audio["underflows"] - before["underflows"],
            "callback_load": audio["callback_load"],
            "model_busy_at_end": after["models"]["m"]["busy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--triggers", type=int, default=300)
    ap.add_argument("--blocks", type=int, nargs="+", default=[256, 64])
    ap.add_argument("--via", nargs="+", choices=["osc", "midi"], default=["osc", "midi"])
    args = ap.parse_args()
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = build_tiny_model(tmp_path / "model")
        for via in args.via:
            for block in args.blocks:
                for generating in (False, True):
                    r = run(block, args.triggers, generating, model, tmp_path, via)
                    results.append(r)
                    load = "generating" if generating else "idle"
                    rows.append([via, block, load, r["n"], r["p50_ms"], r["p99_ms"], r["max_ms"],
                                 r["p99_ms"] / r["block_ms"], r["underflows"], r["callback_load"]])
                    print(f"{via} block {block} {load}: p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                          f"underflows {r['underflows']}", flush=True)
    print()
    print(table(["via", "block", "load", "n", "p50 ms", "p99 ms", "max ms", "p99 / block", "underflows", "cb load"],
                rows))
    print(f"\nwrote {save('trigger_to_sound', {'triggers': args.triggers, 'runs': results})}")


if __name__ == "__main__":
    main()
