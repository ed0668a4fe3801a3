"""Check Max (.maxpat) and Pd (.pd) patches against the OSC address table.

Finds every OSC message a patch sends - Max message boxes starting with ``/genbridge/``, Pd
``[oscformat ...]`` objects and the message boxes that feed them - and parses each with
``bridge.protocol.parse``, as the daemon would; checks the ports against the default config.
Used by tests/test_patches.py; ``python max_patches/check_patches.py`` prints what it finds.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pd_file import read_pd  # noqa: E402

from bridge.config import ServerConfig  # noqa: E402
from bridge.protocol import BY_ADDRESS, BY_KEYWORD_ADDRESS, Arg, ProtocolError, parse  # noqa: E402

EXAMPLE_NUMBER = 100.0  # what a $1 / a velocity inlet stands for when checking


@dataclass
class Report:
    path: Path
    sends: list[tuple[str, list[Any]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _atom(token: str) -> Any:
    try:
        return float(token)
    except ValueError:
        return token


EXAMPLE_PATH = "prompt.wav"  # what a $1 in a string argument's place stands for


def _example(arg: Arg | None) -> Any:
    """What a placeholder in this argument's place stands for: one of its choices, a file name
    for another string, else a number."""
    if arg is None or arg.kind != "str":
        return EXAMPLE_NUMBER
    return arg.choices[-1] if arg.choices else EXAMPLE_PATH


def _arg_in_place(address: str, args: list[Any], i: int) -> Arg | None:
    """The table's argument that position ``i`` of a message to ``address`` fills: by position in
    the positional form; in the keyword form, the required ones by position, then by the name
    before the value."""
    endpoint = BY_ADDRESS.get(address)
    if endpoint is not None:
        return endpoint.positional[i] if i < len(endpoint.positional) else None
    endpoint = BY_KEYWORD_ADDRESS.get(address)
    if endpoint is None:
        return None
    r = len(endpoint.required)
    if i < r:
        return endpoint.required[i]
    if (i - r) % 2 == 1:
        by_name = {a.name: a for a in endpoint.args}
        return by_name.get(args[i - 1]) if isinstance(args[i - 1], str) else None
    return None


def _fill_placeholders(address: str, args: list[Any]) -> list[Any]:
    """Replace $1, $2 ... (filled in at run time by Max or Pd) by an example of the kind the
    address table expects in that place (see _example)."""
    out = []
    for i, value in enumerate(args):
        if isinstance(value, str) and value.lstrip("\\").startswith("$"):
            value = _example(_arg_in_place(address, args, i))
        out.append(value)
    return out


def _check_send(report: Report, address: str, args: list[Any]) -> None:
    args = _fill_placeholders(address, args)
    report.sends.append((address, args))
    try:
        parse(address, args)
    except ProtocolError as exc:
        report.errors.append(f"{report.path.name}: {address} {args}: {exc}")


def check_pd(path: Path) -> Report:
    report = Report(path)
    boxes, connects = read_pd(path)
    objects = [(box.kind, box.words) for box in boxes]
    inputs: dict[int, list[int]] = {}  # object -> what feeds its left inlet
    right: dict[int, list[int]] = {}  # object -> what feeds its other inlets
    for a, _, b, inlet in connects:
        (inputs if inlet == 0 else right).setdefault(b, []).append(a)

    def resolve(index: int, depth: int = 0) -> list[list[Any]] | None:
        """Argument lists object ``index`` can output; None when they come from outside."""
        kind, words = objects[index]
        if depth > 20:
            return None
        if kind == "msg":
            return [[_atom(w) for w in words]]
        name = words[0] if words else ""
        if name in ("list", "r", "receive", "notein", "inlet"):
            if name == "list" and len(words) > 1 and words[1] == "prepend":
                results = []
                for src in inputs.get(index, []):
                    for args in resolve(src, depth + 1) or [[EXAMPLE_NUMBER]]:
                        results.append([_atom(w) for w in words[2:]] + args)
                return results
            if name == "list" and len(words) > 1 and words[1] == "append":
                # what comes in on the left, then the right inlet's latest (the box's own words at first)
                tails = [[_atom(w) for w in words[2:]]]
                for src in right.get(index, []):
                    tails.extend(resolve(src, depth + 1) or [])
                return [head + tail for src in inputs.get(index, [])
                        for head in resolve(src, depth + 1) or [[EXAMPLE_NUMBER]] for tail in tails]
            if name == "list" and len(words) > 1 and words[1] == "trim":
                results = []
                for src in inputs.get(index, []):
                    results.extend(resolve(src, depth + 1) or [])
                return results
            return None  # scripted or external input
        if name in ("moses", "f", "float", "route"):
            return [[EXAMPLE_NUMBER]]
        if name in ("metro", "bng", "loadbang", "t", "b", "bang"):
            return [[]]
        return None

    for index, (kind, words) in enumerate(objects):
        if kind == "obj" and words and words[0] == "oscformat":
            address = "/" + "/".join(words[1:])
            for src in inputs.get(index, []):
                for args in resolve(src) or []:
                    _check_send(report, address, args)
        if kind == "msg" and words[:1] == ["connect"]:
            if int(float(words[2])) != ServerConfig().osc_port:
                report.errors.append(f"{path.name}: connects to port {words[2]}, "
                                     f"the default is {ServerConfig().osc_port}")
    _check_reply_port(report, [int(float(w[-1])) for k, w in objects if k == "obj" and w[:1] == ["netreceive"]])
    return report


def check_maxpat(path: Path) -> Report:
    report = Report(path)
    patcher = json.loads(path.read_text())["patcher"]
    listen = []
    for entry in patcher["boxes"]:
        box = entry["box"]
        text = box.get("text", "")
        if box["maxclass"] == "message" and text.startswith("/genbridge/"):
            words = text.split()
            args = [_atom(w) for w in words[1:]]
            _check_send(report, words[0], args)
        if box["maxclass"] == "newobj" and text.startswith("udpsend"):
            port = int(text.split()[2])
            if port != ServerConfig().osc_port:
                report.errors.append(f"{path.name}: udpsend to port {port}, the default is {ServerConfig().osc_port}")
        if box["maxclass"] == "newobj" and text.startswith("udpreceive"):
            listen.append(int(text.split()[1]))
    _check_reply_port(report, listen)
    return report


def _check_reply_port(report: Report, listening: list[int]) -> None:
    registered = [int(a[0]) for address, a in report.sends if address == "/genbridge/client/reply_port" and a]
    if not listening:
        report.errors.append(f"{report.path.name}: listens for no replies")
    for port in registered:
        if port not in listening:
            report.errors.append(f"{report.path.name}: registers reply port {port} but listens on {listening}")
    if listening and not registered:
        report.errors.append(f"{report.path.name}: listens on {listening} but never registers a reply port")


def check(path: Path) -> Report:
    return check_pd(path) if path.suffix == ".pd" else check_maxpat(path)


def all_patches() -> list[Path]:
    return sorted([*HERE.glob("*.maxpat"), *HERE.glob("m4l/*.maxpat"), *HERE.glob("*.amxd"), *HERE.glob("pd/*.pd")])


if __name__ == "__main__":
    failed = False
    for patch in all_patches():
        report = check(patch)
        print(f"{patch.relative_to(HERE)}: {len(report.sends)} sends")
        for address, args in report.sends:
            print(f"  {address} {args}")
        for error in report.errors:
            print(f"  ERROR {error}")
            failed = True
    sys.exit(1 if failed else 0)
