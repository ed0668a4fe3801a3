"""A protocol that never changes under a client.

tests/protocol_v1.json is the OSC address space as version 1 froze it: data, written once and
never regenerated from the code. These tests hold the code to it: every v1 address keeps its
positional arguments and replies, every message valid under v1 is read the same way (checked by
a reference parser written from that file and the v1 rule, not from bridge/protocol.py), and
arguments added since are keyword-only, reachable through ``/genbridge/kw/...`` alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest
from conftest import write_config

from bridge.protocol import (
    BY_ADDRESS,
    BY_KEYWORD_ADDRESS,
    ENDPOINTS,
    KEYWORD_PREFIX,
    REPLIES,
    Arg,
    Endpoint,
    ProtocolError,
    Request,
    parse,
    parse_keywords,
    parse_positional,
)

V1_PATH = Path(__file__).resolve().parent / "protocol_v1.json"
V1: dict[str, Any] = json.loads(V1_PATH.read_text())
#: The frozen file's digest: editing it is not how the protocol changes (a v2 freeze adds
#: protocol_v2.json beside it), so an edit fails here first.
V1_SHA256 = "12b674116952093ab419bd9ffecb5a1287b835b989efbdb3540495a7e3c49ff1"


def _arg_spec(arg: Arg) -> dict[str, Any]:
    return {"name": arg.name, "kind": arg.kind, "required": arg.required, "default": arg.default,
            "minimum": arg.minimum, "maximum": arg.maximum, "allow_empty": arg.allow_empty}


def _typed(values: dict[str, Any]) -> dict[str, tuple[type, Any]]:
    """Values with their types: 3 and 3.0 compare equal in Python, but not to a handler."""
    return {k: (type(v), v) for k, v in values.items()}


# --- the frozen table ---------------------------------------------------------------------------


def test_v1_freeze_is_never_edited() -> None:
    assert hashlib.sha256(V1_PATH.read_bytes()).hexdigest() == V1_SHA256, (
        "tests/protocol_v1.json is frozen: change the table the way docs/ARCHITECTURE.md says, not the freeze")


def test_every_v1_address_keeps_its_positional_grammar_and_replies() -> None:
    assert V1["version"] == 1 and V1["addresses"]
    for address, frozen in V1["addresses"].items():
        endpoint = BY_ADDRESS.get(address)
        assert endpoint is not None, f"{address} was removed: existing patches send it"
        now = [_arg_spec(a) for a in endpoint.positional]
        # through JSON, so that a default or a bound turning from 1 into 1.0 fails as well
        assert json.dumps(now) == json.dumps(frozen["args"]), (
            f"{address}: positional arguments changed; add keyword_only arguments or a new address")
        replies = [{"address": REPLIES[r].address, "args": list(REPLIES[r].args)} for r in endpoint.replies]
        assert replies == frozen["replies"], f"{address}: replies changed"
        frozen_names = {a["name"] for a in frozen["args"]}
        for arg in endpoint.args:
            assert arg.name in frozen_names or arg.keyword_only, f"{address}: {arg.name} must be keyword_only"
    error = REPLIES["error"]
    assert {"address": error.address, "args": list(error.args)} == V1["error"]


# --- a reference reader of v1, from the frozen file alone -------------------------------------


class Rejected(Exception):
    """The reference reader refuses the message."""


def _ref_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    return None


def _ref_id(value: Any) -> int | str:
    """V1["id"]: an int (or an integral float), or a string of at most 128 characters."""
    if isinstance(value, str):
        if len(value) > 128:
            raise Rejected("long id")
        return value
    number = _ref_int(value)
    if number is None:
        raise Rejected("bad id")
    return number


def _ref_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Rejected("not a number")
    return value


def _ref_value(spec: dict[str, Any], value: Any) -> Any:
    """V1["kinds"], one by one."""
    kind = spec["kind"]
    if kind == "str":
        if not isinstance(value, str) or (value == "" and not spec["allow_empty"]):
            raise Rejected("not a string")
        return value
    if kind == "velocity":
        number = _ref_number(value)
        if isinstance(number, int) or number > 1.0:
            if number < 0 or number > 127:
                raise Rejected("velocity")
            return number / 127.0
        if number < 0.0:
            raise Rejected("velocity")
        return float(number)
    if kind == "int":
        number = _ref_int(value)
        if number is None:
            raise Rejected("not an int")
    elif kind == "float":
        number = float(_ref_number(value))
    else:
        raise AssertionError(kind)
    if spec["minimum"] is not None and number < spec["minimum"]:
        raise Rejected("below")
    if spec["maximum"] is not None and number > spec["maximum"]:
        raise Rejected("above")
    return number


def reference_read(address: str, args: Sequence[Any]) -> tuple[dict[str, Any], int | str]:
    """V1["rule"]: positional arguments in order, optional ones left off from the end, and one
    argument more than the address has (optional ones included) is the id."""
    specs = V1["addresses"][address]["args"]
    n = len(specs)
    request_id: int | str = 0
    if len(args) == n + 1:
        request_id, args = _ref_id(args[-1]), args[:-1]
    elif len(args) > n + 1:
        raise Rejected("too many")
    if len(args) < sum(s["required"] for s in specs):
        raise Rejected("too few")
    values = {s["name"]: _ref_value(s, args[i]) if i < len(args) else s["default"] for i, s in enumerate(specs)}
    return values, request_id


# --- seeded messages ----------------------------------------------------------------------------

INTS = [-2**31, -2, -1, 0, 1, 2, 3, 7, 100, 127, 128, 600, 1000, 1001, 65535, 65536, 2**31 - 1, 2**31]
FLOATS = [0.0, 0.005, 0.01, 0.1, 0.4, 0.5, 1.0, 1.5, 3.0, 3.5, 7.0, 64.0, 100.0, 120.0, 120.5, 127.0, 127.5,
          600.0, 600.5, 1000.0, 1001.0, 65535.0, -0.1, -1.0, 1e12, float("nan"), float("inf"), float("-inf")]
STRINGS = ["kick", "snare", "hat", "last", "capture", "session/snare-0001.wav", "/tmp/x.wav", "acoustic", "",
           " ", "id=3", "#x", "steps", "seed", "count", "id", "kw", "3", "0", "-1", "pad-3", "x" * 128,
           "x" * 129, "\u00fc", "/genbridge/ping"]
OTHERS: list[Any] = [True, False, None, b"\x00\x01"]


def _in_range(rng: random.Random, spec: dict[str, Any]) -> Any:
    """A value inside the argument's bounds, as an int, or as a float the way Pd sends one."""
    low = spec["minimum"] if spec["minimum"] is not None else -5
    high = spec["maximum"] if spec["maximum"] is not None else 200
    if spec["kind"] == "int":
        number = rng.choice([rng.randint(math.ceil(low), math.floor(high)), math.ceil(low), math.floor(high)])
        return float(number) if rng.random() < 0.4 else number
    if spec["kind"] == "velocity":
        return rng.choice([rng.randint(0, 127), float(rng.randint(2, 127)), rng.random(), 0.0, 1.0, 127])
    return rng.choice([rng.uniform(low, high), float(low), float(high), math.ceil(low)])


def _value(rng: random.Random, spec: dict[str, Any] | None, nasty: float) -> Any:
    """A value for one place (None: the id's place or past it): mostly of the argument's kind, in
    its bounds or at them or just out of them, and with probability ``nasty`` anything at all."""
    if rng.random() < nasty:
        return rng.choice(rng.choice([INTS, FLOATS, STRINGS, OTHERS]))
    if spec is None:  # an id, the way clients send them
        return rng.choice([rng.randint(-3, 10**6), rng.choice(STRINGS), float(rng.randint(0, 99)), rng.random()])
    if spec["kind"] == "str":
        return rng.choice(STRINGS)
    if rng.random() < 0.6:
        return _in_range(rng, spec)
    if spec["kind"] == "int":
        return rng.choice(rng.choice([INTS, [float(i) for i in INTS]]))  # Pd sends every number as a float
    return rng.choice(rng.choice([INTS, FLOATS]))


def messages(specs: Sequence[dict[str, Any]], rng: random.Random, count: int) -> list[list[Any]]:
    """``count`` argument lists for an address: every arity from none to two past the id, some
    messages clean and some with junk in any place."""
    out = []
    for _ in range(count):
        arity = rng.randint(0, len(specs) + 2)
        nasty = rng.choice([0.0, 0.0, 0.1, 0.3])
        out.append([_value(rng, specs[i] if i < len(specs) else None, nasty) for i in range(arity)])
    return out


def keyword_form(endpoint: Endpoint, args: Sequence[Any], rng: random.Random) -> list[Any]:
    """The same message in the keyword form: the required arguments, then each optional one given
    and the id (if any) as ``name value`` pairs, in a random order."""
    positional = endpoint.positional
    r = len(endpoint.required)
    pairs = [(positional[i].name, args[i]) for i in range(r, min(len(args), len(positional)))]
    if len(args) == len(positional) + 1:
        pairs.append(("id", args[-1]))
    rng.shuffle(pairs)
    return [*args[:r], *(x for pair in pairs for x in pair)]


def _refuses(read: Callable[[], Request]) -> bool:
    try:
        read()
    except ProtocolError:
        return True
    return False


def _disagreements(endpoint: Endpoint, frozen: dict[str, Any], read: Callable[[Sequence[Any]], Request],
                   seed: int, count: int) -> tuple[dict[str, int], list[str]]:
    """Seeded messages for one address, each read by the reference and by ``read`` (and in the
    keyword form): how many v1 accepted, refused and took an id from, and every disagreement."""
    rng = random.Random(seed)
    tally = {"accepted": 0, "rejected": 0, "with_id": 0}
    problems: list[str] = []
    frozen_names = {a["name"] for a in frozen["args"]}
    added = {a.name: a.default for a in endpoint.args if a.name not in frozen_names}  # left at their defaults
    for args in messages(frozen["args"], rng, count):
        keywords = keyword_form(endpoint, args, rng)
        try:
            values, request_id = reference_read(endpoint.address, args)
        except Rejected as why:
            tally["rejected"] += 1
            if not _refuses(lambda: read(args)):
                problems.append(f"{args!r}: v1 refused it ({why}), now accepted")
            # past the id's place there is no keyword form of the message
            if len(args) <= len(frozen["args"]) + 1 and not _refuses(lambda: parse_keywords(endpoint, keywords)):
                problems.append(f"{keywords!r}: the keyword form of a message v1 refused is accepted")
            continue
        tally["accepted"] += 1
        tally["with_id"] += len(args) == len(frozen["args"]) + 1
        try:
            request = read(args)
        except ProtocolError as exc:
            problems.append(f"{args!r}: v1 accepted it, now refused: {exc}")
            continue
        if _typed(request.values) != _typed({**values, **added}):
            problems.append(f"{args!r}: read as {request.values}, v1 read {values}")
        if (type(request.request_id), request.request_id) != (type(request_id), request_id):
            problems.append(f"{args!r}: id {request.request_id!r}, v1 read {request_id!r}")
        try:
            if parse_keywords(endpoint, keywords) != request:
                problems.append(f"{keywords!r}: the keyword form gives another request than {args!r}")
        except ProtocolError as exc:
            problems.append(f"{keywords!r}: the keyword form of {args!r} is refused: {exc}")
    return tally, problems


@pytest.mark.parametrize("address", list(V1["addresses"]))
def test_every_message_valid_under_v1_is_still_read_the_same_way(address: str) -> None:
    endpoint = BY_ADDRESS[address]
    tally, problems = _disagreements(endpoint, V1["addresses"][address], lambda args: parse(address, args),
                                     seed=sum(map(ord, address)), count=600)
    assert not problems, "\n".join(problems[:10])
    # the generator reaches both sides of the rule, ids included
    assert tally["accepted"] >= 50 and tally["rejected"] >= 50 and tally["with_id"] >= 10, tally


# --- adding an argument the way the rule says --------------------------------------------------

GAIN = Arg("gain", "float", required=False, default=0.0, minimum=-24, maximum=24, doc="dB", keyword_only=True)


def _generate_with_gain() -> Endpoint:
    """drum/generate as it would be with an argument added later (the real table is not touched)."""
    generate = BY_ADDRESS["/genbridge/drum/generate"]
    return dataclasses.replace(generate, args=(*generate.args, GAIN))


def test_a_keyword_only_argument_leaves_every_v1_message_unchanged() -> None:
    endpoint = _generate_with_gain()
    frozen = V1["addresses"][endpoint.address]
    tally, problems = _disagreements(endpoint, frozen, lambda args: parse_positional(endpoint, args), seed=2,
                                     count=1500)
    assert not problems, "\n".join(problems[:10])
    assert tally["accepted"] >= 100 and tally["rejected"] >= 100 and tally["with_id"] >= 20, tally


def test_the_check_catches_an_argument_added_positionally() -> None:
    """What happened when steps was added: ``generate snare 3 7 ID`` had its id read as steps."""
    endpoint = dataclasses.replace(_generate_with_gain(), args=(*_generate_with_gain().args[:-1],
                                                                dataclasses.replace(GAIN, keyword_only=False)))
    frozen = V1["addresses"][endpoint.address]
    _, problems = _disagreements(endpoint, frozen, lambda args: parse_positional(endpoint, args), seed=2,
                                 count=1500)
    assert any("now refused" in p for p in problems), problems[:10]
    assert any(": id " in p and "v1 read" in p for p in problems), problems[:10]  # an id read as gain


def test_a_keyword_only_argument_is_accepted_by_name_only() -> None:
    endpoint = _generate_with_gain()
    request = parse_keywords(endpoint, ["snare", "gain", -6.0, "id", "pad1"])
    assert request.values["gain"] == -6.0 and request.request_id == "pad1"
    with pytest.raises(ProtocolError, match="gain must be >= -24") as info:
        parse_keywords(endpoint, ["snare", "gain", -30, "id", "pad1"])
    assert info.value.request_id == "pad1"
    # positionally it does not exist: one more argument is the id, as it always was
    old = parse_positional(endpoint, ["snare", 3, 7, 0, "loud"])
    assert old.request_id == "loud" and old.values["gain"] == 0.0
    with pytest.raises(ProtocolError, match="request id must be"):
        parse_positional(endpoint, ["snare", 3, 7, 0, 0.5])
    with pytest.raises(ProtocolError, match="too many arguments"):
        parse_positional(endpoint, ["snare", 3, 7, 0, -6.0, "pad1"])
    assert "[gain=…]" in endpoint.signature()
    assert endpoint.signature().index("[steps]") < endpoint.signature().index("[gain=…]")


def test_keyword_only_arguments_must_be_optional() -> None:
    with pytest.raises(ValueError, match="must be optional"):
        Arg("gain", "float", keyword_only=True)
    with pytest.raises(ValueError, match="request id"):
        Arg("id", "int", required=False)


# --- the keyword form ---------------------------------------------------------------------------


def test_keyword_form_reads_names_in_any_order() -> None:
    request = parse("/genbridge/kw/drum/generate", ["snare", "id", 42, "steps", 7])
    assert request.values == {"instrument": "snare", "count": 1, "seed": None, "steps": 7, "velocity": None}
    assert request.request_id == 42
    same = parse("/genbridge/kw/drum/generate", ["snare", "steps", 7.0, "seed", 5, "id", 42.0, "count", 1])
    assert same == parse("/genbridge/drum/generate", ["snare", 1, 5, 7, 42])
    assert isinstance(same.values["steps"], int) and isinstance(same.request_id, int)  # Pd's floats
    assert parse("/genbridge/kw/ping", ["id", 7]).request_id == 7
    assert parse("/genbridge/kw/ping", []) == parse("/genbridge/ping", [])
    assert parse("/genbridge/kw/continue", ["last", 4, "description", "", "id", "c"]).values["description"] == ""


def test_every_request_has_a_keyword_form() -> None:
    assert set(BY_KEYWORD_ADDRESS) == {KEYWORD_PREFIX + e.address.removeprefix("/genbridge") for e in ENDPOINTS}
    for endpoint in ENDPOINTS:
        assert BY_KEYWORD_ADDRESS[endpoint.keyword_address] is endpoint
        assert not endpoint.address.startswith(KEYWORD_PREFIX + "/")
        for example in endpoint.examples:
            positional = parse(endpoint.address, list(example))
            keywords = keyword_form(endpoint, example, random.Random(0))
            assert parse(endpoint.keyword_address, keywords) == positional
            with_id = parse(endpoint.keyword_address, [*keywords, "id", "x"])
            assert with_id == dataclasses.replace(positional, request_id="x")


@pytest.mark.parametrize("args, match, request_id", [
    (["snare", "bogus", 1, "id", 5], r"unknown keyword 'bogus': /genbridge/kw/drum/generate accepts count, seed, "
                                      r"steps, velocity, id", 5),
    (["snare", "instrument", "kick", "id", "p"], r"instrument is required: it comes first", "p"),
    (["snare", 3, "id", 5], r"expected a keyword name, got 3", 5),
    (["snare", "steps", 7, "steps", 8, "id", "twice"], r"'steps' given twice", "twice"),
    (["snare", "id", 6, "id", 6], r"'id' given twice", 6),
    (["snare", "id", 9, "steps"], r"'steps' has no value", 9),
    ([], r"missing arguments: expected /genbridge/kw/drum/generate instrument \[count value\]", 0),
    (["id", 4], r"instrument was read as 'id'", 4),
    (["snare", "count", 0, "id", "low"], r"count must be >= 1", "low"),
    (["snare", "id", 1.5], r"request id must be an int or a string", 0),
])
def test_keyword_form_errors_are_clear_and_carry_the_id(args: list[Any], match: str, request_id: Any) -> None:
    with pytest.raises(ProtocolError, match=match) as info:
        parse("/genbridge/kw/drum/generate", args)
    assert info.value.request_id == request_id
    assert info.value.address == "/genbridge/kw/drum/generate"


def test_keyword_form_missing_required_and_unknown_address() -> None:
    with pytest.raises(ProtocolError, match=r"missing arguments: expected /genbridge/kw/drum/vary instrument source "
                                            r"strength \[seed value\]"):
        parse("/genbridge/kw/drum/vary", ["kick", "last"])
    with pytest.raises(ProtocolError, match="strength was read as 'id'") as info:  # strength left out
        parse("/genbridge/kw/drum/vary", ["kick", "last", "id", 3])
    assert info.value.request_id == 3
    with pytest.raises(ProtocolError, match="unknown address") as info:
        parse("/genbridge/kw/drum/plya", ["kick", "id", "pad"])
    assert info.value.request_id == "pad"
    with pytest.raises(ProtocolError, match="unknown address"):
        parse("/genbridge/kw/kw/ping", ["id", 1])


# --- over UDP -----------------------------------------------------------------------------------


def test_keyword_form_over_udp(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    """One daemon: a keyword request's replies reach the sender's port with its id, errors too."""
    _, client = start_daemon(write_config(tmp_path / "c.toml", tiny_model, pool=0, instruments=("kick",)))
    pong = client.request("/genbridge/kw/ping", "id", 7, reply="/genbridge/pong")
    assert pong.args[0] == 7 and pong.args[1]
    status = client.request("/genbridge/kw/status", "id", "st", reply="/genbridge/status/reply")
    assert status.args[0] == "st" and json.loads(status.args[1])
    error = client.request("/genbridge/kw/ping", "id", 8, "id", 9, reply="/genbridge/error")
    assert error.args[:2] == [8, "/genbridge/kw/ping"] and "given twice" in error.args[2]


def test_a_keyword_request_keeps_the_address_it_came_on_for_its_later_errors() -> None:
    """Errors raised after parsing (by the service) name the address the client used."""
    positional = parse("/genbridge/drum/generate", ["snare", 1, 2, 3, "x"])
    keyword = parse("/genbridge/kw/drum/generate", ["snare", "count", 1, "seed", 2, "steps", 3, "id", "x"])
    assert positional == keyword
    assert positional.address == "/genbridge/drum/generate"
    assert keyword.address == "/genbridge/kw/drum/generate"
