"""Render a .maxpat or .pd patch to SVG: boxes and cords from the patch's own coordinates.

Why SVG and no dependency: the README shows each patch as it is laid out in its file, and
GitHub renders SVG inline. ``python max_patches/render_patch.py`` rewrites max_patches/img/.
"""

from __future__ import annotations

import html
import json
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pd_file import read_pd  # noqa: E402

CHAR_W = 7.2
BOX_H = 22


@dataclass
class Box:
    x: float
    y: float
    w: float
    h: float
    text: str
    kind: str
    inlets: int
    outlets: int


def _pd_ports(kind: str, words: list[str]) -> tuple[int, int]:
    name = words[0] if words else ""
    known = {"loadbang": (1, 1), "t": (1, len(words) - 1), "netsend": (1, 2), "netreceive": (1, 2),
             "oscformat": (1, 1), "oscparse": (1, 1), "route": (2, len(words)), "unpack": (1, len(words) - 1),
             "pack": (len(words) - 1, 1), "print": (1, 0), "soundfiler": (1, 2), "list": (2, 1),
             "moses": (2, 2), "notein": (1, 3), "metro": (2, 1), "bng": (1, 1), "r": (0, 1)}
    if kind == "msg":
        return 1, 1
    if kind == "text":
        return 0, 0
    return known.get(name, (1, 1))


def load_pd(path: Path) -> tuple[list[Box], list[tuple[int, int, int, int]]]:
    boxes: list[Box] = []
    pd_boxes, cords = read_pd(path)
    for pd_box in pd_boxes:
        x, y, rest = pd_box.x, pd_box.y, pd_box.words
        if pd_box.kind == "restore":
            boxes.append(Box(x, y, 160, 80, "array gb-last", "graph", 0, 0))
        elif pd_box.kind == "floatatom":  # a number box: its width in digits first
            boxes.append(Box(x, y, int(rest[0]) * CHAR_W + 10, BOX_H, "0", "floatatom", 1, 1))
        elif rest[:1] == ["bng"]:
            size = float(rest[1])
            boxes.append(Box(x, y, size, size, rest[7], "bng", 1, 1))
        else:
            label = " ".join(rest)
            ins, outs = _pd_ports(pd_box.kind, rest)
            boxes.append(Box(x, y, max(30.0, len(label) * CHAR_W + 8), BOX_H, label, pd_box.kind, ins, outs))
    return boxes, cords


def load_maxpat(path: Path) -> tuple[list[Box], list[tuple[int, int, int, int]]]:
    patcher = json.loads(path.read_text())["patcher"]
    index = {}
    boxes = []
    for i, entry in enumerate(patcher["boxes"]):
        b = entry["box"]
        x, y, w, h = b["patching_rect"]
        text = b.get("text", "") or b["maxclass"]
        index[b["id"]] = i
        boxes.append(Box(x, y, max(w, len(text) * CHAR_W * 0.9), h, text, b["maxclass"], b["numinlets"],
                         b["numoutlets"]))
    cords = []
    for entry in patcher["lines"]:
        line = entry["patchline"]
        source, destination = line["source"], line["destination"]
        cords.append((index[source[0]], source[1], index[destination[0]], destination[1]))
    return boxes, cords


def _port_x(box: Box, i: int, n: int) -> float:
    return box.x + (box.w - 8) * (i / max(1, n - 1) if n > 1 else 0) + 4


def render(path: Path) -> str:
    boxes, cords = load_pd(path) if path.suffix == ".pd" else load_maxpat(path)
    width = max(b.x + b.w for b in boxes) + 20
    height = max(b.y + b.h for b in boxes) + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'font-family="monospace" font-size="11">', '<rect width="100%" height="100%" fill="#fafafa"/>']
    for a, outlet, b, inlet in cords:
        src, dst = boxes[a], boxes[b]
        x1, y1 = _port_x(src, outlet, src.outlets), src.y + src.h
        x2, y2 = _port_x(dst, inlet, dst.inlets), dst.y
        out.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#555" stroke-width="1.2"/>')
    for box in boxes:
        if box.kind in ("text", "comment"):
            out.append(f'<text x="{box.x:.0f}" y="{box.y + 14:.0f}" fill="#333">{html.escape(box.text)}</text>')
            continue
        fill = {"msg": "#e8eef8", "message": "#e8eef8", "bng": "#ffffff", "button": "#ffffff",
                "graph": "#ffffff"}.get(box.kind, "#ffffff")
        rx = box.w / 2 if box.kind in ("bng", "button") else 2
        out.append(f'<rect x="{box.x:.0f}" y="{box.y:.0f}" width="{box.w:.0f}" height="{box.h:.0f}" rx="{rx:.0f}" '
                   f'fill="{fill}" stroke="#222"/>')
        label = box.text if box.kind not in ("button",) else ""
        text_y = box.y + min(box.h, BOX_H) - 7
        out.append(f'<text x="{box.x + 4:.0f}" y="{text_y:.0f}">{html.escape(label)}</text>')
        for i in range(box.inlets):
            out.append(f'<rect x="{_port_x(box, i, box.inlets) - 3:.1f}" y="{box.y:.0f}" width="7" '
                       'height="2" fill="#222"/>')
        for i in range(box.outlets):
            out.append(f'<rect x="{_port_x(box, i, box.outlets) - 3:.1f}" y="{box.y + box.h - 2:.0f}" width="7" '
                       f'height="2" fill="#222"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> None:
    img = HERE / "img"
    img.mkdir(exist_ok=True)
    for patch in sorted([*HERE.glob("*.maxpat"), *HERE.glob("m4l/*.maxpat"), *HERE.glob("pd/*.pd")]):
        target = img / f"{patch.stem}{'_pd' if patch.suffix == '.pd' else ''}.svg"
        target.write_text(render(patch))
        print(f"wrote {target.relative_to(HERE.parent)}")


if __name__ == "__main__":
    sys.exit(main())
