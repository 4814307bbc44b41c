"""The quality mapping of IMGBATCH_EFFORT=1: for each quality setting, the coarsest setting of
the perceptual table at which imgbatch's outputs still score (SSIMULACRA2) at least what
libjpeg-turbo's do at that setting, on average over the corpus by `--mean-margin` and on every
image within `--worst-margin`.

    python3 bench/jpeg_size.py --no-build --effort 1 --encoders turbo,imgbatch \\
        --qualities 20,25,...,95 --raw calib.json       # with the mapping set to identity
    python3 bench/calibrate_effort.py calib.json

Scores between measured settings are interpolated linearly per image. Prints the anchors for
`perceptual_quality` in src/jpeg/tables.rs and, per setting, the mean and worst score difference
and the mean bytes ratio the mapping gives.
"""
import argparse
import json
from collections import defaultdict


def interp(points, q):
    """Linear interpolation of a sorted [(quality, value)] list at q (clamped to its range)."""
    if q <= points[0][0]:
        return points[0][1]
    for (q0, v0), (q1, v1) in zip(points, points[1:]):
        if q <= q1:
            return v0 + (v1 - v0) * (q - q0) / (q1 - q0)
    return points[-1][1]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("raw", help="jpeg_size.py --raw output")
    ap.add_argument("--mean-margin", type=float, default=0.25)
    ap.add_argument("--worst-margin", type=float, default=-0.5)
    args = ap.parse_args()
    curves = defaultdict(list)
    for r in json.load(open(args.raw)):
        curves[(r["image"], r["encoder"])].append((r["quality"], r["score"], r["bytes"]))
    images = sorted({img for img, _ in curves})
    turbo = {i: sorted(curves[(i, "turbo")]) for i in images}
    ours = {i: sorted(curves[(i, "imgbatch")]) for i in images}
    qualities = [q for q, _, _ in turbo[images[0]]]
    print("| setting | table setting | mean Δscore | worst Δscore | mean bytes / turbo's |")
    print("|---|---|---|---|---|")
    anchors = []
    for q in qualities:
        # The coarsest table setting inside the measured range (outside it the curves are not
        # known) that meets both margins; scores rise with the setting, so the first one found
        # from the bottom.
        best = None
        for scaled in range(qualities[0], qualities[-1] + 1):
            deltas, ratios = [], []
            for i in images:
                t_score = interp([(a, s) for a, s, _ in turbo[i]], q)
                t_bytes = interp([(a, b) for a, _, b in turbo[i]], q)
                o_score = interp([(a, s) for a, s, _ in ours[i]], scaled)
                o_bytes = interp([(a, b) for a, _, b in ours[i]], scaled)
                deltas.append(o_score - t_score)
                ratios.append(o_bytes / t_bytes)
            mean, worst = sum(deltas) / len(deltas), min(deltas)
            if mean >= args.mean_margin and worst >= args.worst_margin:
                best = (scaled, mean, worst, sum(ratios) / len(ratios))
                break
        if best is None:
            best = (100, float("nan"), float("nan"), float("nan"))
        anchors.append((q, best[0]))
        print(f"| {q} | {best[0]} | {best[1]:+.2f} | {best[2]:+.2f} | {best[3]:.3f} |")
    print()
    print("anchors:", ", ".join(f"({q}, {s})" for q, s in anchors))


main()
