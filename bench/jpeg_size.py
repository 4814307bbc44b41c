#!/usr/bin/env python3
"""JPEG bytes at equal perceived quality (SSIMULACRA2): imgbatch against libjpeg-turbo, mozjpeg
and jpegli (issue 20's benchmark).

    python3 bench/jpeg_size.py [--no-build] [--images DIR] [--classes S,M] [--target 50]
                               [--qualities 30,40,50,60,70,80] [--encoders a,b,...]

For every image of the chosen size classes (default S and M: twelve photos of 0.3-1.3 MP,
JPEG, PNG with and without alpha, WebP): the reference is the input decoded by Pillow,
EXIF-transposed, converted to sRGB when it embeds another ICC profile, alpha flattened onto
white. Each encoder turns the reference into a JPEG at each quality of the list; imgbatch gets
the original file through its HTTP API (`POST /api/upload?quality=Q`, a fresh service on
SQLite) as a user would. Each output is decoded by Pillow and scored against the reference
with SSIMULACRA2 (PyPI `ssimulacra2`, a numpy implementation of the metric).

Per image, the target score is libjpeg-turbo's (Pillow `quality=T, optimize=True`) at the
target quality T. Each encoder's bytes at that score are interpolated along its own curve
(log bytes linear in score between the two qualities around it; outside its range the curve's
nearest segment is extended) and divided by libjpeg-turbo's bytes at T. The table gives the
mean of those ratios and its range, and each encoder's score at the same setting T minus
libjpeg-turbo's (mean and worst image): what a user gets for the same number.

Encoders (names for --encoders):
  turbo              Pillow (libjpeg-turbo), optimised Huffman tables: the reference
  imgbatch           the service, default settings (`--effort N`: with IMGBATCH_EFFORT=N)
  mozjpeg            libvips (PyPI pyvips-binary, mozjpeg-capable): trellis quantisation,
                     quant_table=3, progressive with optimised scans, overshoot deringing
  mozjpeg-trellis    the same with trellis quantisation only
  mozjpeg-table3     the same with quant_table=3 only
  mozjpeg-prog       the same with progressive and optimised scans only
  mozjpeg-tableN     libvips with quant_table=N (0-8) only: which base table suits the metric
  jpegli             PyPI pyjpegli

Needs: pip install Pillow numpy requests pyvips pyvips-binary ssimulacra2 pyjpegli.
Prints a markdown table and writes it to bench/results/jpeg_size.md.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: origin, service, images)
from run import log  # noqa: E402

ENCODERS = ["turbo", "imgbatch", "mozjpeg", "mozjpeg-trellis", "mozjpeg-table3", "mozjpeg-prog",
            "jpegli"]
VIPS_OPTIONS = {
    "mozjpeg": dict(trellis_quant=True, quant_table=3, interlace=True, optimize_scans=True,
                    overshoot_deringing=True),
    "mozjpeg-trellis": dict(trellis_quant=True),
    "mozjpeg-table3": dict(quant_table=3),
    "mozjpeg-prog": dict(interlace=True, optimize_scans=True),
}


def reference(img: run.InputImage) -> np.ndarray:
    """The pixels every encoder starts from (and every output is scored against)."""
    with Image.open(io.BytesIO(img.data)) as im:
        im.load()
        icc = im.info.get("icc_profile")
        if icc and im.mode in ("RGB", "RGBA"):
            try:
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                dst = ImageCms.createProfile("sRGB")
                im = ImageCms.profileToProfile(im, src, dst, outputMode=im.mode)
            except (ImageCms.PyCMSError, OSError) as e:
                log(f"{img.name}: profile not applied ({e})")
        return np.asarray(run.flatten(im))


def vips_options(name: str) -> dict | None:
    if name in VIPS_OPTIONS:
        return VIPS_OPTIONS[name]
    if name.startswith("mozjpeg-table") and name[13:].isdigit() and int(name[13:]) <= 8:
        return dict(quant_table=int(name[13:]))
    return None


def encode(name: str, rgb: np.ndarray, q: int) -> bytes:
    h, w, _ = rgb.shape
    if name == "turbo":
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=q, optimize=True)
        return buf.getvalue()
    if vips_options(name) is not None:
        import pyvips
        im = pyvips.Image.new_from_memory(np.ascontiguousarray(rgb).tobytes(), w, h, 3, "uchar")
        return im.jpegsave_buffer(Q=q, optimize_coding=True, keep=0, **vips_options(name))
    if name == "jpegli":
        import pyjpegli
        return pyjpegli.encode(np.ascontiguousarray(rgb).tobytes(), w, h, quality=q)
    raise ValueError(name)


def score(ref_png: bytes, jpeg: bytes) -> float:
    import ssimulacra2
    return float(ssimulacra2.compute_ssimulacra2(io.BytesIO(ref_png), io.BytesIO(jpeg)))


def imgbatch_outputs(binary: Path, images: list[run.InputImage], qualities: list[int],
                     tmp: Path) -> dict[tuple[str, int], bytes]:
    """Every image at every quality, through one fresh service, one upload per quality."""
    out = {}
    with run.Origin(images) as origin, run.fresh_database("sqlite", tmp, run.DEFAULT_PG) as db:
        with run.Service(binary, db, tmp, label="imgbatch-size") as svc:
            for q in qualities:
                rows = [(f"size q{q} {img.name}", [origin.url(img.name, f"q={q}")])
                        for img in images]
                body, ctype = run.multipart_csv(run.csv_text(rows))
                r = run.requests.post(f"{svc.base}/api/upload?quality={q}", data=body,
                                      headers={"Content-Type": ctype}, timeout=120)
                if r.status_code != 200:
                    raise run.BenchError(f"upload answered {r.status_code}: {r.text[:300]}")
                final = svc.wait_settled(r.json()["requestId"], timeout=300)
                by_url = {im["inputImageUrl"]: im for p in final["products"] for im in p["images"]}
                for img in images:
                    entry = by_url.get(origin.url(img.name, f"q={q}"))
                    if not entry or not entry.get("outputImageUrl"):
                        raise run.BenchError(f"{img.name} q{q}: no output ({entry})")
                    got = svc.session.get(entry["outputImageUrl"], timeout=60)
                    got.raise_for_status()
                    out[(img.name, q)] = got.content
    return out


def at_score(curve: list[tuple[float, int]], target: float) -> float:
    """Bytes at `target` on a (score, bytes) curve: log bytes linear in score."""
    pts = sorted(curve)
    lo, hi = pts[0], pts[1]
    for a, b in zip(pts, pts[1:]):
        lo, hi = a, b
        if b[0] >= target:
            break
    if hi[0] == lo[0]:
        return float(lo[1])
    t = (target - lo[0]) / (hi[0] - lo[0])
    return math.exp(math.log(lo[1]) + t * (math.log(hi[1]) - math.log(lo[1])))


def _job(args):
    name, enc, q, ref_png, jpeg = args
    return name, enc, q, len(jpeg), score(ref_png, jpeg)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=Path, default=run.DEFAULT_IMAGES)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--classes", default="S,M")
    ap.add_argument("--target", type=int, default=50)
    ap.add_argument("--qualities", default="30,40,50,60,70,80")
    ap.add_argument("--encoders", default=",".join(ENCODERS))
    ap.add_argument("--out", type=Path, default=run.BENCH / "results" / "jpeg_size.md")
    ap.add_argument("--effort", type=int, default=None,
                    help="IMGBATCH_EFFORT for the service (default: its own default)")
    ap.add_argument("--raw", type=Path, default=None,
                    help="also write every (image, encoder, quality, bytes, score) as JSON")
    args = ap.parse_args()
    if args.effort is not None:
        os.environ["IMGBATCH_EFFORT"] = str(args.effort)
    qualities = sorted({int(q) for q in args.qualities.split(",")} | {args.target})
    encoders = [e for e in args.encoders.split(",") if e]
    if "turbo" not in encoders:
        encoders.insert(0, "turbo")
    unknown = [e for e in encoders if e not in ENCODERS and vips_options(e) is None]
    if unknown:
        sys.exit(f"bench: unknown encoders {unknown}; known: {ENCODERS}")
    classes = {c.strip().upper() for c in args.classes.split(",")}
    images = [i for i in run.load_images(args.images) if i.klass in classes]
    if not images:
        sys.exit(f"bench: no images of classes {sorted(classes)} in {args.images}")
    log(f"{len(images)} images, qualities {qualities}, encoders {encoders}")

    refs = {img.name: reference(img) for img in images}
    ref_png = {}
    for name, rgb in refs.items():
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "PNG", compress_level=1)
        ref_png[name] = buf.getvalue()
    outputs: dict[tuple[str, str, int], bytes] = {}
    if "imgbatch" in encoders:
        binary = run.binary_path() if args.no_build else run.build([])
        with tempfile.TemporaryDirectory(prefix="imgbatch-size-") as t:
            for (name, q), data in imgbatch_outputs(binary, images, qualities, Path(t)).items():
                outputs[(name, "imgbatch", q)] = data
    for enc in encoders:
        if enc == "imgbatch":
            continue
        for name, rgb in refs.items():
            for q in qualities:
                outputs[(name, enc, q)] = encode(enc, rgb, q)
    log(f"scoring {len(outputs)} outputs with SSIMULACRA2 on {os.cpu_count()} processes")
    t0 = time.perf_counter()
    results: dict[tuple[str, str], list[tuple[int, int, float]]] = {}
    jobs = [(n, e, q, ref_png[n], data) for (n, e, q), data in outputs.items()]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        for name, enc, q, size, s in pool.map(_job, jobs, chunksize=2):
            results.setdefault((name, enc), []).append((q, size, s))
    log(f"scored in {time.perf_counter() - t0:.0f} s")
    if args.raw:
        import json
        args.raw.write_text(json.dumps(
            [{"image": n, "encoder": e, "quality": q, "bytes": b, "score": s}
             for (n, e), points in sorted(results.items()) for q, b, s in sorted(points)],
            indent=0))

    rows, per_image = [], []
    for enc in encoders:
        ratios, deltas = [], []
        for img in images:
            base = {q: (b, s) for q, b, s in results[(img.name, "turbo")]}
            mine = {q: (b, s) for q, b, s in results[(img.name, enc)]}
            target_bytes, target_score = base[args.target]
            curve = [(s, b) for b, s in mine.values()]
            ratio = at_score(curve, target_score) / target_bytes
            delta = mine[args.target][1] - target_score
            ratios.append(ratio)
            deltas.append(delta)
            per_image.append((enc, img.name, ratio, mine[args.target][0] / target_bytes,
                              target_score, delta))
        rows.append((enc, float(np.mean(ratios)), min(ratios), max(ratios),
                     float(np.mean(deltas)), min(deltas)))

    lines = [
        f"bench/jpeg_size.py, {time.strftime('%Y-%m-%d %H:%M')}, {len(images)} images "
        f"(classes {','.join(sorted(classes))}), target: libjpeg-turbo q{args.target} optimised, "
        f"qualities {','.join(map(str, qualities))}, SSIMULACRA2 (PyPI ssimulacra2)",
        "",
        f"| encoder | bytes at turbo q{args.target}'s score (mean) | range | "
        f"score at q{args.target} − turbo's (mean) | worst image |",
        "|---|---|---|---|---|",
    ]
    for enc, mean, lo, hi, dmean, dworst in rows:
        lines.append(f"| {enc} | **{mean:.3f}** | {lo:.3f}-{hi:.3f} | {dmean:+.2f} | {dworst:+.2f} |")
    lines += ["", "Per image: bytes ratio at equal score; bytes ratio at the same setting; "
              "turbo's score; score difference at the same setting.", "",
              "| encoder | image | at equal score | at same setting | turbo score | Δscore |",
              "|---|---|---|---|---|---|"]
    for enc, name, ratio, same, ts, d in per_image:
        if enc != "turbo":
            lines.append(f"| {enc} | {name} | {ratio:.3f} | {same:.3f} | {ts:.1f} | {d:+.2f} |")
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
