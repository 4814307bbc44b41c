#!/usr/bin/env python3
"""Per-upload options against the references a user would script instead (issue 17).

    python3 bench/options.py [--images DIR] [--no-build] [--rows box,webp] [--reps N]

Two rows, each from one fresh `imgbatch serve` (SQLite) and the references on the same files in
the same run, one process per core for every loop (as bench/run.py):

- **box**: the 12 MP photos (`x*` in DIR) bound to 1200x1200 (`maxWidth=1200&maxHeight=1200`,
  quality 50), against a Pillow loop of `thumbnail((1200, 1200))` (Pillow's own draft and
  reducing_gap shortcuts on) then `save(JPEG, quality=50, optimize=True)`, and a libvips loop of
  `thumbnail_buffer(1200, height=1200)` (its shrink-on-load) then `jpegsave_buffer(Q=50,
  optimize_coding=True, keep=0)`. MP are input megapixels on every side. The service's peak RSS
  is the fresh process's `VmHWM` after the run.
- **webp**: every image in DIR with `format=webp` (quality 50), against a Pillow loop of decode,
  flatten onto white, `save(WEBP, quality=Q, method=4)` where Q is the libwebp quality the
  service maps 50 to (src/compress/webp.rs), so both ask libwebp for the same thing.

Writes a markdown table to stdout and bench/results/options.md. Uses bench/run.py's origin,
service and pool machinery.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: origin, service, reference pool)
from run import Image, log  # noqa: E402

BOX = 1200
QUALITY = run.QUALITY


# The service's JPEG-scale to libwebp mapping (src/compress/webp.rs; measured by
# bench/webp_mapping.py), so that Pillow encodes at the same libwebp quality.
WEBP_MAPPING = [(0, 0.0), (20, 10.0), (30, 25.6), (40, 37.1), (50, 52.2), (60, 63.5),
                (70, 75.5), (80, 83.3), (90, 94.3), (95, 100.0), (100, 100.0)]


def webp_quality(q: int) -> float:
    q = min(100, max(1, q))
    for (j0, w0), (j1, w1) in zip(WEBP_MAPPING, WEBP_MAPPING[1:]):
        if q <= j1:
            return w0 + (w1 - w0) * (q - j0) / (j1 - j0)
    return 100.0


# --- reference workers (forked by run.pool_reference; inputs in run._REF_FILES) ---------------
def _pillow_thumb(i: int) -> tuple[int, int]:
    with Image.open(io.BytesIO(run._REF_FILES[i])) as im:
        pixels = im.width * im.height
        im.thumbnail((BOX, BOX))
        rgb = run.flatten(im)
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=QUALITY, optimize=True)
    return pixels, len(buf.getvalue())


def _vips_thumb(i: int) -> tuple[int, int]:
    import pyvips
    data = run._REF_FILES[i]
    head = pyvips.Image.new_from_buffer(data, "", access="sequential")
    pixels = head.width * head.height
    im = pyvips.Image.thumbnail_buffer(data, BOX, height=BOX)
    if im.hasalpha():
        im = im.flatten(background=[255])
    return pixels, len(im.jpegsave_buffer(Q=QUALITY, optimize_coding=True, keep=0))


def _pillow_webp(i: int) -> tuple[int, int]:
    with Image.open(io.BytesIO(run._REF_FILES[i])) as im:
        im.load()
        rgb = run.flatten(im)
    buf = io.BytesIO()
    rgb.save(buf, "WEBP", quality=webp_quality(QUALITY), method=4)
    return rgb.width * rgb.height, len(buf.getvalue())


def service_run(binary: Path, tmp: Path, origin, images, reps: int, query: str, tag: str,
                env: dict) -> dict:
    """One fresh service; one CSV of the images `reps` times, uploaded with `query`."""
    rows = [(f"opt {tag}{r} {img.name}", [origin.url(img.name, f"{tag}={r}")])
            for r in range(1, reps + 1) for img in images]
    body, ctype = run.multipart_csv(run.csv_text(rows))
    mp = sum(img.pixels for img in images) * reps / 1e6
    with run.fresh_database("sqlite", tmp, run.DEFAULT_PG) as db_url:
        with run.Service(binary, db_url, tmp, label=f"imgbatch-{tag}", extra_env=env) as svc:
            run.wait_quiet(f"service {tag}")
            t0 = time.perf_counter()
            r = run.requests.post(f"{svc.base}/api/upload?{query}", data=body,
                                  headers={"Content-Type": ctype}, timeout=120)
            if r.status_code != 200:
                raise run.BenchError(f"upload answered {r.status_code}: {r.text[:300]}")
            final = svc.wait_settled(r.json()["requestId"], timeout=max(120.0, mp))
            wall = time.perf_counter() - t0
            hwm = svc.proc_status_kb("VmHWM") / 1024
            failed = run.failed_images(final)
            outs = [im for p in final["products"] for im in p["images"]]
            return {
                "mps": mp / wall, "wall": wall, "images": len(rows), "mp": mp, "hwm_mb": hwm,
                "status": final["status"], "failed": failed,
                "bytes": sum(im.get("bytesOut") or 0 for im in outs),
                "formats": sorted({im.get("format") for im in outs}),
                "max_side": max(max(im.get("width") or 0, im.get("height") or 0) for im in outs),
            }


def ratio_row(name: str, svc: dict, refs: list[tuple[str, dict]]) -> str:
    cells = [f"{svc['mps']:.1f}"]
    for _, ref in refs:
        cells.append(f"{ref['mps']:.1f}")
        cells.append(f"**{svc['mps'] / ref['mps']:.2f}x**")
    return f"| {name} | " + " | ".join(cells) + f" | {svc['hwm_mb']:.0f} |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=Path, default=run.DEFAULT_IMAGES)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--rows", default="box,webp")
    ap.add_argument("--reps", type=int, default=0,
                    help="passes over the files (default: enough for ~150 MP)")
    ap.add_argument("--out", type=Path, default=run.BENCH / "results" / "options.md")
    ap.add_argument("--service-env", action="append", default=[], metavar="NAME=VALUE",
                    help="an environment variable for the service only (repeatable)")
    args = ap.parse_args()
    binary = run.binary_path() if args.no_build else run.build([])
    images = run.load_images(args.images)
    rows = set(args.rows.split(","))
    env = dict(e.split("=", 1) for e in args.service_env)
    lines = [
        f"bench/options.py, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
        f"Pillow {run.PIL.__version__}, libvips {run.vips_available() or 'absent'}",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="imgbatch-options-") as t, run.Origin(images) as origin:
        tmp = Path(t)
        if "box" in rows:
            big = [i for i in images if i.klass == "XL"]
            mp = sum(i.pixels for i in big) / 1e6
            reps = args.reps or max(1, math.ceil(150 / mp))
            svc = service_run(binary, tmp, origin, big, reps,
                              f"maxWidth={BOX}&maxHeight={BOX}&quality={QUALITY}", "box", env)
            log(f"box: service {svc['mps']:.1f} MP/s, VmHWM {svc['hwm_mb']:.0f} MB")
            refs = [("Pillow thumbnail", run.pool_reference(big, reps, "Pillow thumbnail",
                                                            run._ref_init, _pillow_thumb, False))]
            if run.vips_available():
                os.environ["VIPS_CONCURRENCY"] = "1"
                refs.append(("libvips thumbnail", run.pool_reference(
                    big, reps, "libvips thumbnail", run._vips_init, _vips_thumb, True)))
            lines += [
                f"12 MP photos bound to {BOX}x{BOX}, q{QUALITY}: {len(big)} files x {reps} "
                f"= {svc['images']} images, {svc['mp']:.0f} MP; service status {svc['status']}, "
                f"{len(svc['failed'])} failed, largest output side {svc['max_side']} px.",
                "",
                "| row | imgbatch MP/s | " + " | ".join(f"{n} MP/s | ratio" for n, _ in refs)
                + " | imgbatch peak RSS MB |",
                "|---|---|" + "---|---|" * len(refs) + "---|",
                ratio_row("12 MP → 1200 px", svc, refs),
                "",
            ]
        if "webp" in rows:
            mp = sum(i.pixels for i in images) / 1e6
            reps = args.reps or max(1, math.ceil(100 / mp))
            svc = service_run(binary, tmp, origin, images, reps, f"format=webp&quality={QUALITY}",
                              "webp", env)
            log(f"webp: service {svc['mps']:.1f} MP/s")
            ref = run.pool_reference(images, reps, "Pillow WebP", run._ref_init, _pillow_webp,
                                     False)
            one = [_pillow_webp_bytes(i) for i in range(len(images))]
            lines += [
                f"WebP output, q{QUALITY} (libwebp quality {webp_quality(QUALITY):g}, method 4 on "
                f"both sides): {len(images)} files x {reps} = {svc['images']} images, "
                f"{svc['mp']:.0f} MP; service status {svc['status']}, formats {svc['formats']}; "
                f"bytes per pass: imgbatch {svc['bytes'] / reps / 1e6:.2f} MB, Pillow "
                f"{sum(one) / 1e6:.2f} MB.",
                "",
                "| row | imgbatch MP/s | Pillow WebP MP/s | ratio | imgbatch peak RSS MB |",
                "|---|---|---|---|---|",
                ratio_row("WebP output", svc, [("Pillow WebP", ref)]),
                "",
            ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


def _pillow_webp_bytes(i: int) -> int:
    return _pillow_webp(i)[1]


if __name__ == "__main__":
    sys.exit(main())
