"""/genbridge/continue end to end: queued, progress, chunks that join into the final file,
a queue with positions, cancel within one chunk, and clear errors."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import build_tiny_model, write_config

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "musicgen" / "audiocraft"


def _config(tmp_path: Path) -> Path:
    model = build_tiny_model(tmp_path / "drums")
    return write_config(tmp_path / "c.toml", model, pool=0, subtype="FLOAT", instruments=("kick",), extra=f"""
[continuation]
model = "{FIXTURE}"
prompt_seconds = 1.0
chunk_seconds = 0.5
max_seconds = 60
top_k = 8
""")


def _prompt(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(44100) / 44100
    sf.write(folder / "prompt.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 44100)
    return folder / "prompt.wav"


def _collect(client, job_id: int):
    progress, chunks = [], []
    while True:
        r = client.recv(timeout=120)
        assert r.address != "/genbridge/error", r
        if r.address == "/genbridge/job/progress" and r.args[1] == job_id:
            progress.append(r.args[2])
        elif r.address == "/genbridge/job/chunk" and r.args[1] == job_id:
            chunks.append((r.args[2], r.args[3]))
        elif r.address == "/genbridge/job/done" and r.args[1] == job_id:
            return progress, chunks, r


def test_continue_streams_chunks_queues_and_cancels(tmp_path: Path, start_daemon) -> None:
    daemon, client = start_daemon(_config(tmp_path))
    _prompt(daemon.out)
    client.wait_until(lambda s: s.get("continuation", {}).get("state") == "ready", what="the MusicGen worker")

    client.send("/genbridge/continue", "prompt.wav", 2.0, "", 5, "c1")
    queued = client.expect("/genbridge/job/queued")
    assert queued.args[0] == "c1" and queued.args[2] == 0
    progress, chunks, done = _collect(client, queued.args[1])
    assert len(chunks) >= 2 and [i for i, _ in chunks] == list(range(len(chunks)))
    assert progress == sorted(progress) and progress[-1] == 1.0
    whole, rate = sf.read(done.args[3], dtype="float32", always_2d=True)
    assert rate == 32000 and whole.shape == (64000, 1) and done.args[2] == len(chunks)
    joined = np.concatenate([sf.read(p, dtype="float32", always_2d=True)[0] for _, p in chunks])
    assert np.array_equal(joined, whole), "the chunks joined are the final file"
    assert float(np.sqrt(np.mean(whole ** 2))) > 1e-4

    # a long job, a second one queued behind it, then cancel the first within one chunk
    client.send("/genbridge/continue", "last", 60.0, "", 1, "long")
    long_job = client.expect("/genbridge/job/queued").args[1]
    client.send("/genbridge/continue", "prompt.wav", 1.0, "", 2, "next")
    second = client.expect("/genbridge/job/queued")
    assert second.args[2] == 1, "queued behind the running job"
    while True:
        r = client.recv(timeout=120)
        if r.address == "/genbridge/job/chunk" and r.args[1] == long_job:
            break
    client.send("/genbridge/job/cancel", long_job, "stop")
    seen_after = []
    while True:
        r = client.recv(timeout=120)
        if r.address == "/genbridge/job/cancelled":
            assert r.args == ["stop", long_job]
        elif r.args[1] == long_job:
            seen_after.append(r.address)
        elif r.address == "/genbridge/job/done" and r.args[1] == second.args[1]:
            break  # the queued job ran after the cancel: the worker stayed usable
    assert "/genbridge/job/done" not in seen_after
    assert seen_after.count("/genbridge/job/chunk") <= 1, f"stopped within one chunk: {seen_after}"
    status = client.status()["continuation"]
    assert status["cancelled"] == 1 and status["done"] == 2


def test_two_takes_of_a_continuation_are_two_jobs_and_two_files(tmp_path: Path, start_daemon) -> None:
    daemon, client = start_daemon(_config(tmp_path))
    _prompt(daemon.out)
    client.wait_until(lambda s: s.get("continuation", {}).get("state") == "ready", what="the MusicGen worker")

    client.send("/genbridge/kw/continue", "prompt.wav", 2.0, "seed", 5, "takes", 2, "id", "t2")
    queued = [client.expect("/genbridge/job/queued") for _ in range(2)]
    assert [q.args[0] for q in queued] == ["t2", "t2"] and [q.args[2] for q in queued] == [0, 0]
    first, second = (q.args[1] for q in queued)
    assert second == first + 1
    done: dict[int, object] = {}
    while len(done) < 2:
        r = client.recv(timeout=120)
        assert r.address != "/genbridge/error", r
        if r.address == "/genbridge/job/done":
            done[r.args[1]] = r
    takes = []
    for take, job_id in enumerate((first, second)):
        path = Path(done[job_id].args[3])
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        assert rate == 32000 and audio.shape == (64000, 1), (path, audio.shape)
        assert float(np.sqrt(np.mean(audio ** 2))) > 1e-4
        meta = json.loads(path.with_suffix(".json").read_text())
        assert (meta["take"], meta["takes"], meta["seed"]) == (take, 2, 5 + take), meta
        assert meta["kind"] == "musicgen continuation" and "continue-j" in path.name
        takes.append(audio)
    assert len({done[j].args[3] for j in done}) == 2 and not np.array_equal(takes[0], takes[1])


#: Bad continuation requests and the words their error must hold; "last" comes after the others,
#: which must not have made a continuation.
BAD_CONTINUE_REQUESTS = [
    (("/etc/passwd", 2.0), "outside the shared folder"),
    (("missing.wav", 2.0), "no such file"),
    (("prompt.wav", 500.0), "seconds"),
    (("prompt.wav", 2.0, "funky drums"), "text encoder"),
    (("last", 2.0), "no continuation has been made yet"),
]


def test_bad_continue_requests_get_clear_errors(tmp_path: Path, start_daemon) -> None:
    daemon, client = start_daemon(_config(tmp_path))  # one daemon: each bad request must leave it as it was
    _prompt(daemon.out)
    client.wait_until(lambda s: s.get("continuation", {}).get("state") == "ready", what="the MusicGen worker")
    for args, message in BAD_CONTINUE_REQUESTS:
        client.send("/genbridge/continue", *args)
        r = client.expect("/genbridge/error")
        assert message in r.args[2], (args, r.args)
        with pytest.raises(socket.timeout):
            client.expect("/genbridge/job/queued", timeout=0.3)


def test_bars_give_the_exact_length_and_a_loop_wraps_without_a_click(tmp_path: Path, start_daemon) -> None:
    daemon, client = start_daemon(_config(tmp_path))
    _prompt(daemon.out)
    client.wait_until(lambda s: s.get("continuation", {}).get("state") == "ready", what="the MusicGen worker")
    assert client.status()["tempo"]["bpm"] == 120.0  # the fixed default

    results = {}
    for loop in (0, 1):
        client.send("/genbridge/continue/bars", "prompt.wav", 2, loop, "", 5, f"bars{loop}")
        job = client.expect("/genbridge/job/queued").args[1]
        _, chunks, done = _collect(client, job)
        audio, rate = sf.read(done.args[3], dtype="float32", always_2d=True)
        assert rate == 32000 and abs(audio.shape[0] - 128000) <= 1, audio.shape  # 4.000 s
        meta = json.loads(Path(done.args[3]).with_suffix(".json").read_text())
        assert (meta["bars"], meta["tempo_bpm"], meta["beats_per_bar"], meta["loop"]) == (2.0, 120.0, 4.0, bool(loop))
        assert meta["generated_s"] > 4.0, "the model made more than the bars, and it was cut"
        assert float(np.sqrt(np.mean(audio ** 2))) > 1e-4
        results[loop] = audio[:, 0]
    cut, looped = results[0], results[1]
    assert cut[-1] == 0.0, "the cut ends in a fade"
    wrap = abs(float(looped[0]) - float(looped[-1]))
    steps = np.abs(np.diff(looped))
    assert wrap <= steps.max(), f"the loop's join ({wrap:.4f}) steps further than the clip itself ({steps.max():.4f})"

    # at another tempo the same request is another length: 1 bar at 90 BPM is 2.667 s
    reply = client.request("/genbridge/tempo/set", 90.0, "t", reply="/genbridge/tempo/reply")
    assert reply.args[:2] == ["t", 90.0]
    client.send("/genbridge/continue/bars", "last", 1, 0, "", 6, "slow")
    job = client.expect("/genbridge/job/queued").args[1]
    _, _, done = _collect(client, job)
    audio, _ = sf.read(done.args[3], dtype="float32", always_2d=True)
    assert abs(audio.shape[0] - round(32000 * 8 / 3)) <= 1
