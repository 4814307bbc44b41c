#!/usr/bin/env python3
"""imgbatch benchmark harness: one command, one table.

    python3 bench/run.py [--images DIR] [--quick] [--no-build] [--feature NAME] [--db sqlite,postgres]

Builds the release binary, serves DIR from a local image origin, starts `imgbatch serve` against
each database (a fresh SQLite file; Postgres when reachable) and measures throughput against a
bare Pillow (libjpeg-turbo) loop, peak RSS, upload latency, status endpoint latency (wrk) and
output size / PSNR against Pillow. Prints a markdown table and writes bench/results/latest.md.
See bench/README.md for what each figure means and the bounds.

Standard library plus Pillow, numpy and requests only.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import io
import json
import math
import multiprocessing
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

try:
    import numpy as np
    import PIL
    import requests
    from PIL import Image, ImageOps
    from PIL import features as pil_features
except ImportError as e:  # pragma: no cover - environment problem
    sys.exit(f"bench: missing Python package ({e}); run: pip install Pillow numpy requests")

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
DEFAULT_IMAGES = Path("/work/shared/bench-images")
DEFAULT_PG = "postgres://postgres@127.0.0.1:5432/postgres"
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
FINAL = {"completed", "completed_with_errors", "failed"}
CLASSES = {"s": "S", "m": "M", "l": "L", "x": "XL"}
CLASS_ORDER = ["S", "M", "L", "XL", "?"]

# Bounds (see bench/README.md).
UPLOAD_LATENCY_BOUND_MS = 300.0
STATUS_RPS_BOUND = 5000.0
STATUS_P99_BOUND_MS = 20.0
BYTES_RATIO_BOUND = 1.0
PSNR_DELTA_BOUND_DB = -0.2
# Throughput against the Pillow loop on the same images: the default pure-Rust build, the
# `turbo` feature build, and the JPEG-only run of the default build (the DCT-domain fast path).
THROUGHPUT_BOUND = 0.7
THROUGHPUT_BOUND_TURBO = 1.0
JPEG_THROUGHPUT_BOUND = 1.3
RSS_BOUND_MB = 200.0
# The memory phase: a batch of this many 12-megapixel images, default settings, fresh process.
MEMORY_BATCH = 40
# The zip phase: the bundle (outputs.zip) of a request of this many images, downloaded while the
# process's RSS is sampled; it must stay within this much of the RSS before the download.
ZIP_IMAGES = 10_000
ZIP_RSS_BOUND_MB = 100.0
PHASES = ("throughput", "jpeg", "status", "upload", "memory", "zip")

QUALITY = 50


class BenchError(Exception):
    """A failure that ends the run with a clear message."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def size_class(name: str) -> str:
    return CLASSES.get(name[:1].lower(), "?")


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


class InputImage:
    def __init__(self, path: Path):
        self.path = path
        self.name = path.name
        self.data = path.read_bytes()
        with Image.open(io.BytesIO(self.data)) as im:
            # Read before exif_transpose, whose copy has no format.
            self.format = im.format or path.suffix.lstrip(".").upper()
            im = ImageOps.exif_transpose(im)
            self.width, self.height = im.size
        self.pixels = self.width * self.height
        self.klass = size_class(self.name)


def load_images(folder: Path) -> list[InputImage]:
    if not folder.is_dir():
        raise BenchError(f"image folder {folder} does not exist")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not paths:
        raise BenchError(f"no images in {folder}")
    out = []
    for p in paths:
        try:
            out.append(InputImage(p))
        except Exception as e:  # noqa: BLE001 - report and skip unreadable files
            log(f"skipping {p.name}: Pillow cannot read it ({e})")
    if not out:
        raise BenchError(f"no readable images in {folder}")
    return out


def flatten(im: Image.Image) -> Image.Image:
    """EXIF-transpose, then RGB with any transparency composited onto white."""
    im = ImageOps.exif_transpose(im)
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode == "P" and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        bg.alpha_composite(rgba)
        return bg.convert("RGB")
    return im.convert("RGB")


def pillow_encode(data: bytes) -> tuple[int, bytes]:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        rgb = flatten(im)
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=QUALITY, optimize=True)
    return rgb.width * rgb.height, buf.getvalue()


# --- multiprocessing reference: files are read into memory before the pool forks -------------
_REF_FILES: list[bytes] = []


def _ref_init() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the pool stops its workers with SIGTERM
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle


def _ref_noop(_: int) -> int:
    return 0


def _ref_work(i: int) -> tuple[int, int]:
    pixels, out = pillow_encode(_REF_FILES[i])
    return pixels, len(out)


def pillow_reference(images: list[InputImage], reps: int) -> dict:
    """Decode + flatten + encode q50 optimize=True for the same multiset, one process per core."""
    return pool_reference(images, reps, "Pillow reference", _ref_init, _ref_work, warm=False)


def pool_reference(images: list[InputImage], reps: int, phase: str, init, work, warm: bool) -> dict:
    """Runs `work` over the multiset on one process per core and times it; `warm` runs a few
    untimed first (a library that loads plugins on first use)."""
    global _REF_FILES
    _REF_FILES = [img.data for img in images]  # inherited by the forked workers (not timed)
    tasks = [i for _ in range(reps) for i in range(len(images))]
    procs = os.cpu_count() or 1
    wait_quiet(phase)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(procs, initializer=init) as pool:
        pool.map(_ref_noop, range(procs * 4))  # make sure every worker exists before timing
        if warm:
            pool.map(work, range(min(len(images), procs * 2)))
        t0 = time.perf_counter()
        results = list(pool.imap_unordered(work, tasks, chunksize=1))
        wall = time.perf_counter() - t0
    pixels = sum(p for p, _ in results)
    return {
        "images": len(tasks),
        "mp": pixels / 1e6,
        "wall": wall,
        "mps": pixels / 1e6 / wall,
        "ips": len(tasks) / wall,
        "procs": procs,
    }


# --- libvips reference (pyvips + pyvips-binary, libvips 8.18 with its own libjpeg-turbo and
# libwebp): the library a user would pick instead (sharp, imgproxy). Same multiset, same
# process count, inputs in memory before timing; one libvips thread per process.
def _vips_init() -> None:
    _ref_init()
    import pyvips  # noqa: F401  imported in the worker, after VIPS_CONCURRENCY is set


def _vips_work(i: int) -> tuple[int, int]:
    import pyvips
    im = pyvips.Image.new_from_buffer(_REF_FILES[i], "", access="sequential")
    if im.hasalpha():
        im = im.flatten(background=[255])
    # keep=0 (VIPS_FOREIGN_KEEP_NONE) is libvips 8.15+'s spelling of strip=True.
    out = im.jpegsave_buffer(Q=QUALITY, optimize_coding=True, keep=0)
    return im.width * im.height, len(out)


def vips_available() -> str | None:
    try:
        import pyvips
        return f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}"
    except Exception:  # noqa: BLE001  (not installed, or its library missing)
        return None


def vips_reference(images: list[InputImage], reps: int) -> dict:
    """The libvips loop: decode (sequential) + flatten + jpegsave Q50 optimize_coding, one
    process per core, VIPS_CONCURRENCY=1 in each (set before the workers fork)."""
    os.environ["VIPS_CONCURRENCY"] = "1"
    return pool_reference(images, reps, "libvips reference", _vips_init, _vips_work, warm=True)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        raise BenchError(f"PSNR of differently shaped images {a.shape} vs {b.shape}")
    d = a.astype(np.int32) - b.astype(np.int32)
    mse = float(np.square(d, dtype=np.int64).sum()) / d.size
    if mse == 0:
        return float("inf")
    return 10.0 * math.log10(255.0 * 255.0 / mse)


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPU time spent busy over `seconds` (from /proc/stat), 0..1."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v), idle
    try:
        t0, i0 = snap()
        time.sleep(seconds)
        t1, i1 = snap()
    except OSError:
        return float("nan")
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


QUIET = {"max_wait": 60.0, "threshold": 0.25}
BUSY_LOG: list[tuple[str, float]] = []


def wait_quiet(phase: str) -> None:
    """Before a timed phase: wait (bounded) until the machine is mostly idle, and note the load.

    The bench shares 2 cores with anything else running (cargo builds, tests); a busy machine
    halves the figures. The busy share measured just before the phase goes into the report.
    """
    deadline = time.monotonic() + QUIET["max_wait"]
    busy = cpu_busy()
    warned = False
    while busy > QUIET["threshold"] and time.monotonic() < deadline:
        if not warned:
            log(f"machine {busy:.0%} busy before {phase}; waiting up to {QUIET['max_wait']:.0f} s "
                f"for it to settle")
            warned = True
        busy = cpu_busy(2.0)
    if busy > QUIET["threshold"]:
        log(f"warning: machine still {busy:.0%} busy; measuring {phase} anyway")
    BUSY_LOG.append((phase, busy))


# --------------------------------------------------------------------------------------------
# Image origin
# --------------------------------------------------------------------------------------------


class Origin:
    """ThreadingHTTPServer on 127.0.0.1 serving the images (from memory; query strings ignored)."""

    def __init__(self, images: list[InputImage]):
        files = {"/" + img.name: img.data for img in images}
        ctypes = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
                  ".webp": "image/webp", ".gif": "image/gif", ".bmp": "image/bmp",
                  ".tif": "image/tiff", ".tiff": "image/tiff"}
        counter = collections.Counter()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self, body: bool) -> None:
                path = self.path.split("?", 1)[0]
                data = files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                counter["requests"] += 1
                self.send_response(200)
                self.send_header("Content-Type", ctypes.get(Path(path).suffix.lower(),
                                                            "application/octet-stream"))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                self._serve(True)

            def do_HEAD(self):  # noqa: N802
                self._serve(False)

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.counter = counter
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def url(self, name: str, query: str = "") -> str:
        return f"{self.base}/{name}" + (f"?{query}" if query else "")


# --------------------------------------------------------------------------------------------
# Databases
# --------------------------------------------------------------------------------------------


def postgres_reachable(pg_url: str) -> tuple[bool, str]:
    if not shutil.which("psql"):
        return False, "psql not installed"
    try:
        r = subprocess.run(["psql", pg_url, "-Atc", "select 1"], capture_output=True,
                           text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False, "psql timed out"
    if r.returncode != 0 or r.stdout.strip() != "1":
        return False, (r.stderr.strip().splitlines() or ["psql failed"])[-1]
    return True, ""


def pg_db_url(pg_url: str, dbname: str) -> str:
    base, _, _ = pg_url.rpartition("/")
    return f"{base}/{dbname}"


@contextlib.contextmanager
def fresh_database(kind: str, tmp: Path, pg_url: str):
    """Yields a DATABASE_URL of an empty database; drops / removes it afterwards."""
    if kind == "sqlite":
        d = Path(tempfile.mkdtemp(prefix="db-", dir=tmp))
        try:
            yield f"sqlite://{d}/db.sqlite"
        finally:
            shutil.rmtree(d, ignore_errors=True)
        return
    name = f"imgbatch_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    r = subprocess.run(["psql", pg_url, "-v", "ON_ERROR_STOP=1", "-qc", f'create database "{name}"'],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise BenchError(f"cannot create Postgres database {name}: {r.stderr.strip()}")
    try:
        yield pg_db_url(pg_url, name)
    finally:
        r = subprocess.run(["psql", pg_url, "-qc", f'drop database if exists "{name}" with (force)'],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            log(f"warning: could not drop Postgres database {name}: {r.stderr.strip()}")


# --------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------


class Service:
    def __init__(self, binary: Path, database_url: str, tmp: Path, extra_env: dict | None = None,
                 label: str = "imgbatch"):
        self.binary = binary
        self.label = label
        self.storage = Path(tempfile.mkdtemp(prefix="storage-", dir=tmp))
        self.log_path = tmp / f"{label}-{uuid.uuid4().hex[:6]}.log"
        env = dict(os.environ)
        env.update({
            "DATABASE_URL": database_url,
            "IMGBATCH_BIND": "127.0.0.1:0",  # the kernel picks a free port; read it from the log
            "IMGBATCH_STORAGE": str(self.storage),
            "IMGBATCH_ALLOW_PRIVATE_NETWORKS": "true",
            "IMGBATCH_MAX_ROWS": "20000",
            "IMGBATCH_LOG_FORMAT": "json",
            "IMGBATCH_QUALITY": str(QUALITY),
            # The per-client rate limit (default 100 req/s) would turn wrk's load into 429s; the
            # bench measures the endpoints, not the limiter. Unknown to older builds: harmless.
            "IMGBATCH_RATE_LIMIT": "0",
        })
        env.pop("IMGBATCH_API_KEYS", None)
        env.pop("IMGBATCH_PUBLIC_URL", None)
        env.update(extra_env or {})
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.base = ""
        self.session = requests.Session()
        self.rss_max_kb = 0
        self.log_problems: collections.Counter = collections.Counter()

    def __enter__(self):
        self._logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(self.binary), "serve"], env=self.env, stdout=self._logf,
                                     stderr=subprocess.STDOUT, cwd=str(self.storage.parent))
        try:
            self._wait_ready(timeout=60)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
        shutil.rmtree(self.storage, ignore_errors=True)

    def tail(self, n: int = 25) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"{self.label} exited early with code {self.proc.returncode}; "
                             f"last log lines:\n{self.tail()}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        addr = None
        while addr is None:
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{self.label} did not log its address within {timeout:.0f}s; "
                                 f"last log lines:\n{self.tail()}")
            for line in self.log_path.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                a = rec.get("address") or (rec.get("fields") or {}).get("address")
                if a:
                    addr = a
                    break
            else:
                time.sleep(0.05)
        self.base = f"http://{addr}"
        while True:
            self.check_alive()
            try:
                if self.session.get(self.base + "/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"{self.label} not ready within {timeout:.0f}s; last log lines:\n"
                                 f"{self.tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 40) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.label} ignored SIGTERM for {timeout:.0f}s; killing it")
                self.proc.kill()
                self.proc.wait(timeout=10)
            if self.proc.returncode not in (0, -signal.SIGTERM):
                log(f"warning: {self.label} exited with code {self.proc.returncode} after SIGTERM;"
                    f" last log lines:\n{self.tail(10)}")
        self._logf.close()
        self.session.close()
        self.proc = None
        self.scan_log()

    def scan_log(self) -> None:
        """Counts WARN/ERROR log lines by message, for the report's problem list."""
        counts: collections.Counter = collections.Counter()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            level = str(rec.get("level", "")).upper()
            if level in ("WARN", "ERROR"):
                msg = rec.get("message") or (rec.get("fields") or {}).get("message") or ""
                err = rec.get("error") or (rec.get("fields") or {}).get("error") or ""
                counts[f"{level} {msg}" + (f" ({str(err)[:120]})" if err else "")] += 1
        self.log_problems = counts

    # --- /proc ---
    def proc_status_kb(self, key: str) -> int:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except (OSError, ValueError, AttributeError):
            pass
        return 0

    def sample_rss(self) -> None:
        self.rss_max_kb = max(self.rss_max_kb, self.proc_status_kb("VmRSS"))

    # --- API ---
    def upload(self, body: bytes, content_type: str, timeout: float = 120) -> tuple[str, float]:
        self.check_alive()
        t0 = time.perf_counter()
        r = requests.post(self.base + "/api/upload", data=body,
                          headers={"Content-Type": content_type}, timeout=timeout)
        elapsed = time.perf_counter() - t0
        if r.status_code != 200:
            raise BenchError(f"upload answered {r.status_code}: {r.text[:500]}")
        return r.json()["requestId"], elapsed

    def status(self, request_id: str, timeout: float = 30) -> dict:
        r = self.session.get(f"{self.base}/api/status/{request_id}", timeout=timeout)
        if r.status_code != 200:
            raise BenchError(f"status answered {r.status_code}: {r.text[:500]}")
        return r.json()

    def wait_settled(self, request_id: str, timeout: float, interval: float = 0.1,
                     on_poll=None) -> dict:
        deadline = time.monotonic() + timeout
        last_log = time.monotonic()
        while True:
            self.check_alive()
            self.sample_rss()
            body = self.status(request_id)
            if body.get("status") in FINAL:
                return body
            now = time.monotonic()
            if on_poll:
                on_poll(body)
            if now - last_log > 10:
                p = body.get("progress", {})
                log(f"  … {p.get('completedImages')}/{p.get('totalImages')} done, "
                    f"{p.get('failedImages')} failed")
                last_log = now
            if now > deadline:
                p = body.get("progress", {})
                raise BenchError(f"request {request_id} not settled after {timeout:.0f}s "
                                 f"(status {body.get('status')}, progress {p}); last log lines:\n"
                                 f"{self.tail()}")
            time.sleep(interval)


def multipart_csv(csv_text: str) -> tuple[bytes, str]:
    boundary = "----imgbatchbench" + uuid.uuid4().hex
    body = (f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="bench.csv"\r\n'
            "Content-Type: text/csv\r\n\r\n").encode() + csv_text.encode() + \
        f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def csv_text(rows: list[tuple[str, list[str]]]) -> str:
    lines = ["S. No.,Product Name,Input Image Urls"]
    for i, (name, urls) in enumerate(rows, 1):
        lines.append(f'{i},{name},"{", ".join(urls)}"')
    return "\n".join(lines) + "\n"


def failed_images(body: dict) -> list[str]:
    out = []
    for p in body.get("products", []):
        for im in p.get("images", []):
            if im.get("status") == "failed" or im.get("error"):
                out.append(f"{im.get('inputImageUrl')}: {im.get('error')}")
    return out


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def measure_throughput(svc: Service, origin: Origin, images: list[InputImage], reps: int,
                       timeout: float, tag: str = "r") -> tuple[dict, dict]:
    rows = []
    for r in range(1, reps + 1):
        for img in images:
            # The tag keeps each run's URLs distinct, so no run is served by another's duplicate.
            rows.append((f"bench {tag}{r} {img.name}", [origin.url(img.name, f"{tag}={r}")]))
    body, ctype = multipart_csv(csv_text(rows))
    total_pixels = sum(img.pixels for img in images) * reps
    n = len(images) * reps
    wait_quiet(f"throughput {tag} ({svc.label})")
    log(f"throughput ({tag}): {n} images, {total_pixels / 1e6:.0f} MP")
    t0 = time.perf_counter()
    rid, _ = svc.upload(body, ctype)
    final = svc.wait_settled(rid, timeout=timeout)
    wall = time.perf_counter() - t0
    svc.sample_rss()
    hwm = svc.proc_status_kb("VmHWM")
    fails = failed_images(final)
    return {
        "request_id": rid,
        "images": n,
        "mp": total_pixels / 1e6,
        "wall": wall,
        "ips": n / wall,
        "mps": total_pixels / 1e6 / wall,
        "status": final.get("status"),
        "failed": fails,
        "hwm_mb": hwm / 1024,
        "rss_max_mb": svc.rss_max_kb / 1024,
    }, final


def measure_memory(svc: Service, origin: Origin, images: list[InputImage], timeout: float) -> dict:
    """Peak RSS of a fresh process while it works through a batch of 12-megapixel images."""
    xl = [i for i in images if i.pixels >= 8_000_000]
    if not xl:
        return {"missing": "no image of 8 MP or more in the folder"}
    rows = [(f"memory {k} {xl[k % len(xl)].name}", [origin.url(xl[k % len(xl)].name, f"m={k}")])
            for k in range(MEMORY_BATCH)]
    body, ctype = multipart_csv(csv_text(rows))
    idle_kb = svc.proc_status_kb("VmHWM")
    log(f"memory: {MEMORY_BATCH} images of {', '.join(i.name for i in xl)}")
    t0 = time.perf_counter()
    rid, _ = svc.upload(body, ctype)
    final = svc.wait_settled(rid, timeout=timeout, interval=0.05)
    wall = time.perf_counter() - t0
    svc.sample_rss()
    return {
        "images": MEMORY_BATCH,
        "kinds": len(xl),
        "wall": wall,
        "idle_mb": idle_kb / 1024,
        "hwm_mb": svc.proc_status_kb("VmHWM") / 1024,
        "rss_max_mb": svc.rss_max_kb / 1024,
        "status": final.get("status"),
        "failed": failed_images(final),
    }


def measure_zip(svc: Service, origin: Origin, images: list[InputImage], timeout: float) -> dict:
    """Peak RSS above idle while outputs.zip of a ZIP_IMAGES-image request is downloaded: the
    smallest image of the folder, each URL made distinct by a query, so every image has an
    output of its own. Checks the archive (entries, zipfile's CRC test) after the download."""
    import zipfile
    small = min(images, key=lambda i: i.pixels)
    rows = [(f"zip {k}", [origin.url(small.name, f"z={k}")]) for k in range(ZIP_IMAGES)]
    body, ctype = multipart_csv(csv_text(rows))
    log(f"zip: {ZIP_IMAGES} images of {small.name}; processing")
    rid, _ = svc.upload(body, ctype)
    final = svc.wait_settled(rid, timeout=timeout, interval=0.5)
    time.sleep(2)
    idle_kb = svc.proc_status_kb("VmRSS")
    peak = [idle_kb]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], svc.proc_status_kb("VmRSS"))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = Path(tempfile.mkstemp(suffix=".zip")[1])
    t0 = time.perf_counter()
    first = None
    total = 0
    try:
        with requests.get(f"{svc.base}/api/requests/{rid}/outputs.zip", stream=True,
                          timeout=120) as r, open(out, "wb") as f:
            r.raise_for_status()
            for chunk in r.iter_content(64 * 1024):
                if first is None:
                    first = time.perf_counter() - t0
                total += len(chunk)
                f.write(chunk)
        wall = time.perf_counter() - t0
    finally:
        stop.set()
        sampler.join()
    with zipfile.ZipFile(out) as z:
        entries = len(z.namelist())
        bad = z.testzip()
    out.unlink()
    return {
        "images": ZIP_IMAGES,
        "status": final.get("status"),
        "entries": entries,
        "bad_entry": bad,
        "mb": total / 1e6,
        "wall": wall,
        "first_byte_ms": (first or 0) * 1000,
        "idle_mb": idle_kb / 1024,
        "peak_mb": peak[0] / 1024,
        "above_idle_mb": (peak[0] - idle_kb) / 1024,
    }


def measure_size_quality(svc: Service, origin: Origin, images: list[InputImage], final: dict,
                         pillow_cache: dict) -> dict:
    """Compare the service's output of each distinct input (first repetition) with Pillow's."""
    by_input = {}
    for p in final.get("products", []):
        for im in p.get("images", []):
            by_input[im.get("inputImageUrl")] = im
    per_image = []
    for img in images:
        entry = by_input.get(origin.url(img.name, "r=1"))
        if not entry or not entry.get("outputImageUrl"):
            per_image.append({"name": img.name, "klass": img.klass, "error":
                              (entry or {}).get("error") or "no output"})
            continue
        r = svc.session.get(entry["outputImageUrl"], timeout=60)
        if r.status_code != 200:
            per_image.append({"name": img.name, "klass": img.klass,
                              "error": f"output download answered {r.status_code}"})
            continue
        svc_bytes = r.content
        if img.name not in pillow_cache:
            with Image.open(io.BytesIO(img.data)) as im:
                im.load()
                ref_pixels = np.asarray(flatten(im))
            _, pil_bytes = pillow_encode(img.data)
            with Image.open(io.BytesIO(pil_bytes)) as im:
                pil_psnr = psnr(ref_pixels, np.asarray(im.convert("RGB")))
            # Secondary reference: libjpeg-turbo with its standard Huffman tables.
            plain = io.BytesIO()
            Image.fromarray(ref_pixels).save(plain, "JPEG", quality=QUALITY)
            pillow_cache[img.name] = (ref_pixels, len(pil_bytes), pil_psnr, len(plain.getvalue()))
        ref_pixels, pil_len, pil_psnr, plain_len = pillow_cache[img.name]
        try:
            with Image.open(io.BytesIO(svc_bytes)) as im:
                fmt = im.format
                svc_pixels = np.asarray(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001
            per_image.append({"name": img.name, "klass": img.klass,
                              "error": f"output is not decodable by Pillow: {e}"})
            continue
        if svc_pixels.shape != ref_pixels.shape:
            per_image.append({"name": img.name, "klass": img.klass, "error":
                              f"output is {svc_pixels.shape[1]}x{svc_pixels.shape[0]}, input "
                              f"{ref_pixels.shape[1]}x{ref_pixels.shape[0]}"})
            continue
        svc_psnr = psnr(ref_pixels, svc_pixels)
        per_image.append({
            "name": img.name, "klass": img.klass, "mp": img.pixels / 1e6, "format": fmt,
            "svc_bytes": len(svc_bytes), "pil_bytes": pil_len,
            "ratio": len(svc_bytes) / pil_len, "ratio_plain": len(svc_bytes) / plain_len,
            "svc_psnr": svc_psnr, "pil_psnr": pil_psnr, "dpsnr": svc_psnr - pil_psnr,
        })
    ok = [x for x in per_image if "error" not in x]
    return {
        "per_image": per_image,
        "ok": len(ok),
        "errors": [f"{x['name']}: {x['error']}" for x in per_image if "error" in x],
        "ratio": statistics.fmean(x["ratio"] for x in ok) if ok else float("nan"),
        "ratio_plain": statistics.fmean(x["ratio_plain"] for x in ok) if ok else float("nan"),
        "dpsnr": statistics.fmean(x["dpsnr"] for x in ok) if ok else float("nan"),
        "svc_psnr": statistics.fmean(x["svc_psnr"] for x in ok) if ok else float("nan"),
        "pil_psnr": statistics.fmean(x["pil_psnr"] for x in ok) if ok else float("nan"),
        "worst_ratio": max(ok, key=lambda x: x["ratio"]) if ok else None,
        "worst_dpsnr": min(ok, key=lambda x: x["dpsnr"]) if ok else None,
    }


def parse_wrk_duration_ms(s: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", s.strip())
    if not m:
        raise ValueError(s)
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def measure_status(svc: Service, origin: Origin, images: list[InputImage], timeout: float,
                   wrk_seconds: int, small_seconds: int = 5) -> dict:
    small = sorted(images, key=lambda i: i.pixels)[:6]
    rows = []
    k = 0
    for p in range(1, 101):
        urls = []
        for _ in range(3):
            img = small[k % len(small)]
            urls.append(origin.url(img.name, f"s={k}"))
            k += 1
        rows.append((f"status product {p}", urls))
    body, ctype = multipart_csv(csv_text(rows))
    rid, _ = svc.upload(body, ctype)
    final = svc.wait_settled(rid, timeout=timeout)
    url = f"{svc.base}/api/status/{rid}"
    size = len(svc.session.get(url, timeout=30).content)
    res = {"request_id": rid, "settled": final.get("status"), "body_bytes": size,
           "failed": failed_images(final)}
    # One client, one request at a time: the latency of a single status read.
    seq = []
    for _ in range(30):
        t0 = time.perf_counter()
        svc.session.get(url, timeout=30).raise_for_status()
        seq.append((time.perf_counter() - t0) * 1000)
    res["seq_ms"] = statistics.median(seq)
    if not shutil.which("wrk"):
        res["missing"] = "wrk not installed (apt-get install -y wrk)"
        return res
    wait_quiet(f"status wrk ({svc.label})")
    res.update(run_wrk(svc, url, wrk_seconds))
    if "missing" not in res and small_seconds > 0:
        # Info only: a 1-image request separates per-request cost from per-row cost.
        body, ctype = multipart_csv(csv_text([("status small", [origin.url(small[0].name, "one")])]))
        rid1, _ = svc.upload(body, ctype)
        svc.wait_settled(rid1, timeout=120)
        url1 = f"{svc.base}/api/status/{rid1}"
        res["small"] = run_wrk(svc, url1, small_seconds)
        res["small"]["body_bytes"] = len(svc.session.get(url1, timeout=30).content)
    return res


def run_wrk(svc: Service, url: str, seconds: int) -> dict:
    res: dict = {}
    cmd = ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", url]
    log("status: " + " ".join(cmd))
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        res["missing"] = "wrk timed out"
        return res
    svc.check_alive()
    out = r.stdout
    res["raw"] = out
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s*99%\s+(\S+)", out, re.M)
    p50 = re.search(r"^\s*50%\s+(\S+)", out, re.M)
    if r.returncode != 0 or not m or not p99:
        res["missing"] = f"could not parse wrk output (exit {r.returncode}): {out[-300:]}"
        return res
    res["rps_all"] = float(m.group(1))
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    res["p99_ms"] = parse_wrk_duration_ms(p99.group(1))
    res["p50_ms"] = parse_wrk_duration_ms(p50.group(1)) if p50 else float("nan")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non2xx"] = int(non2xx.group(1)) if non2xx else 0
    # Only successful answers count towards req/s.
    if total:
        secs = parse_wrk_duration_ms(total.group(2) + total.group(3)) / 1000
        res["rps"] = (int(total.group(1)) - res["non2xx"]) / secs
    else:
        res["rps"] = res["rps_all"] if not res["non2xx"] else 0.0
    sock = re.search(r"Socket errors:(.*)", out)
    res["socket_errors"] = sock.group(1).strip() if sock else ""
    return res


def measure_upload_latency(svc: Service, origin: Origin, images: list[InputImage],
                           reps: int = 5) -> dict:
    rows = []
    k = 0
    for p in range(1, 10_001):
        urls = []
        for _ in range(3):
            urls.append(origin.url(images[k % len(images)].name, f"u={k}"))
            k += 1
        rows.append((f"latency product {p}", urls))
    body, ctype = multipart_csv(csv_text(rows))
    log(f"upload latency: 10000 rows x 3 URLs, {len(body) / 1e6:.1f} MB, 1 warm-up + {reps} timed")
    svc.upload(body, ctype)  # warm-up, not timed
    wait_quiet(f"upload latency ({svc.label})")
    times = []
    for _ in range(reps):
        _, t = svc.upload(body, ctype)
        times.append(t * 1000)
    return {"times_ms": times, "median_ms": statistics.median(times), "max_ms": max(times),
            "body_mb": len(body) / 1e6}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("PASS" if ok else "**FAIL**")


def fmt(x: float, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:,.{nd}f}"


def build_report(meta: dict, results: list[dict], skipped: list[str]) -> str:
    L = []
    L.append("# imgbatch benchmark")
    L.append("")
    L.append(f"{meta['when']} · {meta['mode']} · {meta['host']} · "
             f"{meta['images']} images ({meta['set_mp']:.1f} MP a set) from `{meta['dir']}` · "
             f"Pillow {meta['pillow']} (libjpeg-turbo {meta['turbo']}) · build: {meta['build']}")
    L.append("")
    L.append("| figure | db | value | reference | ratio | bound | result |")
    L.append("|---|---|---|---|---|---|---|")
    for res in results:
        db = res["db"]
        if "error" in res:
            L.append(f"| run | {db} | error: {res['error'].splitlines()[0][:200]} | | | | **FAIL** |")
        tp, ref = res.get("throughput"), res.get("reference")
        if tp:
            ratio = tp["mps"] / ref["mps"] if ref else None
            errs = len(tp["failed"])
            note = f", **{errs} failed**" if errs else ""
            bound = THROUGHPUT_BOUND_TURBO if meta["turbo_build"] else THROUGHPUT_BOUND
            L.append(f"| throughput, MP/s ({tp['images']} images, {tp['mp']:.0f} MP, "
                     f"{tp['wall']:.1f} s{note}) | {db} | {fmt(tp['mps'])} | "
                     f"{'Pillow ×' + str(ref['procs']) + ' procs ' + fmt(ref['mps']) if ref else 'n/a'}"
                     f" | {fmt(ratio, 2) if ratio else 'n/a'} | ≥ {bound:.1f} | "
                     f"{verdict(bool(ratio) and ratio >= bound and not errs and tp['status'] == 'completed')} |")
            vips = res.get("vips")
            if vips:
                L.append(f"| throughput against libvips {meta.get('vips', '')} ×{vips['procs']} procs "
                         f"(VIPS_CONCURRENCY=1) | {db} | {fmt(tp['mps'])} | {fmt(vips['mps'])} | "
                         f"{fmt(tp['mps'] / vips['mps'], 2)} | info | — |")
            L.append(f"| throughput, images/s | {db} | {fmt(tp['ips'])} | "
                     f"{fmt(ref['ips']) if ref else 'n/a'} | "
                     f"{fmt(tp['ips'] / ref['ips'], 2) if ref else 'n/a'} | info | — |")
            L.append(f"| peak RSS during the throughput run, MB (VmHWM; max sampled VmRSS) | {db} | {fmt(tp['hwm_mb'], 0)}"
                     f" ({fmt(tp['rss_max_mb'], 0)}) | — | — | info | — |")
        jp = res.get("jpeg")
        if jp:
            tp, ref = jp["service"], jp["reference"]
            ratio = tp["mps"] / ref["mps"]
            errs = len(tp["failed"])
            note = f", **{errs} failed**" if errs else ""
            bound = "info" if meta["turbo_build"] else f"≥ {JPEG_THROUGHPUT_BOUND:.1f}"
            ok = not errs and tp["status"] == "completed"
            L.append(f"| throughput on the JPEGs only, MP/s ({tp['images']} images, "
                     f"{tp['mp']:.0f} MP, {tp['wall']:.1f} s{note}) | {db} | {fmt(tp['mps'])} | "
                     f"Pillow ×{ref['procs']} procs {fmt(ref['mps'])} | {fmt(ratio, 2)} | {bound} | "
                     f"{verdict(ok and ratio >= JPEG_THROUGHPUT_BOUND) if not meta['turbo_build'] else verdict(ok) if not ok else '—'} |")
            if jp.get("vips"):
                v = jp["vips"]
                L.append(f"| JPEGs only against libvips ×{v['procs']} procs | {db} | {fmt(tp['mps'])} | "
                         f"{fmt(v['mps'])} | {fmt(tp['mps'] / v['mps'], 2)} | info | — |")
        mem = res.get("memory")
        if mem:
            if "missing" in mem:
                L.append(f"| peak RSS, 12 MP batch | {db} | {mem['missing']} | | | | — |")
            else:
                errs = len(mem["failed"])
                note = f", **{errs} failed**" if errs else ""
                L.append(f"| peak RSS, MB: fresh process, default settings, {mem['images']} "
                         f"images of 12 MP ({mem['kinds']} files), {mem['wall']:.1f} s{note}; "
                         f"idle {fmt(mem['idle_mb'], 0)} MB | {db} | {fmt(mem['hwm_mb'], 0)} | — | — | "
                         f"≤ {RSS_BOUND_MB:.0f} | "
                         f"{verdict(mem['hwm_mb'] <= RSS_BOUND_MB and not errs and mem['status'] == 'completed')} |")
        up = res.get("upload")
        if up:
            L.append(f"| upload latency, ms (10,000 rows × 3 URLs, {up['body_mb']:.1f} MB; "
                     f"median / max of {len(up['times_ms'])}) | {db} | {fmt(up['median_ms'], 0)} / "
                     f"{fmt(up['max_ms'], 0)} | — | — | max ≤ {UPLOAD_LATENCY_BOUND_MS:.0f} | "
                     f"{verdict(up['max_ms'] <= UPLOAD_LATENCY_BOUND_MS)} |")
        st = res.get("status")
        if st:
            if "missing" in st:
                L.append(f"| status, req/s and p99 (wrk -t2 -c32) | {db} | {st['missing']} | | | "
                         f"≥ {STATUS_RPS_BOUND:.0f}; ≤ {STATUS_P99_BOUND_MS:.0f} ms | — |")
            else:
                errs = ""
                if st["non2xx"] or st["socket_errors"]:
                    errs = (f"; **non-2xx {st['non2xx']}** (not counted), socket errors "
                            f"{st['socket_errors'] or 0}")
                ok_extra = not st["non2xx"]
                L.append(f"| status, req/s (wrk -t2 -c32 -d{meta['wrk_s']}s; 100 products × 3 "
                         f"images, body {st['body_bytes'] / 1024:.0f} KiB{errs}) | {db} | "
                         f"{fmt(st['rps'], 0)} | — | — | ≥ {STATUS_RPS_BOUND:.0f} | "
                         f"{verdict(st['rps'] >= STATUS_RPS_BOUND and ok_extra)} |")
                L.append(f"| status, p99 latency, ms (p50 {fmt(st['p50_ms'], 2)}; one client "
                         f"sequential median {fmt(st['seq_ms'], 2)}) | {db} | "
                         f"{fmt(st['p99_ms'], 2)} | — | — | ≤ {STATUS_P99_BOUND_MS:.0f} | "
                         f"{verdict(st['p99_ms'] <= STATUS_P99_BOUND_MS and ok_extra)} |")
            sm = st.get("small")
            if sm and "missing" not in sm:
                L.append(f"| status of a 1-image request, req/s / p99 ms (body "
                         f"{sm['body_bytes']} B; wrk -t2 -c32 -d{meta['small_wrk_s']}s"
                         f"{'; non-2xx ' + str(sm['non2xx']) if sm['non2xx'] else ''}) | {db} | "
                         f"{fmt(sm['rps'], 0)} / {fmt(sm['p99_ms'], 2)} | — | — | info | — |")
        sq = res.get("size")
        if sq:
            errs = f"; **{len(sq['errors'])} errors**" if sq["errors"] else ""
            ok_all = not sq["errors"]
            w = sq["worst_ratio"]
            L.append(f"| output bytes, mean of per-image service/Pillow (q{QUALITY} optimize=True; "
                     f"{sq['ok']} images{errs}; worst {w['name'] if w else '-'} "
                     f"{fmt(w['ratio'], 3) if w else ''}; vs Pillow without optimize "
                     f"{fmt(sq['ratio_plain'], 3)}) | {db} | {fmt(sq['ratio'], 3)} | 1.000 | "
                     f"{fmt(sq['ratio'], 3)} | ≤ {BYTES_RATIO_BOUND:.1f} | "
                     f"{verdict(sq['ratio'] <= BYTES_RATIO_BOUND and ok_all)} |")
            w = sq["worst_dpsnr"]
            L.append(f"| PSNR vs input, dB, mean service − Pillow (service {fmt(sq['svc_psnr'], 2)},"
                     f" Pillow {fmt(sq['pil_psnr'], 2)}; worst {w['name'] if w else '-'} "
                     f"{fmt(w['dpsnr'], 2) if w else ''}) | {db} | {fmt(sq['dpsnr'], 2)} | 0.00 | — "
                     f"| ≥ {PSNR_DELTA_BOUND_DB:.1f} | "
                     f"{verdict(sq['dpsnr'] >= PSNR_DELTA_BOUND_DB and ok_all)} |")
        z = res.get("zip")
        if z:
            ok = (z["status"] == "completed" and z["entries"] == z["images"] + 1
                  and z["bad_entry"] is None)
            L.append(f"| outputs.zip of {z['images']:,} images, RSS above idle while downloading, MB "
                     f"(idle {fmt(z['idle_mb'], 0)}, peak {fmt(z['peak_mb'], 0)}; {z['entries']:,} "
                     f"entries, {fmt(z['mb'], 0)} MB in {fmt(z['wall'])} s, first byte "
                     f"{fmt(z['first_byte_ms'], 0)} ms) | {db} | {fmt(z['above_idle_mb'])} | — | — | "
                     f"≤ {ZIP_RSS_BOUND_MB:.0f} | "
                     f"{verdict(ok and z['above_idle_mb'] <= ZIP_RSS_BOUND_MB)} |")
    for s in skipped:
        L.append(f"| run | {s} | | | | | — |")
    L.append("")
    # Per-class breakdown from the first database that produced size figures.
    sq_res = next((r for r in results if r.get("size")), None)
    if sq_res:
        per = [x for x in sq_res["size"]["per_image"] if "error" not in x]
        L.append(f"Size and quality by class ({sq_res['db']}; throughput-independent):")
        L.append("")
        L.append("| class | images | MP each | service KB | Pillow KB | bytes ratio (mean) | "
                 "ratio vs no-optimize | service PSNR | Pillow PSNR | ΔPSNR dB | bound met |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for c in CLASS_ORDER:
            xs = [x for x in per if x["klass"] == c]
            if not xs:
                continue
            ratio = statistics.fmean(x["ratio"] for x in xs)
            d = statistics.fmean(x["dpsnr"] for x in xs)
            L.append(f"| {c} | {len(xs)} | {statistics.fmean(x['mp'] for x in xs):.2f} | "
                     f"{sum(x['svc_bytes'] for x in xs) / 1024:,.0f} | "
                     f"{sum(x['pil_bytes'] for x in xs) / 1024:,.0f} | {ratio:.3f} | "
                     f"{statistics.fmean(x['ratio_plain'] for x in xs):.3f} | "
                     f"{statistics.fmean(x['svc_psnr'] for x in xs):.2f} | "
                     f"{statistics.fmean(x['pil_psnr'] for x in xs):.2f} | {d:+.2f} | "
                     f"{'yes' if ratio <= BYTES_RATIO_BOUND and d >= PSNR_DELTA_BOUND_DB else 'no'} |")
        L.append("")
        L.append("<details><summary>Per image</summary>")
        L.append("")
        L.append("| image | MP | service KB | Pillow KB | ratio | service PSNR | Pillow PSNR | ΔPSNR |")
        L.append("|---|---|---|---|---|---|---|---|")
        for x in sq_res["size"]["per_image"]:
            if "error" in x:
                L.append(f"| {x['name']} | error: {x['error']} | | | | | | |")
                continue
            L.append(f"| {x['name']} | {x['mp']:.2f} | {x['svc_bytes'] / 1024:,.0f} | "
                     f"{x['pil_bytes'] / 1024:,.0f} | {x['ratio']:.3f} | {x['svc_psnr']:.2f} | "
                     f"{x['pil_psnr']:.2f} | {x['dpsnr']:+.2f} |")
        L.append("")
        L.append("</details>")
        L.append("")
        fmts = collections.defaultdict(list)
        for x in per:
            fmts[Path(x["name"]).suffix.lower().lstrip(".").replace("jpeg", "jpg")].append(x)
        L.append("By input format: " + "; ".join(
            f"{k} ({len(v)}): bytes {statistics.fmean(x['ratio'] for x in v):.3f}, "
            f"ΔPSNR {statistics.fmean(x['dpsnr'] for x in v):+.2f} dB" for k, v in sorted(fmts.items())))
        L.append("")
    if BUSY_LOG:
        busy = [f"{p} {b:.0%}" for p, b in BUSY_LOG]
        L.append("CPU busy (whole machine, 1 s) just before each timed phase: " + "; ".join(busy)
                 + ". Above ~25 % something else was running; treat that phase's figures as "
                   "pessimistic.")
        L.append("")
    notes = []
    for res in results:
        tp = res.get("throughput")
        if tp and tp["failed"]:
            notes.append(f"{res['db']}: failed images: " + "; ".join(tp["failed"][:5]))
        sq = res.get("size")
        if sq and sq["errors"]:
            notes.append(f"{res['db']}: size/quality errors: " + "; ".join(sq["errors"][:5]))
        if "error" in res:
            notes.append(f"{res['db']}: {res['error']}")
        lp = res.get("log_problems")
        if lp:
            notes.append(f"{res['db']}: service logged " + "; ".join(
                f"{n}× `{m}`" for m, n in lp.most_common(6)))
    if notes:
        L.append("Problems:")
        L.append("")
        L.extend(f"- {n}" for n in notes)
        L.append("")
    return "\n".join(L)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def build(features: list[str]) -> Path:
    cmd = ["cargo", "build", "--release"]
    if features:
        cmd += ["--features", ",".join(features)]
    log("building: " + " ".join(cmd))
    try:
        r = subprocess.run(cmd, cwd=REPO, timeout=3600)
    except subprocess.TimeoutExpired:
        raise BenchError("cargo build timed out after an hour") from None
    if r.returncode != 0:
        raise BenchError(f"cargo build failed (exit {r.returncode})")
    return binary_path()


def binary_path() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "release" / "imgbatch"


def run_database(kind: str, args, binary: Path, tmp: Path, origin: Origin,
                 images: list[InputImage], reps: int, pillow_cache: dict) -> dict:
    res: dict = {"db": kind}
    set_mp = sum(i.pixels for i in images) / 1e6
    phases = args.phases
    try:
        if {"throughput", "jpeg", "status"} & phases:
            with fresh_database(kind, tmp, args.pg_url) as db_url:
                log(f"[{kind}] starting service (workers on)")
                with Service(binary, db_url, tmp, label=f"imgbatch-{kind}") as svc:
                    log(f"[{kind}] service at {svc.base}")
                    if "throughput" in phases:
                        # Generous: 1 MP/s would be pathological.
                        tp_timeout = max(120.0, set_mp * reps / 1.0)
                        tp, final = measure_throughput(svc, origin, images, reps, tp_timeout)
                        res["throughput"] = tp
                        log(f"[{kind}] service: {tp['mps']:.1f} MP/s, {tp['ips']:.1f} images/s, "
                            f"{tp['wall']:.1f} s, status {tp['status']}, "
                            f"VmHWM {tp['hwm_mb']:.0f} MB")
                        log(f"[{kind}] reference: Pillow, {os.cpu_count()} processes")
                        ref = pillow_reference(images, reps)
                        res["reference"] = ref
                        log(f"[{kind}] reference: {ref['mps']:.1f} MP/s, {ref['wall']:.1f} s")
                        if vips_available():
                            res["vips"] = vips_reference(images, reps)
                            log(f"[{kind}] libvips: {res['vips']['mps']:.1f} MP/s")
                        log(f"[{kind}] size and quality")
                        res["size"] = measure_size_quality(svc, origin, images, final,
                                                           pillow_cache)
                        log(f"[{kind}] bytes ratio {res['size']['ratio']:.3f}, "
                            f"ΔPSNR {res['size']['dpsnr']:+.2f} dB")
                    jpegs = [i for i in images if i.format == "JPEG"]
                    if "jpeg" in phases and jpegs:
                        jmp = sum(i.pixels for i in jpegs) / 1e6
                        jreps = max(1, math.ceil(args.target_mp / jmp - 1e-9))
                        tp, _ = measure_throughput(svc, origin, jpegs, jreps,
                                                   max(120.0, jmp * jreps), tag="j")
                        ref = pillow_reference(jpegs, jreps)
                        res["jpeg"] = {"service": tp, "reference": ref}
                        if vips_available():
                            res["jpeg"]["vips"] = vips_reference(jpegs, jreps)
                        log(f"[{kind}] JPEG only: {tp['mps']:.1f} MP/s vs Pillow "
                            f"{ref['mps']:.1f} MP/s = {tp['mps'] / ref['mps']:.2f}x")
                    if "status" in phases:
                        log(f"[{kind}] status endpoint")
                        res["status"] = measure_status(svc, origin, images, timeout=300,
                                                       wrk_seconds=args.wrk_seconds,
                                                       small_seconds=args.small_wrk_seconds)
                        st = res["status"]
                        if "rps" in st:
                            log(f"[{kind}] status: {st['rps']:.0f} req/s, p99 {st['p99_ms']:.2f} ms")
                res.setdefault("log_problems", collections.Counter()).update(svc.log_problems)
        if "memory" in phases:
            with fresh_database(kind, tmp, args.pg_url) as db_url:
                log(f"[{kind}] starting a fresh service (default settings) for peak memory")
                with Service(binary, db_url, tmp, label=f"imgbatch-{kind}-mem") as svc:
                    res["memory"] = measure_memory(svc, origin, images, timeout=600)
                    m = res["memory"]
                    if "hwm_mb" in m:
                        log(f"[{kind}] memory: VmHWM {m['hwm_mb']:.0f} MB over {m['images']} "
                            f"images in {m['wall']:.1f} s")
                res.setdefault("log_problems", collections.Counter()).update(svc.log_problems)
        if "zip" in phases:
            with fresh_database(kind, tmp, args.pg_url) as db_url:
                log(f"[{kind}] starting a fresh service for the bundle download")
                with Service(binary, db_url, tmp, label=f"imgbatch-{kind}-zip") as svc:
                    res["zip"] = measure_zip(svc, origin, images, timeout=1800)
                    z = res["zip"]
                    log(f"[{kind}] zip: {z['entries']} entries, {z['mb']:.0f} MB in "
                        f"{z['wall']:.1f} s, first byte {z['first_byte_ms']:.0f} ms, RSS "
                        f"{z['idle_mb']:.0f} → {z['peak_mb']:.0f} MB "
                        f"(+{z['above_idle_mb']:.1f})")
                res.setdefault("log_problems", collections.Counter()).update(svc.log_problems)
        if "upload" in phases:
            with fresh_database(kind, tmp, args.pg_url) as db_url:
                log(f"[{kind}] starting service with IMGBATCH_WORKERS=0 for upload latency")
                with Service(binary, db_url, tmp, extra_env={"IMGBATCH_WORKERS": "0"},
                             label=f"imgbatch-{kind}-api") as svc:
                    res["upload"] = measure_upload_latency(svc, origin, images)
                    up = res["upload"]
                    log(f"[{kind}] upload: median {up['median_ms']:.0f} ms, "
                        f"max {up['max_ms']:.0f} ms")
                res.setdefault("log_problems", collections.Counter()).update(svc.log_problems)
    except BenchError as e:
        log(f"[{kind}] ERROR: {e}")
        res["error"] = str(e)
    return res


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _sigterm)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="image folder")
    ap.add_argument("--quick", action="store_true", help="~60 MP throughput run (at least one pass over the images)")
    ap.add_argument("--no-build", action="store_true", help="use the existing release binary")
    ap.add_argument("--feature", action="append", default=[],
                    help="pass --features NAME to cargo build (repeatable)")
    ap.add_argument("--db", default="sqlite,postgres",
                    help="databases to run, comma-separated (default: sqlite,postgres)")
    ap.add_argument("--pg-url", default=os.environ.get("BENCH_POSTGRES_URL", DEFAULT_PG),
                    help=f"Postgres admin URL (default {DEFAULT_PG})")
    ap.add_argument("--target-mp", type=float, default=None,
                    help="megapixels for the throughput run (default 300, --quick 60)")
    ap.add_argument("--wrk-seconds", type=int, default=None, help="wrk duration (default 10)")
    ap.add_argument("--small-wrk-seconds", type=int, default=5,
                    help="wrk on a 1-image request too, info only (default 5; 0 skips)")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="before each timed phase, wait up to this many seconds for the machine "
                         "to be under 25%% busy (default 60; 0 disables)")
    ap.add_argument("--phases", default=",".join(PHASES),
                    help=f"phases to run, comma-separated (default: {','.join(PHASES)})")
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "latest.md",
                    help="where to write the markdown report")
    args = ap.parse_args()
    if args.target_mp is None:
        args.target_mp = 60.0 if args.quick else 300.0
    if args.wrk_seconds is None:
        args.wrk_seconds = 10
    QUIET["max_wait"] = max(0.0, args.quiet_wait)
    args.phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if args.phases - set(PHASES):
        ap.error(f"unknown phase(s) {sorted(args.phases - set(PHASES))}; known: {', '.join(PHASES)}")

    try:
        binary = binary_path() if args.no_build else build(args.feature)
        if not binary.exists():
            raise BenchError(f"{binary} does not exist (build it, or drop --no-build)")
        images = load_images(args.images)
        set_mp = sum(i.pixels for i in images) / 1e6
        reps = max(1, math.ceil(args.target_mp / set_mp - 1e-9))
        log(f"{len(images)} images, {set_mp:.1f} MP a set, {reps} repetition(s)")

        dbs = [d.strip() for d in args.db.split(",") if d.strip()]
        skipped = []
        if "postgres" in dbs:
            ok, why = postgres_reachable(args.pg_url)
            if not ok:
                log(f"Postgres not reachable at {args.pg_url}: {why}; skipping it")
                dbs.remove("postgres")
                skipped.append(f"postgres (skipped: not reachable — {why})")
        unknown = [d for d in dbs if d not in ("sqlite", "postgres")]
        if unknown:
            raise BenchError(f"unknown database(s) {unknown}")

        results = []
        pillow_cache: dict = {}
        tmp = Path(tempfile.mkdtemp(prefix="imgbatch-bench-"))
        try:
            with Origin(images) as origin:
                log(f"origin at {origin.base}")
                for kind in dbs:
                    results.append(run_database(kind, args, binary, tmp, origin, images, reps,
                                                pillow_cache))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

        meta = {
            "when": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "mode": "quick" if args.quick else "full",
            "host": f"{os.cpu_count()} cores, {platform.machine()}",
            "images": len(images),
            "set_mp": set_mp,
            "dir": args.images,
            "pillow": PIL.__version__,
            "turbo": pil_features.version("libjpeg_turbo") or "absent",
            "vips": vips_available() or "absent",
            "build": "release" + (f" --features {','.join(args.feature)}" if args.feature else "")
                     + (" (--no-build)" if args.no_build else ""),
            "turbo_build": "turbo" in args.feature,
            "wrk_s": args.wrk_seconds,
            "small_wrk_s": args.small_wrk_seconds,
        }
        report = build_report(meta, results, skipped)
        print(report)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")
        log(f"wrote {args.out}")
        return 1 if any("error" in r for r in results) or not results else 0
    except BenchError as e:
        log(f"ERROR: {e}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
