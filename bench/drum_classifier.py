"""How well does the drum benchmark's classifier name drums from a source it never saw?

bench/drum_quality.py reads a generated clip's instrument through a classifier trained on the
real training kits, and a rate measured through it is only as good as the classifier. This
trains it with one training source left out at a time and names that source's clips (finished,
as every clip the benchmark classifies): per instrument, the share named right, with and without
balanced class weights. The two GM soundfonts count as one source: MuseScore General shares
FluidR3's samples, so leaving one out while the other stays in names drums the classifier has
seen (printed too, as "fonts apart", to show how much that reading flatters it).

Usage: python bench/drum_classifier.py [--data DIR,DIR] [--hold-out KIT,KIT] [--name NAME]
Needs `make data` unless --data names other samples. About a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import existing_sources, save, table  # noqa: E402

from bridge.finishing import FinishingSettings, finish_clip  # noqa: E402
from models.drum_data import (  # noqa: E402
    DEFAULT_HELD_OUT,
    DEFAULT_SOURCES,
    INSTRUMENTS,
    find_samples,
    load_drum_set,
    split_held_out,
)
from models.drum_eval import DrumClassifier  # noqa: E402
from models.training import DEFAULT_LENGTH, DEFAULT_SAMPLE_RATE  # noqa: E402

#: Sources that share recordings, left out together.
SHARED_SAMPLES = {"fluid-soundfont-gm": "GM soundfonts", "musescore-general-soundfont": "GM soundfonts"}
#: Clips as the default model is trained on them.
RATE, LENGTH = DEFAULT_SAMPLE_RATE, DEFAULT_LENGTH


def leave_one_out(clips: np.ndarray, labels: np.ndarray, sources: np.ndarray, classes: list[str],
                  class_weight: str | None) -> np.ndarray:
    """Each clip's predicted class index, from a classifier trained without its source."""
    predicted = np.empty(len(labels), dtype=int)
    for source in sorted(set(sources)):
        out = sources == source
        clf = DrumClassifier(classes, class_weight).fit(clips[~out], labels[~out], RATE)
        predicted[out] = [classes.index(c) for c in clf.predict(list(clips[out]), RATE)]
    return predicted


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=",".join(DEFAULT_SOURCES), help="comma-separated data sources")
    p.add_argument("--hold-out", default=",".join(DEFAULT_HELD_OUT),
                   help="kits the benchmark holds out (left out here too)")
    p.add_argument("--name", default="drum_classifier", help="results file name under bench/results/")
    args = p.parse_args(argv)
    sources_found = existing_sources(args.data)
    if not sources_found:
        p.error(f"none of the data sources exist: {args.data} (run `make data`)")
    t0 = time.perf_counter()
    train, _ = split_held_out(find_samples(sources_found), [k for k in args.hold_out.split(",") if k])
    data = load_drum_set(train, sample_rate=RATE, channels=1, length=LENGTH, classes=list(INSTRUMENTS))
    finishing = FinishingSettings()
    clips = np.stack([finish_clip(c, RATE, finishing)[0] for c in data.audio])
    package = np.array([s.package or s.kit for s in data.samples])
    grouped = np.array([SHARED_SAMPLES.get(p_, p_) for p_ in package])
    classes = data.classes
    readings = {"unweighted": (grouped, None), "balanced": (grouped, "balanced"),
                "balanced, fonts apart": (package, "balanced")}
    recall: dict[str, dict[str, float]] = {}
    by_source: dict[str, dict[str, float]] = {}
    for name, (sources, weight) in readings.items():
        pred = leave_one_out(clips, data.labels, sources, classes, weight)
        recall[name] = {c: float(np.mean(pred[data.labels == k] == k)) for k, c in enumerate(classes)
                        if (data.labels == k).any()}
        recall[name]["mean"] = float(np.mean(list(recall[name].values())))
        if name == "balanced":
            by_source = {s: float(np.mean(pred[sources == s] == data.labels[sources == s]))
                         for s in sorted(set(sources))}
    counts = {c: int((data.labels == k).sum()) for k, c in enumerate(classes)}
    rows = [[c, counts.get(c, len(data.labels)), *(f"{recall[n][c]:.0%}" for n in readings)]
            for c in recall["balanced"]]
    print(f"{len(data.labels)} training clips from {len(set(grouped))} sources (held-out kits left out); "
          "share of each instrument named right by a classifier trained without its source:")
    print(table(["instrument", "clips", *readings], rows))
    print("\nbalanced, clips of each source named right: "
          + ", ".join(f"{s} {v:.0%}" for s, v in by_source.items()))
    print(f"{time.perf_counter() - t0:.0f} s")
    path = save(args.name, {"clips": len(data.labels), "per_instrument": counts, "recall": recall,
                            "balanced_by_source": by_source})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
