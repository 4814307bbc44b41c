#!/usr/bin/env python3
"""Calibrates the JPEG-scale to WebP-quality mapping that `format=webp` and `format=auto` use.

    python3 bench/webp_mapping.py [--images DIR] [--classes s,m] [--jobs N] [--out FILE]

For each photo of the chosen size classes (decoded, alpha flattened onto white) and each JPEG
quality q of the grid, the target is the SSIMULACRA2 score (PyPI `ssimulacra2`) of
libjpeg-turbo at q with optimised Huffman tables (Pillow `quality=q, optimize=True`), which is
what imgbatch's JPEG encoder makes (same tables, same DCT, bytes within 1%). libwebp (Pillow,
`method=4`, as the service) is run over a grid of its own qualities; the WebP quality reaching
the target score is interpolated per image along its curve (linear in score between grid
points), and the median over the images is the mapping's value at q. The script also prints
the bytes WebP needs at that score against JPEG's, per q, which is what `auto` decides on.

Standard library plus Pillow and ssimulacra2.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import statistics
import sys
from pathlib import Path

from PIL import Image, ImageOps

try:
    from ssimulacra2 import compute_ssimulacra2
except ImportError:  # pragma: no cover
    sys.exit("pip install ssimulacra2")

JPEG_QS = [20, 30, 40, 50, 60, 70, 80, 90, 95]
WEBP_QS = list(range(10, 101, 5))


def flatten(im: Image.Image) -> Image.Image:
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        bg.alpha_composite(rgba)
        return bg.convert("RGB")
    return im.convert("RGB")


def score(ref: bytes, data: bytes) -> float:
    """SSIMULACRA2 of `data` against `ref` (a lossless PNG of the source), both encoded files."""
    return float(compute_ssimulacra2(io.BytesIO(ref), io.BytesIO(data)))


def encode(img: Image.Image, fmt: str, q: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=q, optimize=True)
    else:
        img.save(buf, "WEBP", quality=q, method=4)
    return buf.getvalue()


def interpolate(curve: list[tuple[float, float, float]], target: float) -> tuple[float, float]:
    """(quality, bytes) where the curve of (quality, score, bytes) reaches `target`."""
    curve = sorted(curve)
    if target <= curve[0][1]:
        return curve[0][0], curve[0][2]
    for (q0, s0, b0), (q1, s1, b1) in zip(curve, curve[1:]):
        if s0 <= target <= s1 and s1 > s0:
            t = (target - s0) / (s1 - s0)
            return q0 + t * (q1 - q0), b0 * (b1 / b0) ** t
    return curve[-1][0], curve[-1][2]


def calibrate(p: Path) -> tuple[str, dict[int, tuple[float, float]]]:
    """For one image: per JPEG quality, (the WebP quality at JPEG's score, WebP/JPEG bytes)."""
    with Image.open(p) as im:
        img = flatten(im)
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    ref = buf.getvalue()
    webp = []
    for wq in WEBP_QS:
        data = encode(img, "WEBP", wq)
        webp.append((float(wq), score(ref, data), float(len(data))))
    points = {}
    for q in JPEG_QS:
        data = encode(img, "JPEG", q)
        wq, wbytes = interpolate(webp, score(ref, data))
        points[q] = (wq, wbytes / len(data))
    return p.name, points


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=Path, default=Path("/work/shared/bench-images"))
    ap.add_argument("--classes", default="s,m")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--jobs", type=int, default=1, help="images scored at once")
    args = ap.parse_args()
    classes = tuple(args.classes.split(","))
    paths = sorted(p for p in args.images.iterdir()
                   if p.suffix.lower() in (".jpg", ".png", ".webp") and p.name.startswith(classes))
    per_q: dict[int, list[tuple[float, float]]] = {q: [] for q in JPEG_QS}
    with multiprocessing.Pool(args.jobs) as pool:
        for name, points in pool.imap(calibrate, paths):
            for q, point in points.items():
                per_q[q].append(point)
            print(f"{name}: " + ", ".join(f"q{q}→{points[q][0]:.0f}" for q in JPEG_QS),
                  file=sys.stderr, flush=True)
    lines = [f"{len(paths)} images ({args.classes}); WebP quality (method 4) reaching "
             "libjpeg-turbo's SSIMULACRA2 at each JPEG quality:", "",
             "| JPEG q | WebP q, median | WebP q, quartiles | WebP bytes / JPEG bytes, median |",
             "|---|---|---|---|"]
    for q in JPEG_QS:
        wqs = sorted(w for w, _ in per_q[q])
        ratios = [r for _, r in per_q[q]]
        qs = statistics.quantiles(wqs, n=4) if len(wqs) > 1 else [wqs[0]] * 3
        lines.append(f"| {q} | {statistics.median(wqs):.1f} | {qs[0]:.1f}–{qs[2]:.1f} | "
                     f"{statistics.median(ratios):.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
