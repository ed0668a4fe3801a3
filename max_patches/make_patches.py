"""Write the pads patches (Pd and Max) from one description, with addresses from the protocol table.

Why generated: the OSC address space is written once, in ``bridge/protocol.py``; a patch that
spells an address by hand drifts. Run ``python max_patches/make_patches.py`` after changing the
table or the layout; ``tests/test_patches.py`` checks the files against the table either way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bridge.config import GM_DRUM_NOTES, ServerConfig  # noqa: E402
from bridge.protocol import BY_ADDRESS  # noqa: E402

DAEMON_PORT = ServerConfig().osc_port
REPLY_PORT = DAEMON_PORT + 1
PADS = ("kick", "snare", "hat")
PLAY = "/genbridge/drum/play"
REGISTER = "/genbridge/client/reply_port"
STATUS = "/genbridge/status"
for _address in (PLAY, REGISTER, STATUS):
    assert _address in BY_ADDRESS, _address
#: The pad notes: General MIDI (and Ableton Drum Rack) kick, snare, closed hat.
NOTE_OF = {"kick": 36, "snare": 38, "hat": 42}
for _inst, _note in NOTE_OF.items():
    assert GM_DRUM_NOTES[str(_note)] == _inst, (_inst, _note)


class PdPatch:
    """A Pd canvas: objects by index, connections, written as a .pd file."""

    def __init__(self, width: int = 820, height: int = 560) -> None:
        self.lines = [f"#N canvas 40 40 {width} {height} 12;"]
        self.count = 0

    def add(self, kind: str, x: int, y: int, text: str) -> int:
        text = text.replace("$", "\\$")  # a bare $1 in a .pd file is the canvas's argument
        self.lines.append(f"#X {kind} {x} {y} {text};")
        self.count += 1
        return self.count - 1

    def obj(self, x: int, y: int, text: str) -> int:
        return self.add("obj", x, y, text)

    def msg(self, x: int, y: int, text: str) -> int:
        return self.add("msg", x, y, text)

    def comment(self, x: int, y: int, text: str) -> int:
        return self.add("text", x, y, text.replace(",", " \\,").replace(";", " \\;"))

    def array(self, name: str, x: int, y: int) -> int:
        self.lines += [
            "#N canvas 0 50 450 250 (subpatch) 0;",
            f"#X array {name} 100 float 2;",
            "#X coords 0 1 100 -1 160 80 1 0 0;",
            f"#X restore {x} {y} graph;",
        ]
        self.count += 1
        return self.count - 1

    def connect(self, a: int, outlet: int, b: int, inlet: int = 0) -> None:
        self.lines.append(f"#X connect {a} {outlet} {b} {inlet};")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def osc_words(address: str) -> str:
    return " ".join(address.strip("/").split("/"))


def pd_pads() -> str:
    p = PdPatch()
    p.comment(20, 10, f"genbridge pads: click a pad (or send MIDI notes) - daemon on udp {DAEMON_PORT}, "
              f"replies on {REPLY_PORT}")
    load = p.obj(20, 40, "loadbang")
    order = p.obj(20, 70, "t b b")
    connect = p.msg(120, 100, f"connect 127.0.0.1 {DAEMON_PORT}")
    send = p.obj(20, 470, "netsend -u -b")
    register = p.msg(20, 100, f"{REPLY_PORT}")
    register_osc = p.obj(20, 130, f"oscformat {osc_words(REGISTER)}")
    p.connect(load, 0, order)
    p.connect(order, 1, connect)
    p.connect(order, 0, register)
    p.connect(connect, 0, send)
    p.connect(register, 0, register_osc)
    p.connect(register_osc, 0, send)
    play_osc = p.obj(20, 420, f"oscformat {osc_words(PLAY)}")
    p.connect(play_osc, 0, send)
    # MIDI notes (General MIDI drum map) play the same pads with their velocity; [notein]
    # sends velocity before note, so [pack] pairs them as "note velocity"
    notein = p.obj(360, 170, "notein")
    pack = p.obj(360, 200, "pack f f")
    p.connect(notein, 0, pack, 0)
    p.connect(notein, 1, pack, 1)
    route = p.obj(360, 230, "route " + " ".join(str(NOTE_OF[i]) for i in PADS))
    p.connect(pack, 0, route)
    for i, inst in enumerate(PADS):
        x = 20 + i * 110
        pad = p.obj(x, 180, f"bng 60 250 50 0 empty empty {inst} 4 30 0 14 #e0e0e0 #000000 #000000")
        vel = p.msg(x, 260, "100")
        prep = p.obj(x, 300, f"list prepend {inst}")
        trim = p.obj(x, 330, "list trim")
        p.connect(pad, 0, vel)
        p.connect(vel, 0, prep)
        p.connect(prep, 0, trim)
        p.connect(trim, 0, play_osc)
        note_on = p.obj(360 + i * 60, 260, "moses 1")  # velocity 0 is a note-off
        p.connect(route, i, note_on)
        p.connect(note_on, 1, prep)
    # scripted triggers: pd -send "gb-play kick 100"
    recv = p.obj(500, 330, "r gb-play")
    as_list = p.obj(500, 360, "list")
    p.connect(recv, 0, as_list)
    p.connect(as_list, 0, play_osc)
    # replies
    listen = p.obj(20, 510, f"netreceive -u -b {REPLY_PORT}")
    parse = p.obj(20, 540, "oscparse")
    trim = p.obj(20, 570, "list trim")
    top = p.obj(20, 600, "route genbridge")
    kind = p.obj(20, 630, "route drum status error")
    drum = p.obj(20, 660, "route played ready")
    played = p.obj(20, 690, "unpack f s s f")
    show = p.obj(300, 720, "print genbridge-played")
    read = p.msg(120, 720, "read -resize $1 gb-last")
    filer = p.obj(120, 750, "soundfiler")
    samples = p.obj(120, 780, "print genbridge-samples")
    fresh = p.obj(300, 690, "print genbridge-fresh")
    error = p.obj(400, 660, "print genbridge-error")
    status = p.obj(560, 660, "print genbridge-status")
    p.connect(listen, 0, parse)
    p.connect(parse, 0, trim)
    p.connect(trim, 0, top)
    p.connect(top, 0, kind)
    p.connect(kind, 0, drum)
    p.connect(kind, 1, status)
    p.connect(kind, 2, error)
    p.connect(drum, 0, played)
    p.connect(drum, 0, show)
    p.connect(played, 2, read)
    p.connect(played, 3, fresh)
    p.connect(read, 0, filer)
    p.connect(filer, 0, samples)
    p.array("gb-last", 600, 180)
    poll = p.obj(560, 560, "metro 2000")
    status_on = p.msg(560, 530, "1")
    status_osc = p.obj(560, 590, f"oscformat {osc_words(STATUS)}")
    p.connect(status_on, 0, poll)
    p.connect(poll, 0, status_osc)
    p.connect(status_osc, 0, send)
    p.comment(560, 500, "status every 2 s (click 1)")
    return p.text()


# --------------------------------------------------------------------------- Max


class MaxPatch:
    def __init__(self) -> None:
        self.boxes: list[dict[str, Any]] = []
        self.lines: list[dict[str, Any]] = []

    def box(self, maxclass: str, x: int, y: int, text: str = "", w: int = 140, inlets: int = 1,
            outlets: int = 1, **extra: Any) -> str:
        ident = f"obj-{len(self.boxes) + 1}"
        box = {"id": ident, "maxclass": maxclass, "numinlets": inlets, "numoutlets": outlets,
               "patching_rect": [x, y, w, 22], **extra}
        if text:
            box["text"] = text
        self.boxes.append({"box": box})
        return ident

    def obj(self, x: int, y: int, text: str, inlets: int = 1, outlets: int = 1, w: int = 160) -> str:
        return self.box("newobj", x, y, text, w=w, inlets=inlets, outlets=outlets)

    def msg(self, x: int, y: int, text: str, w: int = 160) -> str:
        return self.box("message", x, y, text, w=w, inlets=2, outlets=1)

    def comment(self, x: int, y: int, text: str, w: int = 400) -> str:
        return self.box("comment", x, y, text, w=w, inlets=1, outlets=0)

    def connect(self, a: str, outlet: int, b: str, inlet: int = 0) -> None:
        self.lines.append({"patchline": {"source": [a, outlet], "destination": [b, inlet]}})

    def text(self) -> str:
        patcher = {"patcher": {
            "fileversion": 1,
            "appversion": {"major": 8, "minor": 5, "revision": 0, "architecture": "x64", "modernui": 1},
            "classnamespace": "box", "rect": [40, 80, 900, 640], "openinpresentation": 0,
            "default_fontsize": 12.0, "gridsize": [15.0, 15.0],
            "boxes": self.boxes, "lines": self.lines,
        }}
        return json.dumps(patcher, indent=1) + "\n"


def max_pads() -> str:
    m = MaxPatch()
    m.comment(20, 10, f"genbridge pads: click a pad or play MIDI notes. Daemon on udp {DAEMON_PORT}, "
              f"replies on {REPLY_PORT}.", w=700)
    send = m.obj(20, 440, f"udpsend 127.0.0.1 {DAEMON_PORT}", inlets=1, outlets=0)
    load = m.obj(20, 40, "loadbang", outlets=1)
    register = m.msg(20, 70, f"{REGISTER} {REPLY_PORT}")
    m.connect(load, 0, register)
    m.connect(register, 0, send)
    for i, inst in enumerate(PADS):
        x = 20 + i * 200
        pad = m.box("button", x, 110, w=60, inlets=1, outlets=1)
        m.comment(x, 175, inst, w=60)
        vel = m.msg(x, 200, "100", w=40)
        play = m.msg(x, 230, f"{PLAY} {inst} $1", w=190)
        m.connect(pad, 0, vel)
        m.connect(vel, 0, play)
        m.connect(play, 0, send)
    notein = m.obj(620, 40, "notein", outlets=3)
    pair = m.obj(620, 70, "pack 0 0", inlets=2, outlets=1)  # velocity arrives first: "note velocity"
    route = m.obj(620, 100, "route " + " ".join(str(NOTE_OF[i]) for i in PADS), outlets=len(PADS) + 1)
    m.connect(notein, 0, pair, 0)
    m.connect(notein, 1, pair, 1)
    m.connect(pair, 0, route)
    m.comment(700, 40, "MIDI notes 36 38 42", w=140)
    for i, inst in enumerate(PADS):
        note_on = m.obj(90 + i * 200, 170, "moses 1", inlets=2, outlets=2, w=60)  # velocity 0 is a note-off
        m.connect(route, i, note_on)
        m.connect(note_on, 1, [b["box"]["id"] for b in m.boxes if b["box"].get("text") == f"{PLAY} {inst} $1"][0])
    recv = m.obj(20, 490, f"udpreceive {REPLY_PORT}", inlets=1, outlets=1)
    replies = m.obj(20, 520, "route /genbridge/drum/played /genbridge/status/reply /genbridge/error", outlets=4, w=420)
    m.connect(recv, 0, replies)
    played = m.obj(20, 550, "unpack 0 s s 0", outlets=4)
    m.connect(replies, 0, played)
    by_pad = m.obj(20, 610, "route " + " ".join(PADS), outlets=len(PADS) + 1)
    pair_path = m.obj(20, 580, "pack s s", inlets=2, outlets=1)
    m.connect(played, 1, pair_path, 0)
    m.connect(played, 2, pair_path, 1)
    m.connect(pair_path, 0, by_pad)
    fresh = m.box("number", 300, 580, w=50, inlets=1, outlets=2)
    m.comment(355, 580, "fresh (1) or replayed (0)", w=200)
    m.connect(played, 3, fresh)
    dac = m.obj(20, 800, "ezdac~", inlets=2, outlets=0, w=50)
    m.comment(80, 800, "local playback, for a daemon without an audio device", w=400)
    for i, inst in enumerate(PADS):
        x = 20 + i * 200
        order = m.obj(x, 640, "t b l", outlets=2, w=60)
        replace = m.obj(x + 60, 670, "prepend replace", outlets=1, w=110)
        buffer = m.obj(x + 60, 700, f"buffer~ gb-{inst}", inlets=1, outlets=2, w=130)
        start = m.msg(x, 730, "start 0", w=60)
        player = m.obj(x, 760, f"play~ gb-{inst}", inlets=2, outlets=2, w=110)
        m.connect(by_pad, i, order)
        m.connect(order, 1, replace)  # load the new clip, then play it
        m.connect(replace, 0, buffer)
        m.connect(order, 0, start)
        m.connect(start, 0, player)
        m.connect(player, 0, dac, 0)
        m.connect(player, 0, dac, 1)
    status_poll = m.obj(520, 440, "metro 2000", inlets=2, outlets=1)
    status_msg = m.msg(520, 470, STATUS)
    toggle = m.box("toggle", 520, 410, w=22, inlets=1, outlets=1)
    m.comment(550, 410, "status every 2 s", w=150)
    m.connect(toggle, 0, status_poll)
    m.connect(status_poll, 0, status_msg)
    m.connect(status_msg, 0, send)
    status_view = m.msg(520, 550, "", w=340)
    m.connect(replies, 1, status_view, 1)
    error_view = m.msg(520, 590, "", w=340)
    m.connect(replies, 2, error_view, 1)
    return m.text()


def main() -> None:
    (HERE / "pd").mkdir(exist_ok=True)
    (HERE / "pd" / "genbridge_pads.pd").write_text(pd_pads())
    (HERE / "genbridge_pads.maxpat").write_text(max_pads())
    print("wrote max_patches/genbridge_pads.maxpat and max_patches/pd/genbridge_pads.pd")


if __name__ == "__main__":
    main()
