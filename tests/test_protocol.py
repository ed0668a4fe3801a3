"""The address table parser: ids, Pd's floats, velocities, and clear errors."""

from __future__ import annotations

import pytest

from bridge.protocol import ENDPOINTS, REPLIES, ProtocolError, parse, velocity_to_gain


def test_trailing_id_is_taken_only_after_all_positional_arguments() -> None:
    assert parse("/genbridge/drum/generate", ["snare", 3]).values == {"instrument": "snare", "count": 3, "seed": None,
                                                                      "steps": 0, "velocity": None}
    assert parse("/genbridge/drum/generate", ["snare", 3]).request_id == 0
    req = parse("/genbridge/drum/generate", ["snare", 3, 7, 0, "abc"])
    assert req.request_id == "abc" and req.values["seed"] == 7
    assert parse("/genbridge/ping", [42]).request_id == 42


def test_pd_floats_are_accepted_where_ints_are_expected() -> None:
    req = parse("/genbridge/drum/generate", ["kick", 3.0, 7.0, 5.0, 12.0])
    assert req.values == {"instrument": "kick", "count": 3, "seed": 7, "steps": 5, "velocity": None}
    assert req.request_id == 12
    assert isinstance(req.values["count"], int) and isinstance(req.request_id, int)
    with pytest.raises(ProtocolError, match="count must be an integer"):
        parse("/genbridge/drum/generate", ["kick", 3.5])


@pytest.mark.parametrize("value, gain", [(127, 1.0), (0, 0.0), (64, 64 / 127), (0.5, 0.5), (1.0, 1.0),
                                         (100.0, 100 / 127)])
def test_velocity_scales(value: float, gain: float) -> None:
    assert velocity_to_gain(value) == pytest.approx(gain)


@pytest.mark.parametrize("value", [128, -1, -0.1, 127.5, float("inf"), "loud", True])
def test_bad_velocity(value: object) -> None:
    with pytest.raises(ValueError):
        velocity_to_gain(value)


def test_errors_carry_the_id_when_it_can_be_read() -> None:
    with pytest.raises(ProtocolError) as info:
        parse("/genbridge/drum/play", ["kick", 500, "pad1"])
    assert info.value.request_id == "pad1"
    with pytest.raises(ProtocolError) as info:
        parse("/genbridge/unknown", [1, 2, 99])
    assert info.value.request_id == 99


def test_table_is_consistent() -> None:
    addresses = [e.address for e in ENDPOINTS]
    assert len(addresses) == len(set(addresses))
    for e in ENDPOINTS:
        assert e.address.startswith("/genbridge/")
        for r in e.replies:
            assert REPLIES[r].args[0] == "id"
        optional_seen = False
        for a in e.positional:  # optional arguments only at the end, or the id rule is ambiguous
            assert not (optional_seen and a.required)
            optional_seen |= not a.required
        assert all(not a.required for a in e.args if a.keyword_only)
        assert "id" not in {a.name for a in e.args}, "id is the keyword form's name for the request id"
        assert e.keyword_address == "/genbridge/kw" + e.address.removeprefix("/genbridge")
