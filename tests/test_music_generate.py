"""/genbridge/music/generate end to end: text to music in takes, each take its own job with its
own files, clear errors that queue nothing, and a cancel that stops every take of the pass."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import build_tiny_model, write_config
from helpers import OscClient
from musicgen_models import build_tiny_musicgen

RATE = 32000


def _config(tmp_path: Path, *, tokenizer: bool = True) -> Path:
    drums = build_tiny_model(tmp_path / "drums")
    musicgen = build_tiny_musicgen(tmp_path / ("musicgen" if tokenizer else "musicgen-no-tokenizer"),
                                   window_seconds=30.0, tokenizer=tokenizer)
    return write_config(tmp_path / "c.toml", drums, pool=0, subtype="FLOAT", instruments=("kick",), extra=f"""
[continuation]
model = "{musicgen}"
chunk_seconds = 0.5
max_seconds = 120
top_k = 8
""")


def _ready(client) -> dict:
    return client.wait_until(lambda s: s.get("continuation", {}).get("state") == "ready",
                             what="the MusicGen worker")["continuation"]


def _queued(client, n: int, rid) -> list[int]:
    """The job ids of a request's ``n`` takes, from its job/queued replies (all at one position)."""
    replies = [client.expect("/genbridge/job/queued") for _ in range(n)]
    assert all(r.args[0] == rid for r in replies), replies
    assert len({r.args[2] for r in replies}) == 1, f"the takes share the request's position: {replies}"
    return [r.args[1] for r in replies]


def _collect(client, job_ids: list[int]) -> dict[int, dict]:
    """Every reply of these jobs until each is done: {job id: {progress, chunks, done}}."""
    jobs = {j: {"progress": [], "chunks": [], "done": None} for j in job_ids}
    while any(job["done"] is None for job in jobs.values()):
        r = client.recv(timeout=180)
        assert r.address != "/genbridge/error", r
        job = jobs.get(r.args[1])
        if job is None:
            continue
        if r.address == "/genbridge/job/progress":
            job["progress"].append(r.args[2])
        elif r.address == "/genbridge/job/chunk":
            job["chunks"].append((r.args[2], r.args[3]))
        elif r.address == "/genbridge/job/done":
            job["done"] = r
    return jobs


def test_two_takes_of_a_description_are_two_jobs_with_their_own_files(tmp_path: Path, start_daemon) -> None:
    daemon, client = start_daemon(_config(tmp_path))
    assert _ready(client)["info"]["capabilities"]["text"], "the tiny model has its text encoder and tokenizer"

    client.send("/genbridge/music/generate", "funky drums", 2.0, 2, 7, "m1")
    first, second = _queued(client, 2, "m1")
    assert second == first + 1, "take i is job J+i"
    jobs = _collect(client, [first, second])

    takes = []
    for take, job_id in enumerate((first, second)):
        job = jobs[job_id]
        path = Path(job["done"].args[3])
        assert "music-j" in path.name, path
        whole, rate = sf.read(path, dtype="float32", always_2d=True)
        assert rate == RATE and whole.shape == (2 * RATE, 1), (path, whole.shape)
        assert float(np.sqrt(np.mean(whole ** 2))) > 1e-4, f"take {take} is silent"
        chunks = job["chunks"]
        assert chunks and [i for i, _ in chunks] == list(range(len(chunks))), chunks
        assert job["done"].args[2] == len(chunks)
        joined = np.concatenate([sf.read(p, dtype="float32", always_2d=True)[0] for _, p in chunks])
        assert np.array_equal(joined, whole), f"take {take}: its chunks joined are its file"
        assert job["progress"] == sorted(job["progress"]) and job["progress"][-1] == 1.0
        meta = json.loads(path.with_suffix(".json").read_text())
        assert (meta["take"], meta["takes"], meta["seed"], meta["job"]) == (take, 2, 7 + take, job_id), meta
        assert meta["description"] == "funky drums" and meta["source"] == "text", meta
        assert meta["kind"] == "musicgen text-to-music"
        takes.append(whole)
    assert not np.array_equal(takes[0], takes[1]), "two takes, two pieces"
    status = client.status()["continuation"]
    assert status["done"] == 2 and status["running"] is None and status["running_jobs"] == []


#: Bad text-to-music requests and the words their error must hold.
BAD_MUSIC_REQUESTS = [
    (("funky drums", 2.0, 9, 1), "takes must be <= 8"),
    (("funky drums", 0.0, 1, 1), "seconds must be >= 0.1"),
    (("funky drums", 200.0, 1, 1), "continuation.max_seconds"),
    (("funky drums", 2.0, 0, 1), "takes must be >= 1"),
]


def test_bad_music_requests_get_an_error_and_queue_nothing(tmp_path: Path, start_daemon) -> None:
    daemon, client = start_daemon(_config(tmp_path))  # one daemon: each bad request must leave it as it was
    _ready(client)
    for n, (args, message) in enumerate(BAD_MUSIC_REQUESTS):
        client.send("/genbridge/music/generate", *args, f"bad{n}")
        r = client.expect("/genbridge/error")  # on the sender's port
        assert r.args[0] == f"bad{n}" and r.args[1] == "/genbridge/music/generate" and message in r.args[2], r.args
        with pytest.raises(socket.timeout):
            client.expect("/genbridge/job/queued", timeout=0.3)
        status = client.status()["continuation"]
        assert status["queued"] == [] and status["running"] is None and status["done"] == 0, (args, status)


def test_a_description_without_a_tokenizer_is_refused_and_no_words_still_make_music(tmp_path: Path,
                                                                                   start_daemon) -> None:
    daemon, client = start_daemon(_config(tmp_path, tokenizer=False))
    status = _ready(client)
    client.send("/genbridge/music/generate", "", 1.0, 1, 3, "plain")
    (job,) = _queued(client, 1, "plain")
    done = _collect(client, [job])[job]["done"]
    audio, rate = sf.read(done.args[3], dtype="float32", always_2d=True)
    assert rate == RATE and audio.shape == (RATE, 1), "an empty description needs no text encoder"
    assert not status["info"]["capabilities"]["text"], "the family found out at load: no tokenizer, no text"
    client.send("/genbridge/music/generate", "funky drums", 1.0, 1, 3, "words")
    r = client.expect("/genbridge/error")
    assert r.args[0] == "words" and "no tokenizer" in r.args[2], r.args
    with pytest.raises(socket.timeout):
        client.expect("/genbridge/job/queued", timeout=0.3)


def test_cancelling_one_take_stops_both_and_neither_is_done(tmp_path: Path, start_daemon) -> None:
    daemon, client = start_daemon(_config(tmp_path))
    _ready(client)
    client.send("/genbridge/music/generate", "slow techno", 120.0, 2, 3, "long")  # seconds of work, past a window
    takes = _queued(client, 2, "long")
    while True:  # the first chunk of either take: the pass is under way
        r = client.recv(timeout=180)
        assert r.address != "/genbridge/error", r
        if r.address == "/genbridge/job/chunk" and r.args[1] in takes:
            break
    watcher = OscClient(daemon.port)  # status on a socket of its own: the replies above keep coming
    try:
        status = watcher.status()["continuation"]
    finally:
        watcher.close()
    assert status["running_jobs"] == takes and status["running"] == takes[0], status
    client.send("/genbridge/job/cancel", takes[0], "stop")
    client.send("/genbridge/music/generate", "calm piano", 1.0, 1, 4, "next")
    cancelled, after, next_job = [], [], None
    while True:
        r = client.recv(timeout=180)
        assert r.address != "/genbridge/error", r
        if r.address == "/genbridge/job/cancelled":
            assert r.args[0] == "stop"
            cancelled.append(r.args[1])
        elif r.address == "/genbridge/job/queued" and r.args[0] == "next":
            next_job = r.args[1]
        elif r.args[1] in takes:
            after.append((r.address, r.args[1]))
        elif r.address == "/genbridge/job/done" and r.args[1] == next_job:
            break  # the request queued behind ran after the cancel: the worker stayed usable
    assert cancelled == takes, "each take of the pass is told it was cancelled, the one asked for first"
    assert not [a for a in after if a[0] == "/genbridge/job/done"], after
    for take in takes:
        assert sum(1 for a in after if a == ("/genbridge/job/chunk", take)) <= 1, f"stopped within a chunk: {after}"
    status = client.status()["continuation"]
    assert status["cancelled"] == 2 and status["done"] == 1
