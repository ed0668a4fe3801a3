"""kill -9 and SIGTERM: no partial file is ever visible, a restarted daemon is warm at once, a
shutdown is quick and leaves no process behind; the folder stays within its caps."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import soundfile as sf
from conftest import SLOW, TINY_LENGTH, pools_full, write_config
from helpers import Daemon, OscClient
from test_session_index import wait_for_page


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (workers, the audio process, their helpers)."""
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = {int(c) for c in (task / "children").read_text().split()}
            except OSError:
                continue
            todo += list(kids - found)
            found |= kids
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _visible_clips(out: Path) -> list[Path]:
    return [p for p in out.rglob("*.wav") if not p.name.startswith(".")]


def test_kill_9_during_writes_leaves_only_whole_files_and_a_warm_restart(tmp_path: Path, tiny_model: Path) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=25)
    out = tmp_path / "out"
    daemon = Daemon(out, config)
    daemon.wait_for_ping()
    client = OscClient(daemon.port)
    requester = OscClient(daemon.port)  # its replies pile up unread
    requester.send("/genbridge/drum/generate", "snare", 30, 1)
    client.wait_until(lambda s: sum(i["ready"] for i in s["instruments"].values()) >= 10, what="writes under way")
    workers = _children(daemon.proc.pid)
    killed = {daemon.proc.pid, *workers}
    daemon.proc.kill()  # SIGKILL: no cleanup of any kind
    daemon.proc.wait()
    client.close()
    requester.close()
    deadline = time.monotonic() + 30
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)  # orphaned workers notice the closed pipe and exit (polling /proc, no event to await)
    assert not any(_alive(w) for w in workers), "workers outlived their daemon"

    clips = _visible_clips(out)
    assert clips, "nothing was written before the kill"
    for wav in clips:
        info = sf.info(str(wav))  # a visible WAV is always complete
        assert info.frames == TINY_LENGTH, wav
        assert json.loads(wav.with_suffix(".json").read_text())["frames"] == TINY_LENGTH

    pooled_before = len(list((out / ".pool").rglob("*.wav")))
    restarted = Daemon(out, config)
    try:
        restarted.wait_for_ping()
        client = OscClient(restarted.port)
        status = client.status()
        restored = sum(i.get("restored", 0) for i in status["instruments"].values())
        assert restored >= min(pooled_before, 3 * 25) > 0, (restored, pooled_before)
        reply = client.request("/genbridge/drum/play", "kick", reply="/genbridge/drum/played", timeout=5)
        assert reply.args[3] == 1, "a fresh clip from the restored pool, at once"
        # Only the killed processes' temporary files are leftovers: the restarted daemon's own
        # atomic writes (its index.html after the play, pool refills) pass through such names too.
        leftovers = [p for p in out.rglob(".*.tmp-*") if int(p.name.split(".tmp-")[1].split("-")[0]) in killed]
        assert not leftovers, "leftovers of interrupted writes are cleaned up"
        client.close()
    finally:
        restarted.stop()


def test_sigterm_mid_generation_exits_within_3_s_and_leaves_no_process(tmp_path: Path, tiny_model: Path) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=2, extra=SLOW)
    daemon = Daemon(tmp_path / "out", config)
    daemon.wait_for_ping()
    client = OscClient(daemon.port)
    client.wait_until(pools_full("kick", "snare", "hat"), what="pools")
    client.send("/genbridge/drum/generate", "slow", 1)
    client.expect("/genbridge/job/started")
    client.wait_until(lambda s: s["models"]["m"]["busy"], what="the slow clip to be under way")
    children = _children(daemon.proc.pid)
    assert children
    t0 = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    code = daemon.proc.wait(10)
    took = time.monotonic() - t0
    client.close()
    assert code == 0 and took < 3.0, (code, took)
    settle = time.monotonic() + 1.0  # multiprocessing's resource tracker leaves on its parent's EOF
    while any(_alive(c) for c in children) and time.monotonic() < settle:
        time.sleep(0.05)
    names = {c: Path(f"/proc/{c}/cmdline").read_text().replace("\0", " ")[:120] for c in children if _alive(c)}
    assert not names, f"orphan processes: {names}"
    assert "stopped" in daemon.log()


def test_the_folder_stays_within_its_size_cap_and_keeps_what_is_in_use(tmp_path: Path, tiny_model: Path,
                                                                       start_daemon) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=1, instruments=("kick",))
    clip_bytes = TINY_LENGTH * 3 + 2000  # PCM_24 + sidecar
    config.write_text(config.read_text().replace(
        "[output]\n", f"[output]\nmax_mb = {clip_bytes * 3 / 1e6}\nmin_age_s = 0\nsweep_every_s = 0.2\n"))
    daemon, client = start_daemon(config)
    client.send("/genbridge/drum/generate", "kick", 8, 1)
    client.expect("/genbridge/job/started")
    for _ in range(8):
        client.expect("/genbridge/drum/ready")
    client.expect("/genbridge/job/done")
    client.send("/genbridge/drum/play", "kick")  # the dry pool's replay target must survive
    played = client.expect("/genbridge/drum/played").args[2]
    status = client.wait_until(lambda s: s["counters"]["swept_files"] >= 5, what="the sweep")
    session = daemon.session_dir()
    clips = [p for p in session.iterdir() if p.suffix in (".wav", ".json")]  # the cap is on clips, not on index.html
    size = sum(p.stat().st_size for p in clips)
    assert size <= clip_bytes * 3 + clip_bytes, size
    assert Path(played).exists()
    assert status["counters"]["swept_bytes"] > 0
    assert Path(played).name in wait_for_page(session), "the page follows the sweep: exactly the clips left"
