"""The OSC address space, written once.

Everything else is derived from or checked against these tables: the OSC transport parses with
them, the README's address table is generated from them (``python -m bridge.protocol``, and a
test fails when the README drifts), and the tests send what they list.

Conventions (docs/ARCHITECTURE.md, "OSC conventions"). Each request has two forms:

- **positional**, ``/genbridge/<noun>/<verb> arg ...``: its positional arguments in order, optional
  ones left off from the end; one extra argument after *all* of them, optional ones included, is
  the request id (int or string). This grammar is frozen per address (tests/protocol_v1.json):
  an existing address never gains, loses or reorders a positional argument, because the id rule
  would read an old patch's id as the new argument (``generate snare 3 7 ID`` once became a step
  count). Patches live for years, so arguments added later are ``keyword_only``.
- **keyword**, ``/genbridge/kw/<noun>/<verb> required ... name value ...``: the required arguments
  in order, then ``name value`` pairs for optional, keyword-only and ``id``. No message was valid
  on ``/genbridge/kw/`` before it existed, and a pair names its argument, so adding arguments
  cannot change what an existing message means. Both forms give the same :class:`Request`.

Every reply starts with the request id (0 if none); numbers may arrive as int or float (Pd sends
every number as a float); anything invalid gets ``/genbridge/error id address message``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from bridge.tempo import GRIDS

PREFIX = "/genbridge"
#: Every request address also exists under this prefix, in the keyword form.
KEYWORD_PREFIX = f"{PREFIX}/kw"
#: The keyword form's name for the request id.
ID_KEYWORD = "id"


@dataclass(frozen=True)
class Arg:
    name: str
    kind: str  # "str", "int", "float", "velocity"
    required: bool = True
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    doc: str = ""
    #: A string that may be "" (a description left empty).
    allow_empty: bool = False
    #: Only in the keyword form (``name value``), never positionally: how an argument is added to
    #: an existing address without changing what the messages of existing patches mean.
    keyword_only: bool = False
    #: For a "str": the values it may take (empty: any).
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.choices and self.kind != "str":
            raise ValueError(f"{self.name}: choices are for str arguments")
        if self.keyword_only and self.required:
            raise ValueError(f"keyword-only argument {self.name!r} must be optional: a required one would "
                             "refuse every message existing patches send")
        if self.name == ID_KEYWORD:
            raise ValueError(f"{ID_KEYWORD!r} is the request id's keyword, not an argument name")

    def signature(self) -> str:
        if self.keyword_only:
            return f"[{self.name}=…]"
        return self.name if self.required else f"[{self.name}]"


@dataclass(frozen=True)
class Reply:
    address: str
    args: tuple[str, ...]  # names; the first is always the request id

    def signature(self) -> str:
        return " ".join((f"`{self.address}`", *self.args))


@dataclass(frozen=True)
class Endpoint:
    name: str
    address: str
    args: tuple[Arg, ...]
    replies: tuple[str, ...]
    doc: str
    examples: tuple[tuple[Any, ...], ...] = field(default=())

    def __post_init__(self) -> None:
        names = [a.name for a in self.args]
        if len(names) != len(set(names)):
            raise ValueError(f"{self.address}: argument names repeat: {names}")
        if self.address.startswith(KEYWORD_PREFIX + "/"):
            raise ValueError(f"{self.address}: {KEYWORD_PREFIX}/ is the keyword form's prefix")

    @property
    def positional(self) -> tuple[Arg, ...]:
        """The positional form's arguments, in order (frozen per address: see the module doc)."""
        return tuple(a for a in self.args if not a.keyword_only)

    @property
    def required(self) -> tuple[Arg, ...]:
        """The arguments both forms take first, positionally."""
        return tuple(a for a in self.args if a.required)

    @property
    def keywords(self) -> tuple[str, ...]:
        """The names the keyword form accepts in ``name value`` pairs: everything optional, and id."""
        return (*(a.name for a in self.args if not a.required), ID_KEYWORD)

    @property
    def keyword_address(self) -> str:
        return KEYWORD_PREFIX + self.address.removeprefix(PREFIX)

    def signature(self) -> str:
        """The table's form: positional arguments, then the keyword-only ones as ``[name=…]``."""
        return " ".join((f"`{self.address}`", *(a.signature() for a in self.positional),
                         *(a.signature() for a in self.args if a.keyword_only)))

    def positional_signature(self) -> str:
        return " ".join((self.address, *(a.signature() for a in self.positional), "[id]"))

    def keyword_signature(self) -> str:
        return " ".join((self.keyword_address, *(a.name for a in self.required),
                         *(f"[{name} value]" for name in self.keywords)))


#: What a tempo reply carries, typed (no JSON to take apart in a patch): playing is 0/1,
#: source "fixed", "midi" or "link".
_TEMPO_ARGS = ("id", "bpm", "beat", "phase", "quantum", "peers", "playing", "source")

REPLIES: dict[str, Reply] = {
    r.address.removeprefix(PREFIX + "/"): r
    for r in (
        Reply(f"{PREFIX}/pong", ("id", "version")),
        Reply(f"{PREFIX}/status/reply", ("id", "json")),
        Reply(f"{PREFIX}/drum/played", ("id", "instrument", "path", "fresh")),
        Reply(f"{PREFIX}/job/started", ("id", "job_id", "instrument", "count")),
        Reply(f"{PREFIX}/drum/ready", ("id", "instrument", "path")),
        Reply(f"{PREFIX}/job/done", ("id", "job_id", "delivered", "path")),
        Reply(f"{PREFIX}/job/queued", ("id", "job_id", "position")),
        Reply(f"{PREFIX}/job/progress", ("id", "job_id", "fraction")),
        Reply(f"{PREFIX}/job/chunk", ("id", "job_id", "index", "path")),
        Reply(f"{PREFIX}/job/cancelled", ("id", "job_id")),
        Reply(f"{PREFIX}/client/registered", ("id", "port")),
        Reply(f"{PREFIX}/capture/saved", ("id", "path", "seconds")),
        Reply(f"{PREFIX}/kit/selected", ("id", "kit")),
        Reply(f"{PREFIX}/tempo/reply", _TEMPO_ARGS),
        Reply(f"{PREFIX}/tempo/bar", _TEMPO_ARGS),
        Reply(f"{PREFIX}/error", ("id", "address", "message")),
    )
}

_INSTRUMENT = Arg("instrument", "str", doc="an instrument name from the config (kick, snare, hat ...)")


def _seed(doc: str) -> Arg:
    return Arg("seed", "int", required=False, default=None, minimum=-1, maximum=2**31 - 1, doc=doc)


def _steps(doc: str) -> Arg:
    return Arg("steps", "int", required=False, default=0, minimum=0, maximum=1000, doc=doc)


def _made_at_velocity() -> Arg:
    """How hard the clips of a generate or vary are played, for a model conditioned on velocity
    (keyword-only: added after v1 froze the positional forms)."""
    return Arg("velocity", "velocity", required=False, default=None, keyword_only=True,
               doc="0-127, or 0.0-1.0 as a float: the velocity the clips are made at, for a model "
                   "conditioned on velocity (a soft hit is a darker, shorter sound); none = the model's default")


#: The grids a start may be quantised to ("" = the configured one).
GRID_CHOICES = ("", *GRIDS)
_PLAY_CHOICES = ("", "off", "chunks", "done")


def _play_arg() -> Arg:
    return Arg("play", "str", required=False, default="", allow_empty=True, keyword_only=True, choices=_PLAY_CHOICES,
               doc="'chunks': play them as they are made, 'done': play the result, both from the next "
                   "continuation.play_quantize point; 'off'; '' = continuation.play_chunks")


_SOURCE = Arg("source", "str", doc="'capture' (the last seconds of audio input), 'last' (the last continuation) "
                                   "or a WAV path inside the shared folder")
_DESCRIPTION = Arg("description", "str", required=False, default="", allow_empty=True,
                   doc="text, when the model's text encoder is available; '' for none")
#: The most takes one request may ask for (models.musicgen_family.MAX_TAKES: one batched pass).
MAX_TAKES = 8
#: The longest piece ``music/generate`` may ask for (models.musicgen_family.MAX_SECONDS).
MAX_MUSIC_SECONDS = 300.0


def _takes(keyword_only: bool) -> Arg:
    return Arg("takes", "int", required=False, default=1, minimum=1, maximum=MAX_TAKES, keyword_only=keyword_only,
               doc="how many takes, made together in one pass: each take is its own job (job id J+i, seed "
                   "seed+i); a cancel of one stops the takes still being made")


_TAKES_DOC = ("; takes N: N jobs, one job/queued each (take i is job J+i with seed seed+i), then each job's "
              "progress, chunks and done")

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("ping", f"{PREFIX}/ping", (), ("pong",), "health check"),
    Endpoint("status", f"{PREFIX}/status", (), ("status/reply",),
             "pools, workers, queues and models as one JSON string"),
    Endpoint(
        "drum.play", f"{PREFIX}/drum/play",
        (_INSTRUMENT, Arg("velocity", "velocity", required=False, default=1.0,
                          doc="0-127, or 0.0-1.0 as a float"),
         Arg("quantize", "str", required=False, default="", allow_empty=True, keyword_only=True,
             choices=GRID_CHOICES, doc="start on the next point of this grid of the tempo source (after the "
                                       "bundle's timetag, if any); '' = the instrument's quantize")),
        ("drum/played",),
        "take a never-played clip from the instrument's pool, write it to the shared folder "
        "(fresh 1), or replay the last one when the pool is dry (fresh 0); quantize starts it on the beat",
        examples=(("kick",), ("snare", 100)),
    ),
    Endpoint(
        "drum.generate", f"{PREFIX}/drum/generate",
        (_INSTRUMENT,
         Arg("count", "int", required=False, default=1, minimum=1, doc="clips to make"),
         _seed("first seed; clip k uses seed + k; -1 for random"),
         _steps("sampling steps; 0 for the instrument's setting"),
         _made_at_velocity()),
        ("job/started", "drum/ready", "job/done"),
        "generate new clips now (ahead of pool refills); one drum/ready per clip; velocity makes them for "
        "that velocity (a model conditioned on velocity)",
        examples=(("snare", 3, 7),),
    ),
    Endpoint(
        "drum.vary", f"{PREFIX}/drum/vary",
        (_INSTRUMENT,
         Arg("source", "str", doc="'last' (the instrument's last played clip) or a WAV path inside the "
                                  "shared folder (absolute, or relative to it)"),
         Arg("strength", "float", minimum=0.0, maximum=1.0,
             doc="0 returns the source, 1 ignores it; 0.3-0.6 keeps its character"),
         _seed("-1 for random; the same seed, source and strength give the same clip"),
         _steps("steps for a full denoise; a variation runs strength x steps"),
         _made_at_velocity()),
        ("job/started", "drum/ready", "job/done"),
        "a variation of a clip: re-noise it to the strength and denoise from there (at velocity, if given)",
        examples=(("kick", "last", 0.4), ("snare", "session/snare-0001.wav", 0.5, 7)),
    ),
    Endpoint(
        "continue", f"{PREFIX}/continue",
        (_SOURCE,
         Arg("seconds", "float", minimum=0.1, maximum=120, doc="how much new audio to make"),
         _DESCRIPTION,
         _seed("-1 for random"),
         _play_arg(),
         _takes(keyword_only=True)),
        ("job/queued", "job/progress", "job/chunk", "job/done"),
        "continue the last seconds of a clip with MusicGen: progress and chunks as they are made, then "
        "the whole continuation (job/done's path); one runs at a time, the rest queue" + _TAKES_DOC,
        examples=(("last", 4.0), ("capture", 8.0, "", 7)),
    ),
    Endpoint(
        "continue.bars", f"{PREFIX}/continue/bars",
        (_SOURCE,
         Arg("bars", "float", minimum=0.25, maximum=512, doc="length in bars (of [tempo] quantum beats) at the "
                                                            "current tempo"),
         Arg("loop", "int", required=False, default=0, minimum=0, maximum=1,
             doc="1: its end flows into its start (crossfaded), to loop in a sampler"),
         _DESCRIPTION,
         _seed("-1 for random"),
         _play_arg(),
         _takes(keyword_only=True)),
        ("job/queued", "job/progress", "job/chunk", "job/done"),
        "continue for a length in bars at the current tempo: the result is cut on the bar (a 5 ms fade) "
        "or, with loop 1, made to loop seamlessly; the sidecar records tempo, bars and loop; with takes, "
        "each take is cut to the bars",
        examples=(("last", 2), ("capture", 4, 1, "", 7)),
    ),
    Endpoint(
        "music.generate", f"{PREFIX}/music/generate",
        (Arg("description", "str", allow_empty=True,
             doc="what to make, in words ('' = unconditional, and needs no text encoder)"),
         Arg("seconds", "float", minimum=0.1, maximum=MAX_MUSIC_SECONDS,
             doc="length of each take (up to continuation.max_seconds)"),
         _takes(keyword_only=False),
         _seed("first seed; take i uses seed + i; -1 for random"),
         _play_arg()),
        ("job/queued", "job/progress", "job/chunk", "job/done"),
        "a new piece from a text description with the continuation's MusicGen (no prompt audio); queued with "
        "the continuations. Each take is its own job: one job/queued per take (take i is job J+i with seed "
        "seed+i, all at the request's position), then each job's progress, chunks and done; cancelling any "
        "take's job stops the takes still being made (they share one pass), a take still queued is removed "
        "alone. play 'chunks' plays the first take's chunks, 'done' the first take",
        examples=(("funky drums", 8.0), ("calm piano", 20.0, 2, 7)),
    ),
    Endpoint("job.cancel", f"{PREFIX}/job/cancel",
             (Arg("job_id", "int", minimum=1),), ("job/cancelled",),
             "cancel a generate or continue job (what is not yet made is dropped)"),
    Endpoint("capture.save", f"{PREFIX}/capture/save",
             (Arg("seconds", "float", required=False, default=10.0, minimum=0.01, maximum=600,
                  doc="how much of what came in to save"),),
             ("capture/saved",),
             "write the last seconds of audio input to the shared folder"),
    Endpoint("kit.select", f"{PREFIX}/kit/select", (Arg("kit", "str", doc="a kit name from [kits]"),),
             ("kit/selected",),
             "switch instruments to the kit's models (MIDI program change does the same)"),
    Endpoint("tempo", f"{PREFIX}/tempo", (), ("tempo/reply",),
             "the tempo source's tempo, beat, phase in the bar, beats per bar, Link peers, transport"),
    Endpoint("tempo.set", f"{PREFIX}/tempo/set",
             (Arg("bpm", "float", minimum=20, maximum=999, doc="the new tempo"),), ("tempo/reply",),
             "change the tempo (a Link session's for every peer; refused under MIDI clock)"),
    Endpoint("tempo.listen", f"{PREFIX}/tempo/listen",
             (Arg("bars", "int", required=False, default=100000, minimum=0, maximum=10**7,
                  doc="how many bars to send; 0 stops this client socket's listening"),),
             ("tempo/reply", "tempo/bar"),
             "the tempo now, then a tempo/bar on every bar (on its downbeat) to the replying port"),
    Endpoint("client.reply_port", f"{PREFIX}/client/reply_port",
             (Arg("port", "int", minimum=0, maximum=65535, doc="0 forgets the registration"),),
             ("client/registered",),
             "send later replies for this host to this port (Max: [udpreceive PORT])"),
)

#: The positional form's addresses (what patches, MIDI and the checkers look up).
BY_ADDRESS: dict[str, Endpoint] = {e.address: e for e in ENDPOINTS}
#: The keyword form's addresses, ``/genbridge/kw/...``.
BY_KEYWORD_ADDRESS: dict[str, Endpoint] = {e.keyword_address: e for e in ENDPOINTS}
#: Endpoints by name (``drum.play``): the web console's named form.
BY_NAME: dict[str, Endpoint] = {e.name: e for e in ENDPOINTS}
#: Reply names (``drum/played``) by address.
REPLY_NAMES: dict[str, str] = {r.address: name for name, r in REPLIES.items()}


class ProtocolError(ValueError):
    """A request that cannot be acted on; carries what the error reply needs."""

    def __init__(self, message: str, request_id: int | str = 0, address: str = "") -> None:
        super().__init__(message)
        self.request_id = request_id
        self.address = address


@dataclass(frozen=True)
class Request:
    endpoint: Endpoint
    values: dict[str, Any]
    request_id: int | str = 0
    #: When to act (time.monotonic()), from an OSC bundle's future timetag; None: now.
    at: float | None = None
    #: The address it came on ("" for the endpoint's own): a keyword-form request's errors name
    #: /genbridge/kw/..., as its parse errors do, so a client matching errors by address sees all.
    sent_to: str = field(default="", compare=False)

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def address(self) -> str:
        return self.sent_to or self.endpoint.address


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _as_id(value: Any) -> int | str | None:
    if isinstance(value, str):
        return value if len(value) <= 128 else None
    return _as_int(value)


def as_request_id(value: Any) -> int | str | None:
    """``value`` as a request id (an int, an integral float, or a string of at most 128
    characters), or None when it cannot be one."""
    return _as_id(value)


def guess_request_id(args: Sequence[Any]) -> int | str:
    """Best id for an error reply to a message we could not parse: its last int/str argument."""
    if args:
        rid = _as_id(args[-1])
        if rid is not None:
            return rid
    return 0


def _convert(arg: Arg, value: Any) -> Any:
    if arg.kind == "str":
        if not isinstance(value, str) or (not value and not arg.allow_empty):
            raise ValueError(f"{arg.name} must be a non-empty string, got {value!r}")
        if arg.choices and value not in arg.choices:
            raise ValueError(f"{arg.name} must be one of {', '.join(repr(c) for c in arg.choices)}, got {value!r}")
        return value
    if arg.kind == "int":
        number = _as_int(value)
        if number is None:
            raise ValueError(f"{arg.name} must be an integer, got {value!r}")
    elif arg.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{arg.name} must be a number, got {value!r}")
        number = float(value)
    elif arg.kind == "velocity":
        return velocity_to_gain(value)
    else:  # pragma: no cover - table error
        raise AssertionError(arg.kind)
    if arg.minimum is not None and number < arg.minimum:
        raise ValueError(f"{arg.name} must be >= {arg.minimum:g}, got {value!r}")
    if arg.maximum is not None and number > arg.maximum:
        raise ValueError(f"{arg.name} must be <= {arg.maximum:g}, got {value!r}")
    return number


def velocity_to_gain(value: Any) -> float:
    """Velocity as 0-127 (int, or a float above 1 from Pd) or 0.0-1.0 (float) -> 0.0-1.0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"velocity must be a number, got {value!r}")
    if isinstance(value, int) or value > 1.0:
        if not 0 <= value <= 127:
            raise ValueError(f"velocity must be 0-127 or 0.0-1.0, got {value!r}")
        return float(value) / 127.0
    if value < 0.0:
        raise ValueError(f"velocity must be 0-127 or 0.0-1.0, got {value!r}")
    return float(value)


def parse(address: str, args: Sequence[Any]) -> Request:
    """Validate one OSC message against the table, in either form; raise ProtocolError with the id
    on failure. The two forms give equal Requests for the same values."""
    endpoint = BY_ADDRESS.get(address)
    if endpoint is not None:
        return parse_positional(endpoint, args, address)
    endpoint = BY_KEYWORD_ADDRESS.get(address)
    if endpoint is not None:
        return parse_keywords(endpoint, args, address)
    rid = _keyword_request_id(args) if address.startswith(KEYWORD_PREFIX + "/") else None
    raise ProtocolError(f"unknown address {address!r}", rid if rid is not None else guess_request_id(args),
                        address)


def _values(endpoint: Endpoint, given: dict[str, Any], request_id: int | str, address: str) -> dict[str, Any]:
    """Every argument of the endpoint, in table order: the given ones converted, the rest defaults."""
    values: dict[str, Any] = {}
    for arg in endpoint.args:
        if arg.name in given:
            try:
                values[arg.name] = _convert(arg, given[arg.name])
            except ValueError as exc:
                raise ProtocolError(str(exc), request_id, address) from None
        else:
            values[arg.name] = arg.default
    return values


def parse_positional(endpoint: Endpoint, args: Sequence[Any], address: str = "") -> Request:
    """The v1 grammar, frozen: positional arguments, then at most one more, the id. Keyword-only
    arguments are not read here (they take their defaults), so adding one changes nothing."""
    address = address or endpoint.address
    positional = endpoint.positional
    n = len(positional)
    request_id: int | str = 0
    if len(args) == n + 1:
        rid = _as_id(args[-1])
        if rid is None:
            raise ProtocolError(f"request id must be an int or a string, got {args[-1]!r}", 0, address)
        request_id, args = rid, args[:-1]
    elif len(args) > n + 1:
        raise ProtocolError(
            f"too many arguments: {len(args)} (expected {endpoint.positional_signature()})",
            guess_request_id(args), address)
    if len(args) < len(endpoint.required):
        raise ProtocolError(f"missing arguments: expected {endpoint.positional_signature()}", request_id, address)
    given = {arg.name: value for arg, value in zip(positional, args)}
    return Request(endpoint, _values(endpoint, given, request_id, address), request_id, sent_to=address)


def _keyword_request_id(args: Sequence[Any], start: int = 0) -> int | str | None:
    """The id of a keyword-form message, for an error reply: the value of the first ``id`` pair
    from ``start`` (where the pairs begin), else the value after any ``id``; None when there is none."""
    for i in [*range(start, len(args) - 1, 2), *range(len(args) - 1)]:
        if args[i] == ID_KEYWORD:
            rid = _as_id(args[i + 1])
            if rid is not None:
                return rid
    return None


def _order_hint(endpoint: Endpoint, args: Sequence[Any]) -> str:
    """A hint for a keyword-form message that named an optional argument where a required one
    goes (``kw/drum/generate id 42`` reads instrument 'id', then a lone 42)."""
    required = endpoint.required
    for arg, value in zip(required, args):
        if isinstance(value, str) and value in endpoint.keywords:
            names = " ".join(a.name for a in required)
            return f"; {arg.name} was read as {value!r}: the required arguments ({names}) come first, without names"
    return ""


def parse_keywords(endpoint: Endpoint, args: Sequence[Any], address: str = "") -> Request:
    """The keyword form: the required arguments in order, then ``name value`` pairs, each name an
    optional or keyword-only argument of the endpoint, or ``id``. A value is converted exactly as
    in the positional form, so the Request is the one the positional form gives."""
    address = address or endpoint.keyword_address
    required = endpoint.required
    r = len(required)
    found = _keyword_request_id(args, r)
    rid_for_errors: int | str = found if found is not None else 0
    accepted = ", ".join(endpoint.keywords)
    if len(args) < r:
        raise ProtocolError(f"missing arguments: expected {endpoint.keyword_signature()}", rid_for_errors, address)
    pairs = args[r:]
    required_names = [a.name for a in required]
    given: dict[str, Any] = {arg.name: value for arg, value in zip(required, args)}
    request_id: int | str = 0
    seen: set[str] = set()
    for i in range(0, len(pairs), 2):
        name = pairs[i]
        if not isinstance(name, str) or name not in endpoint.keywords:
            what = f"unknown keyword {name!r}" if isinstance(name, str) else f"expected a keyword name, got {name!r}"
            hint = ""
            if name in required_names:
                hint = f" ({name} is required: it comes first, without its name)"
            raise ProtocolError(f"{what}: {address} accepts {accepted}{hint}{_order_hint(endpoint, args)}",
                                rid_for_errors, address)
        if name in seen:
            raise ProtocolError(f"{name!r} given twice", rid_for_errors, address)
        seen.add(name)
        if i + 1 == len(pairs):
            raise ProtocolError(f"{name!r} has no value: keyword arguments are name value pairs "
                                f"(expected {endpoint.keyword_signature()})", rid_for_errors, address)
        value = pairs[i + 1]
        if name == ID_KEYWORD:
            rid = _as_id(value)
            if rid is None:
                raise ProtocolError(f"request id must be an int or a string, got {value!r}", 0, address)
            request_id = rid
        else:
            given[name] = value
    return Request(endpoint, _values(endpoint, given, request_id, address), request_id, sent_to=address)


def parse_named(name: str, args: Mapping[str, Any], request_id: Any = 0) -> Request:
    """A request given by endpoint name with named arguments (the web console's JSON form:
    ``{"request": "drum.play", "args": {"instrument": "kick"}, "id": 7}``). It is written as the
    keyword form (required arguments in order, the rest as pairs) and parsed as that, so it is
    checked exactly as OSC is and gives the same Request."""
    endpoint = BY_NAME.get(name) if isinstance(name, str) else None
    rid = _as_id(request_id)
    if rid is None:
        raise ProtocolError(f"request id must be an int or a string, got {request_id!r}", 0, str(name))
    if endpoint is None:
        raise ProtocolError(f"unknown request {name!r}: one of {', '.join(BY_NAME)}", rid, str(name))
    missing = [a.name for a in endpoint.required if a.name not in args]
    if missing:
        raise ProtocolError(f"missing arguments: {', '.join(missing)} (expected {endpoint.keyword_signature()})",
                            rid, endpoint.keyword_address)
    flat: list[Any] = [args[a.name] for a in endpoint.required]
    for key, value in args.items():
        if not any(a.name == key for a in endpoint.required):
            flat += [key, value]
    if rid != 0:
        flat += [ID_KEYWORD, rid]
    return parse_keywords(endpoint, flat, endpoint.keyword_address)


def describe(endpoint: Endpoint) -> dict[str, Any]:
    """One endpoint as JSON (the web console builds its forms from it)."""
    return {"name": endpoint.name, "address": endpoint.address, "keyword_address": endpoint.keyword_address,
            "doc": endpoint.doc, "replies": list(endpoint.replies),
            "args": [{"name": a.name, "kind": a.kind, "required": a.required, "default": a.default,
                      "minimum": a.minimum, "maximum": a.maximum, "choices": list(a.choices),
                      "keyword_only": a.keyword_only, "allow_empty": a.allow_empty, "doc": a.doc}
                     for a in endpoint.args]}


def markdown_table() -> str:
    """The README's address table, generated so it cannot drift from the code."""
    lines = ["| request | replies | what it does |", "|---|---|---|"]
    for e in ENDPOINTS:
        replies = "<br>".join(REPLIES[r].signature() for r in e.replies)
        lines.append(f"| {e.signature()} | {replies} | {e.doc} |")
    lines.append(f"| `{KEYWORD_PREFIX}/…` (each request above) required args, then `name value` pairs "
                 f"| the same replies | the keyword form: optional args (`[name]`, `[name=…]`) and `{ID_KEYWORD}` "
                 "by name, in any order; `[name=…]` ones exist only in this form |")
    names = ", ".join(f"`{e.name}`" for e in ENDPOINTS if e.name != "client.reply_port")
    lines.append('| WebSocket `/ws` of the web console: `{"address": "/genbridge/…", "args": […]}` or '
                 '`{"request": NAME, "args": {…}, "id": …}` | `{"type": "reply", "reply": "drum/played", '
                 '"address": …, "args": […], "named": {…}}` | each request above as JSON (either OSC form, or by '
                 f"NAME with named args: {names}), with the same replies |")
    err = REPLIES["error"]
    lines.append(f"| anything invalid | {err.signature()} "
                 "| unknown address, wrong types, bad values, malformed packet |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
