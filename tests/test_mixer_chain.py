"""Chained voices: a stream's pieces join on the sample, whatever blocks they arrive in."""

from __future__ import annotations

import numpy as np

from bridge.mixer import Mixer, Trigger

SR = 48000
UNITY = np.ones(2, np.float32)


def _piece(frames: int, value: float) -> np.ndarray:
    return np.full((frames, 2), value, np.float32)


def test_chained_pieces_join_without_a_gap_or_an_overlap() -> None:
    m = Mixer(SR, limiter_threshold=1.0)
    out = np.zeros((256 * 40, 2), np.float32)
    buf = np.zeros((256, 2), np.float32)
    # the first piece at frame 1000 (a start frame here; a time in the daemon); later pieces arrive
    # while blocks go by, before the one ahead of them has finished (or even started)
    m.trigger(Trigger(_piece(700, 0.1), UNITY, start_frame=1000, chain=7))
    m.trigger(Trigger(_piece(333, 0.2), UNITY, chain=7))
    for i in range(0, len(out), 256):
        if i == 1024:
            m.trigger(Trigger(_piece(500, 0.3), UNITY, chain=7))
        m.process(buf)
        out[i : i + 256] = buf
    level = out[:, 0]
    assert not level[:1000].any()
    assert np.allclose(level[1000:1700], 0.1) and np.allclose(level[1700:2033], 0.2)
    assert np.allclose(level[2033:2533], 0.3) and not level[2533:].any()


def test_a_piece_that_comes_after_its_slot_plays_at_once_and_the_chain_goes_on_from_it() -> None:
    m = Mixer(SR, limiter_threshold=1.0)
    buf = np.zeros((256, 2), np.float32)
    out = []
    m.trigger(Trigger(_piece(100, 0.1), UNITY, start_frame=0, chain=3))
    for _ in range(4):  # 1024 frames: the first piece ended at frame 100
        m.process(buf)
        out.append(buf[:, 0].copy())
    m.trigger(Trigger(_piece(300, 0.2), UNITY, chain=3))  # late: it starts with the next block
    m.trigger(Trigger(_piece(50, 0.3), UNITY, chain=3))
    for _ in range(2):
        m.process(buf)
        out.append(buf[:, 0].copy())
    level = np.concatenate(out)
    assert np.allclose(level[:100], 0.1) and not level[100:1024].any()
    assert np.allclose(level[1024:1324], 0.2) and np.allclose(level[1324:1374], 0.3) and not level[1374:].any()


def test_pieces_of_a_chain_the_mixer_never_saw_start_play_at_once_and_in_order() -> None:
    """After the audio process restarted (a new mixer), or when the first piece never reached it."""
    m = Mixer(SR, limiter_threshold=1.0)
    buf = np.zeros((256, 2), np.float32)
    m.trigger(Trigger(_piece(100, 0.2), UNITY, chain=9))
    m.trigger(Trigger(_piece(50, 0.3), UNITY, chain=9))
    m.process(buf)
    level = buf[:, 0].copy()
    assert np.allclose(level[:100], 0.2) and np.allclose(level[100:150], 0.3) and not level[150:].any()
    assert not m.pending


def test_stopping_a_chain_fades_its_voice_and_drops_its_waiting_pieces_only() -> None:
    m = Mixer(SR, limiter_threshold=1.0, fade_ms=1.0)  # a 48-frame fade
    buf = np.zeros((256, 2), np.float32)
    m.trigger(Trigger(_piece(2000, 0.2), UNITY, start_frame=0, chain=4))
    m.trigger(Trigger(_piece(500, 0.3), UNITY, chain=4))  # waits behind the first
    m.trigger(Trigger(_piece(2000, 0.1), UNITY, start_frame=0))  # another sound, not the stream
    m.process(buf)
    m.stop_chain(4)
    out = []
    for _ in range(12):
        m.process(buf)
        out.append(buf[:, 0].copy())
    level = np.concatenate(out)  # from frame 256
    assert level[0] > 0.29 and level[47] < level[0] and np.allclose(level[48:1744], 0.1)  # faded in 48 frames
    assert not level[1744:].any(), "the waiting piece was dropped; the other sound ended at 2000"
    assert not m.pending
