"""An Ableton Link peer in a process of its own, driven over stdin (a stand-in for Live).

Commands, one per line: ``tempo BPM`` (change the session's tempo), ``read`` (print one JSON line:
tempo, beat, phase, peers, and the Link clock time it was read at, CLOCK_MONOTONIC_RAW seconds),
``quit``. It prints ``ready`` once Link is enabled.
"""

from __future__ import annotations

import asyncio
import json
import sys


async def main(bpm: float, quantum: float) -> None:
    from aalink import Link

    link = Link(bpm)
    link.quantum = quantum
    await asyncio.sleep(0.5)  # see bridge/link_timeline.JOIN_DELAY_S
    link.enabled = True
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "quit":
            break
        if line[0] == "tempo":
            link.tempo = float(line[1])
            print("ok", flush=True)
        elif line[0] == "read":
            for _ in range(5):  # tightly bracketed (see bridge/link_timeline.BRACKET_S)
                before = link.time.total_seconds()
                beat = link.beat
                after = link.time.total_seconds()
                if after - before < 100e-6:
                    break
            print(json.dumps({"tempo": link.tempo, "beat": beat, "phase": link.phase, "peers": link.num_peers,
                              "time": (before + after) / 2}), flush=True)
    link.enabled = False


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 4.0))
