#!/usr/bin/env python3
"""End-to-end throughput per input class against libvips and Pillow, all classes in one run
(issue 19's table).

    python3 bench/classes.py [--images DIR] [--no-build] [--target-mp N] [--classes a,b]

For each class (JPEG, 12 MP, mixed, PNG, WebP; taken from DIR by format and by the `x` size
prefix), a fresh `imgbatch serve` on a fresh SQLite file processes the class's files repeated to
about N megapixels (default 250) as one CSV; the clock runs from `POST /api/upload` to the status
poll that sees a final status. Right after, on the same multiset and inputs in memory: the
libvips loop and the Pillow loop of bench/run.py (decode, flatten onto white, JPEG q50 with
optimised Huffman tables, one process per core). Output bytes and PSNR of the first pass are
compared with Pillow's per image (bench/run.py's measure_size_quality).

Prints a markdown table and writes it to bench/results/classes.md.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: origin, service, reference pools)
from run import log  # noqa: E402

# name, goal against libvips (issue 19), which files
CLASSES = [
    ("jpeg", 1.5, lambda i: i.format == "JPEG"),
    ("12mp", 1.5, lambda i: i.klass == "XL"),
    ("mixed", 1.3, lambda i: True),
    ("png", 1.2, lambda i: i.format == "PNG"),
    ("webp", 1.0, lambda i: i.format == "WEBP"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=Path, default=run.DEFAULT_IMAGES)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--target-mp", type=float, default=250.0)
    ap.add_argument("--classes", default=",".join(c for c, _, _ in CLASSES))
    ap.add_argument("--out", type=Path, default=run.BENCH / "results" / "classes.md")
    args = ap.parse_args()
    if not run.vips_available():
        sys.exit("bench: pyvips is not importable; run: pip install pyvips pyvips-binary")
    binary = run.binary_path() if args.no_build else run.build([])
    images = run.load_images(args.images)
    wanted = args.classes.split(",")
    rows = []
    pillow_cache: dict = {}
    with tempfile.TemporaryDirectory(prefix="imgbatch-classes-") as t, run.Origin(images) as origin:
        tmp = Path(t)
        for name, goal, pick in CLASSES:
            if name not in wanted:
                continue
            subset = [i for i in images if pick(i)]
            if not subset:
                log(f"{name}: no files in {args.images}")
                continue
            set_mp = sum(i.pixels for i in subset) / 1e6
            reps = max(1, math.ceil(args.target_mp / set_mp - 1e-9))
            with run.fresh_database("sqlite", tmp, run.DEFAULT_PG) as db_url:
                with run.Service(binary, db_url, tmp, label=f"imgbatch-{name}") as svc:
                    tp, final = run.measure_throughput(svc, origin, subset, reps,
                                                       max(120.0, set_mp * reps), tag="r")
                    size = run.measure_size_quality(svc, origin, subset, final, pillow_cache)
            vips = run.vips_reference(subset, reps)
            pil = run.pillow_reference(subset, reps)
            log(f"{name}: imgbatch {tp['mps']:.1f} MP/s, libvips {vips['mps']:.1f}, "
                f"Pillow {pil['mps']:.1f}")
            rows.append((name, goal, len(subset), tp, vips, pil, size))
    lines = [
        f"bench/classes.py, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
        f"Pillow {run.PIL.__version__}, libvips {run.vips_available()}, one run, SQLite",
        "",
        "| class | files x reps, MP | imgbatch MP/s | libvips MP/s | vs libvips | goal | "
        "Pillow MP/s | vs Pillow | peak RSS MB | bytes / Pillow | ΔPSNR dB | failed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, goal, n, tp, vips, pil, size in rows:
        r = tp["mps"] / vips["mps"]
        lines.append(
            f"| {name} | {n} x {tp['images'] // n}, {tp['mp']:.0f} | {tp['mps']:.1f} | "
            f"{vips['mps']:.1f} | **{r:.2f}x** | {goal:.1f} {'met' if r >= goal else 'missed'} | "
            f"{pil['mps']:.1f} | {tp['mps'] / pil['mps']:.2f}x | {tp['hwm_mb']:.0f} | "
            f"{size['ratio']:.3f} | {size['dpsnr']:+.2f} | {len(tp['failed'])} |")
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
