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
from bridge.protocol import BY_ADDRESS, BY_KEYWORD_ADDRESS, GRID_CHOICES  # noqa: E402

DAEMON_PORT = ServerConfig().osc_port
REPLY_PORT = DAEMON_PORT + 1
PADS = ("kick", "snare", "hat")
PLAY = "/genbridge/drum/play"
REGISTER = "/genbridge/client/reply_port"
STATUS = "/genbridge/status"
PLAY_KW = "/genbridge/kw/drum/play"  # the pads play through the keyword form: velocity and quantize by name
TEMPO_LISTEN = "/genbridge/tempo/listen"
#: The quantise selector's grids (bridge.protocol.GRID_CHOICES has them all).
GRIDS = ("off", "1/16", "1/8", "beat", "bar")
CONTINUE = "/genbridge/continue"
CANCEL = "/genbridge/job/cancel"
#: The continue patches listen on their own port, so they can be open beside the pads patches
#: (the daemon keeps a reply port per sending socket).
CONTINUE_REPLY_PORT = REPLY_PORT + 1
for _address in (PLAY, REGISTER, STATUS, CONTINUE, CANCEL, TEMPO_LISTEN):
    assert _address in BY_ADDRESS, _address
assert PLAY_KW in BY_KEYWORD_ADDRESS and set(GRIDS) <= set(GRID_CHOICES)
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

    def number(self, x: int, y: int, width: int = 6) -> int:
        return self.add("floatatom", x, y, f"{width} 0 0 0 - - - 0")

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


def pd_connection(p: PdPatch, reply_port: int, send_y: int, tempo: bool = False) -> int:
    """On load: connect [netsend] to the daemon, register the reply port and (``tempo``) ask for the
    tempo on every bar; returns [netsend]."""
    load = p.obj(20, 40, "loadbang")
    order = p.obj(20, 70, "t b b b" if tempo else "t b b")
    connect = p.msg(120, 100, f"connect 127.0.0.1 {DAEMON_PORT}")
    send = p.obj(20, send_y, "netsend -u -b")
    register = p.msg(20, 100, f"{reply_port}")
    register_osc = p.obj(20, 130, f"oscformat {osc_words(REGISTER)}")
    p.connect(load, 0, order)
    p.connect(order, 2 if tempo else 1, connect)
    p.connect(order, 1 if tempo else 0, register)
    p.connect(connect, 0, send)
    p.connect(register, 0, register_osc)
    p.connect(register_osc, 0, send)
    if tempo:  # then hear the tempo on every bar
        listen = p.obj(320, 130, f"oscformat {osc_words(TEMPO_LISTEN)}")
        p.connect(order, 0, listen)
        p.connect(listen, 0, send)
    return send


def pd_pads() -> str:
    p = PdPatch()
    p.comment(20, 10, f"genbridge pads: click a pad (or send MIDI notes) - daemon on udp {DAEMON_PORT}, "
              f"replies on {REPLY_PORT}")
    send = pd_connection(p, REPLY_PORT, 470, tempo=True)
    play_osc = p.obj(20, 420, f"oscformat {osc_words(PLAY)}")
    p.connect(play_osc, 0, send)
    # the pads play through the keyword form: "kick velocity 100 quantize bar"
    kw_osc = p.obj(200, 440, f"oscformat {osc_words(PLAY_KW)}")
    p.connect(kw_osc, 0, send)
    with_grid = p.obj(200, 380, f"list append quantize {GRIDS[0]}")
    kw_trim = p.obj(200, 410, "list trim")
    p.connect(with_grid, 0, kw_trim)
    p.connect(kw_trim, 0, kw_osc)
    p.comment(360, 120, "quantize the pads to:")
    for i, grid in enumerate(GRIDS):
        choice = p.msg(360 + i * 90, 145, f"quantize {grid}")
        p.connect(choice, 0, with_grid, 1)
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
        prep = p.obj(x, 300, f"list prepend {inst} velocity")
        p.connect(pad, 0, vel)
        p.connect(vel, 0, prep)
        p.connect(prep, 0, with_grid)
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
    kind = p.obj(20, 630, "route drum status error tempo")
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
    # the tempo: bpm and beat in the bar, every bar
    tempo = p.obj(600, 300, "route bar reply")
    tempo_args = p.obj(600, 330, "unpack f f f f f f f s")
    bpm = p.number(600, 380)
    phase = p.number(680, 380, 4)
    p.comment(600, 405, "BPM   beat in bar")
    tempo_print = p.obj(600, 440, "print genbridge-tempo")
    p.connect(kind, 3, tempo)
    p.connect(tempo, 0, tempo_args)
    p.connect(tempo, 1, tempo_args)
    p.connect(tempo, 0, tempo_print)
    p.connect(tempo_args, 1, bpm)
    p.connect(tempo_args, 3, phase)
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
    order = m.obj(20, 70, "t b b", outlets=2, w=60)
    register = m.msg(90, 70, f"{REGISTER} {REPLY_PORT}", w=260)
    listen = m.msg(360, 70, TEMPO_LISTEN, w=160)  # then the tempo on every bar
    m.connect(load, 0, order)
    m.connect(order, 1, register)
    m.connect(order, 0, listen)
    m.connect(register, 0, send)
    m.connect(listen, 0, send)
    m.comment(20, 280, "quantize the pads to:", w=150)
    choices = [m.msg(170 + i * 70, 280, f"symbol {grid}", w=65) for i, grid in enumerate(GRIDS)]
    grids = []
    for i, inst in enumerate(PADS):
        x = 20 + i * 200
        pad = m.box("button", x, 110, w=60, inlets=1, outlets=1)
        m.comment(x, 175, inst, w=60)
        vel = m.msg(x, 200, "100", w=40)
        with_grid = m.obj(x, 320, f"pack 0 {GRIDS[0]}", inlets=2, outlets=1, w=90)
        play = m.msg(x, 350 + i * 28, f"{PLAY_KW} {inst} velocity $1 quantize $2", w=340)  # staggered: long
        m.connect(pad, 0, vel)
        m.connect(vel, 0, with_grid)
        m.connect(with_grid, 0, play)
        m.connect(play, 0, send)
        for choice in choices:
            m.connect(choice, 0, with_grid, 1)
        grids.append(with_grid)
    notein = m.obj(620, 110, "notein", outlets=3)
    pair = m.obj(620, 140, "pack 0 0", inlets=2, outlets=1)  # velocity arrives first: "note velocity"
    route = m.obj(620, 170, "route " + " ".join(str(NOTE_OF[i]) for i in PADS), outlets=len(PADS) + 1)
    m.connect(notein, 0, pair, 0)
    m.connect(notein, 1, pair, 1)
    m.connect(pair, 0, route)
    m.comment(700, 110, "MIDI notes 36 38 42", w=140)
    for i, inst in enumerate(PADS):
        note_on = m.obj(90 + i * 200, 240, "moses 1", inlets=2, outlets=2, w=60)  # velocity 0 is a note-off
        m.connect(route, i, note_on)
        m.connect(note_on, 1, grids[i])
    recv = m.obj(20, 490, f"udpreceive {REPLY_PORT}", inlets=1, outlets=1)
    replies = m.obj(20, 520, "route /genbridge/drum/played /genbridge/status/reply /genbridge/error "
                    "/genbridge/tempo/bar /genbridge/tempo/reply", outlets=6, w=620)
    m.connect(recv, 0, replies)
    tempo = m.obj(640, 640, "unpack 0 0. 0. 0. 0. 0 0 s", outlets=8, w=200)
    m.connect(replies, 3, tempo)
    m.connect(replies, 4, tempo)
    bpm = m.box("flonum", 640, 670, w=60, inlets=1, outlets=2)
    phase = m.box("flonum", 710, 670, w=50, inlets=1, outlets=2)
    m.comment(640, 695, "BPM  beat in bar", w=150)
    m.connect(tempo, 1, bpm)
    m.connect(tempo, 3, phase)
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


def pd_continue() -> str:
    """Record (capture), continue the last result, or a file; progress, chunks, the result, cancel."""
    p = PdPatch(900, 700)
    p.comment(20, 10, f"genbridge continue: MusicGen continues what you played - daemon on udp {DAEMON_PORT}, "
              f"replies on {CONTINUE_REPLY_PORT}")
    send = pd_connection(p, CONTINUE_REPLY_PORT, 400)
    cont_osc = p.obj(20, 360, f"oscformat {osc_words(CONTINUE)}")
    p.connect(cont_osc, 0, send)
    seconds = p.obj(300, 170, "nbx 4 14 1 120 0 0 empty empty seconds 0 -8 0 10 #fcfcfc #000000 #000000 4 256")
    p.comment(360, 170, "seconds of new audio")
    for i, (label, source) in enumerate((("record + continue", "capture"), ("continue the last result", "last"))):
        x = 20 + i * 140
        button = p.obj(x, 200, f"bng 40 250 50 0 empty empty {source} 0 -8 0 12 #e0e0e0 #000000 #000000")
        p.comment(x, 250, label)
        value = p.obj(x, 280, "f 4")
        p.connect(seconds, 0, value, 1)
        request = p.msg(x, 310, f"{source} $1")
        p.connect(button, 0, value)
        p.connect(value, 0, request)
        p.connect(request, 0, cont_osc)
    # scripted: pd -send "gb-continue-request prompt.wav 4" (a file inside the shared folder)
    scripted = p.obj(330, 310, "r gb-continue-request")
    as_list = p.obj(330, 335, "list")
    p.connect(scripted, 0, as_list)
    p.connect(as_list, 0, cont_osc)
    cancel_button = p.obj(520, 200, "bng 40 250 50 0 empty empty cancel 0 -8 0 12 #f0c0c0 #000000 #000000")
    job = p.obj(520, 280, "f")
    cancel_osc = p.obj(520, 310, f"oscformat {osc_words(CANCEL)}")
    p.connect(cancel_button, 0, job)
    p.connect(job, 0, cancel_osc)
    p.connect(cancel_osc, 0, send)
    # replies
    listen = p.obj(20, 440, f"netreceive -u -b {CONTINUE_REPLY_PORT}")
    parse = p.obj(20, 470, "oscparse")
    trim = p.obj(20, 500, "list trim")
    top = p.obj(20, 530, "route genbridge")
    kind = p.obj(20, 560, "route job error")
    what = p.obj(20, 590, "route queued progress chunk done cancelled")
    queued = p.obj(20, 620, "unpack f f f")
    p.connect(queued, 1, job, 1)  # remember the job id for cancel
    position = p.obj(20, 650, "print genbridge-queued")
    p.connect(queued, 2, position)
    progress = p.obj(140, 620, "unpack f f f")
    bar = p.obj(140, 650, "hsl 200 15 0 1 0 0 empty empty progress -2 -8 0 10 #fcfcfc #000000 #000000 0 1")
    p.connect(progress, 2, bar)
    chunk = p.obj(380, 620, "unpack f f f s")
    read_chunk = p.msg(380, 650, "read -resize $1 gb-chunk")
    chunk_filer = p.obj(380, 680, "soundfiler")
    chunk_print = p.obj(380, 710, "print genbridge-chunk-samples")
    p.connect(chunk, 3, read_chunk)
    p.connect(read_chunk, 0, chunk_filer)
    p.connect(chunk_filer, 0, chunk_print)
    done = p.obj(600, 620, "unpack f f f s")
    read_done = p.msg(600, 650, "read -resize $1 gb-continue")
    done_filer = p.obj(600, 680, "soundfiler")
    done_print = p.obj(600, 710, "print genbridge-continue-samples")
    path_print = p.obj(760, 650, "print genbridge-continue-path")
    p.connect(done, 3, read_done)
    p.connect(done, 3, path_print)
    p.connect(read_done, 0, done_filer)
    p.connect(done_filer, 0, done_print)
    error = p.obj(760, 560, "print genbridge-error")
    p.connect(listen, 0, parse)
    p.connect(parse, 0, trim)
    p.connect(trim, 0, top)
    p.connect(top, 0, kind)
    p.connect(kind, 0, what)
    p.connect(kind, 1, error)
    p.connect(what, 0, queued)
    p.connect(what, 1, progress)
    p.connect(what, 2, chunk)
    p.connect(what, 3, done)
    # play the result
    play_button = p.obj(600, 740, "bng 30 250 50 0 empty empty play 0 -8 0 12 #c0f0c0 #000000 #000000")
    player = p.obj(600, 780, "tabplay~ gb-continue")
    dac = p.obj(600, 810, "dac~")
    p.connect(play_button, 0, player)
    p.connect(player, 0, dac, 0)
    p.connect(player, 0, dac, 1)
    p.array("gb-chunk", 640, 40)
    p.array("gb-continue", 640, 300)
    return p.text()


def max_continue(m4l: bool = False) -> str:
    """The continue patch for Max; ``m4l``: audio in/out through plugin~/plugout~ (save as a device)."""
    m = MaxPatch()
    title = ("genbridge continue (Max for Live): record what plays into the track, continue it with MusicGen."
             if m4l else "genbridge continue: record, continue with MusicGen, drag the result into your set.")
    m.comment(20, 10, f"{title} Daemon on udp {DAEMON_PORT}, replies on {CONTINUE_REPLY_PORT}.", w=760)
    if m4l:
        m.comment(20, 30, "To make the device: open in Max for Live, then File > Save As Device (.amxd).", w=760)
    send = m.obj(20, 400, f"udpsend 127.0.0.1 {DAEMON_PORT}", inlets=1, outlets=0)
    load = m.obj(20, 60, "loadbang", outlets=1)
    register = m.msg(20, 90, f"{REGISTER} {CONTINUE_REPLY_PORT}")
    m.connect(load, 0, register)
    m.connect(register, 0, send)
    seconds = m.box("flonum", 300, 130, w=60, inlets=1, outlets=2)
    m.comment(365, 130, "seconds of new audio", w=160)
    for i, source in enumerate(("capture", "last")):
        x = 20 + i * 140
        button = m.box("button", x, 130, w=40, inlets=1, outlets=1)
        m.comment(x, 175, "record + continue" if source == "capture" else "continue the result", w=130)
        value = m.obj(x, 200, "f 4", inlets=2, outlets=1, w=60)
        request = m.msg(x, 230, f"{CONTINUE} {source} $1", w=250)
        m.connect(seconds, 0, value, 1)
        m.connect(button, 0, value)
        m.connect(value, 0, request)
        m.connect(request, 0, send)
    pick = m.box("button", 300, 200, w=30, inlets=1, outlets=1)
    m.comment(335, 200, "a file in the shared folder", w=200)
    dialog = m.obj(300, 240, "opendialog sound", inlets=1, outlets=2, w=120)
    native = m.obj(430, 240, "conformpath native absolute", inlets=1, outlets=2, w=180)  # Max paths -> POSIX
    with_seconds = m.obj(300, 290, "pak s 4.", inlets=2, outlets=1, w=80)
    request_file = m.msg(300, 320, f"{CONTINUE} $1 $2", w=250)
    m.connect(pick, 0, dialog)
    m.connect(dialog, 0, native)
    m.connect(native, 0, with_seconds, 0)
    m.connect(seconds, 0, with_seconds, 1)
    m.connect(with_seconds, 0, request_file)
    m.connect(request_file, 0, send)
    cancel = m.box("button", 600, 130, w=40, inlets=1, outlets=1)
    m.comment(645, 130, "cancel", w=80)
    job = m.obj(600, 200, "i", inlets=2, outlets=1, w=40)
    cancel_msg = m.msg(600, 230, f"{CANCEL} $1", w=200)
    m.connect(cancel, 0, job)
    m.connect(job, 0, cancel_msg)
    m.connect(cancel_msg, 0, send)
    recv = m.obj(20, 450, f"udpreceive {CONTINUE_REPLY_PORT}", inlets=1, outlets=1)
    route = m.obj(20, 480, "route /genbridge/job/queued /genbridge/job/progress /genbridge/job/chunk "
                  "/genbridge/job/done /genbridge/error", outlets=6, w=620)
    m.connect(recv, 0, route)
    queued = m.obj(20, 510, "unpack 0 0 0", outlets=3, w=90)
    m.connect(route, 0, queued)
    m.connect(queued, 1, job, 1)
    progress = m.obj(140, 510, "unpack 0 0 0.", outlets=3, w=90)
    bar = m.box("slider", 140, 540, w=200, inlets=1, outlets=1, size=1.0, floatoutput=1, orientation=1)
    m.connect(route, 1, progress)
    m.connect(progress, 2, bar)
    chunk = m.obj(360, 510, "unpack 0 0 0 s", outlets=4, w=110)
    m.connect(route, 2, chunk)
    chunk_load = m.obj(360, 540, "prepend replace", w=110)
    chunk_buffer = m.obj(360, 570, "buffer~ gb-chunk", inlets=1, outlets=2, w=120)
    m.connect(chunk, 3, chunk_load)
    m.connect(chunk_load, 0, chunk_buffer)
    done = m.obj(500, 510, "unpack 0 0 0 s", outlets=4, w=110)
    m.connect(route, 3, done)
    done_load = m.obj(500, 540, "prepend replace", w=110)
    done_buffer = m.obj(500, 570, "buffer~ gb-continue", inlets=1, outlets=2, w=130)
    path_view = m.msg(500, 610, "", w=340)
    m.comment(500, 635, "the result's path: drag it from the folder into your set", w=340)
    m.connect(done, 3, done_load)
    m.connect(done_load, 0, done_buffer)
    m.connect(done, 3, path_view, 1)
    error_view = m.msg(20, 610, "", w=340)
    m.connect(route, 4, error_view, 1)
    play = m.box("button", 20, 660, w=30, inlets=1, outlets=1)
    m.comment(55, 660, "play the result", w=120)
    start = m.msg(20, 700, "start 0", w=60)
    player = m.obj(20, 730, "play~ gb-continue", inlets=2, outlets=2, w=130)
    m.connect(play, 0, start)
    m.connect(start, 0, player)
    out = m.obj(20, 770, "plugout~" if m4l else "ezdac~", inlets=2, outlets=0, w=60)
    m.connect(player, 0, out, 0)
    m.connect(player, 0, out, 1)
    if m4l:
        # the track's audio passes through and is what the daemon's input captures when it is routed there
        plugin = m.obj(300, 700, "plugin~", inlets=1, outlets=2, w=60)
        m.connect(plugin, 0, out, 0)
        m.connect(plugin, 1, out, 1)
        m.comment(370, 700, "the track passes through; route it to the daemon's audio input for 'record'", w=400)
    return m.text()


def max_pads_m4l() -> str:
    """The pads patch as a Max for Live device body: plugout~ instead of ezdac~, MIDI from the track."""
    text = max_pads().replace('"text": "ezdac~"', '"text": "plugout~"')
    data = json.loads(text)
    data["patcher"]["boxes"].insert(0, {"box": {
        "id": "obj-m4l-note", "maxclass": "comment", "numinlets": 1, "numoutlets": 0,
        "patching_rect": [20, 28, 760, 22],
        "text": "Max for Live: open in a MIDI track's device, File > Save As Device (.amxd). "
                "Pads answer the track's MIDI notes; clips play through plugout~."}})
    return json.dumps(data, indent=1) + "\n"


def main() -> None:
    (HERE / "pd").mkdir(exist_ok=True)
    (HERE / "m4l").mkdir(exist_ok=True)
    (HERE / "pd" / "genbridge_pads.pd").write_text(pd_pads())
    (HERE / "pd" / "genbridge_continue.pd").write_text(pd_continue())
    (HERE / "genbridge_pads.maxpat").write_text(max_pads())
    (HERE / "genbridge_continue.maxpat").write_text(max_continue())
    (HERE / "m4l" / "genbridge_pads_m4l.maxpat").write_text(max_pads_m4l())
    (HERE / "m4l" / "genbridge_continue_m4l.maxpat").write_text(max_continue(m4l=True))
    print("wrote the pads and continue patches for Max, Max for Live (m4l/) and Pd (pd/)")


if __name__ == "__main__":
    main()
