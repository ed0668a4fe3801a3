"""Done-when 1: the daemon end to end with liblo-tools as the peer (oscsend, oscdump)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from conftest import TINY_LENGTH, TINY_RATE, pools_full, write_config
from helpers import OscDump, assert_valid_clip, oscsend


def test_play_and_generate_over_liblo(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    daemon, client = start_daemon(write_config(tmp_path / "c.toml", tiny_model, pool=2))
    client.wait_until(pools_full("kick"), what="kick pool to fill")
    dump = OscDump()
    try:
        # oscsend sends from a throwaway port: register oscdump's port for this host's replies
        # (from now on every reply to 127.0.0.1 goes there, the python client's too).
        oscsend(daemon.port, "/genbridge/client/reply_port", "i", dump.port)
        assert dump.expect("/genbridge/client/registered").args == [0, dump.port]
        oscsend(daemon.port, "/genbridge/drum/play", "s", "kick")
        played = dump.expect("/genbridge/drum/played")
        rid, instrument, path, fresh = played.args
        assert (rid, instrument, fresh) == (0, "kick", 1)
        meta = assert_valid_clip(path, sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)
        assert meta["instrument"] == "kick"
        assert Path(path).parent == daemon.session_dir()

        oscsend(daemon.port, "/genbridge/drum/generate", "sii", "snare", 3, 7)
        started = dump.expect("/genbridge/job/started")
        job_id = started.args[1]
        assert started.args[2:] == ["snare", 3]
        paths = [dump.expect("/genbridge/drum/ready").args[2] for _ in range(3)]
        done = dump.expect("/genbridge/job/done")
        assert done.args[:3] == [0, job_id, 3] and done.args[3].endswith(".wav")
        assert len(set(paths)) == 3
        seeds = [assert_valid_clip(p, sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)["seed"]
                 for p in paths]
        assert seeds == [7, 8, 9]
        audio = [sf.read(p)[0] for p in paths]
        for a in range(3):
            for b in range(a + 1, 3):
                assert not np.allclose(audio[a], audio[b]), "different seeds gave the same clip"

        # The id travels with the request and comes back first in every reply.
        oscsend(daemon.port, "/genbridge/ping", "i", 4242)
        assert dump.expect("/genbridge/pong").args[0] == 4242
        oscsend(daemon.port, "/genbridge/drum/play", "sfs", "hat", 0.5, "pad-3")
        played = dump.expect("/genbridge/drum/played")
        assert played.args[0] == "pad-3" and played.args[1] == "hat"
    finally:
        dump.close()


def test_replies_go_to_the_senders_port(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    daemon, client = start_daemon(write_config(tmp_path / "c.toml", tiny_model, pool=1))
    reply = client.request("/genbridge/ping", 7, reply="/genbridge/pong")
    assert reply.args[0] == 7 and reply.args[1]
    # per-request steps, and seed -1 for a random one (recorded in the sidecar)
    client.send("/genbridge/drum/generate", "hat", 2, -1, 6, "s")
    assert client.expect("/genbridge/job/started").args == ["s", 1, "hat", 2]
    metas = [assert_valid_clip(client.expect("/genbridge/drum/ready").args[2], sample_rate=TINY_RATE,
                               frames=TINY_LENGTH, channels=1) for _ in range(2)]
    assert [m["steps"] for m in metas] == [6, 6]
    assert metas[0]["seed"] != metas[1]["seed"]


def test_default_config_serves_the_shipped_model(tmp_path: Path, start_daemon) -> None:
    """The README's run command: no config, the shipped default model, no downloads."""
    daemon, client = start_daemon(None)
    status = client.wait_until(lambda s: s["models"]["default"]["state"] == "ready", what="default model")
    info = status["models"]["default"]["info"]
    reply = client.request("/genbridge/drum/play", "kick", 100, reply="/genbridge/drum/played", timeout=120)
    assert_valid_clip(reply.args[2], sample_rate=info["sample_rate"], frames=info["length"],
                      channels=info["channels"])


def test_the_default_config_serves_the_shipped_trained_model(tmp_path: Path) -> None:
    import os

    from helpers import Daemon, OscClient

    daemon = Daemon(tmp_path / "out")  # the default config: the shipped default model
    daemon.wait_for_ping()
    client = OscClient(daemon.port)
    status = client.wait_until(lambda s: s["models"]["default"]["state"] == "ready", what="default model")
    info = status["models"]["default"]["info"]
    assert info["trained"] is True and {"kick", "snare", "hat"} <= set(info["classes"])
    reply = client.request("/genbridge/drum/play", "kick", 100, reply="/genbridge/drum/played", timeout=120)
    meta = assert_valid_clip(reply.args[2], sample_rate=info["sample_rate"], frames=info["length"],
                             channels=info["channels"])
    assert meta["trained"] is True and meta["instrument"] == "kick"
    client.close()
    pid = status["models"]["default"]["pid"]
    assert daemon.stop() == 0
    assert "stopped" in daemon.log() and "UNTRAINED" not in daemon.log()
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive, "the model worker outlived the daemon"


def test_a_model_folder_without_weights_is_announced_untrained(tmp_path: Path, caplog) -> None:
    import json
    import logging

    from models.diffusion import load_generator

    folder = tmp_path / "placeholder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "format": "genbridge-diffusion", "version": 1, "sample_rate": TINY_RATE, "length": TINY_LENGTH,
        "default_steps": 4, "weights": None, "init_seed": 0,
        "unet": {"in_channels": 1, "channels": [8, 16, 32], "factors": [1, 4, 4], "items": [1, 1, 1],
                 "attentions": [0, 0, 1], "attention_heads": 2, "attention_features": 16}}))
    with caplog.at_level(logging.WARNING):
        gen = load_generator(folder, name="p")
    assert gen.info.trained is False and gen.info.weights == "random"
    assert "has no trained weights" in caplog.text


def test_two_patches_on_one_host_get_their_own_replies(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    """Each [udpsend] + [udpreceive] pair registers from its own socket; a socket that registered
    nothing (oscsend) gets the host's latest registration."""
    from helpers import OscClient

    daemon, _ = start_daemon(write_config(tmp_path / "c.toml", tiny_model, pool=0))
    pads_send, pads_listen = OscClient(daemon.port), OscClient(daemon.port)
    cont_send, cont_listen = OscClient(daemon.port), OscClient(daemon.port)
    other = OscClient(daemon.port)
    try:
        pads_send.send("/genbridge/client/reply_port", pads_listen.port)
        assert pads_listen.expect("/genbridge/client/registered").args == [0, pads_listen.port]
        cont_send.send("/genbridge/client/reply_port", cont_listen.port)
        assert cont_listen.expect("/genbridge/client/registered").args == [0, cont_listen.port]
        pads_send.send("/genbridge/ping", 1)
        cont_send.send("/genbridge/ping", 2)
        assert pads_listen.expect("/genbridge/pong").args[0] == 1
        assert cont_listen.expect("/genbridge/pong").args[0] == 2
        other.send("/genbridge/ping", 3)
        assert cont_listen.expect("/genbridge/pong").args[0] == 3, "the host's latest registration"
    finally:
        for c in (pads_send, pads_listen, cont_send, cont_listen, other):
            c.close()
