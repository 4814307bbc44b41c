#!/usr/bin/env python3
"""Issue 3's acceptance run: a CSV of 100 products with 3 images each, served by a local origin,
processed to the end on SQLite and on Postgres; prints images/s and the service's peak RSS, and
checks that every output URL downloads.

    python3 bench/hundred.py [--images DIR] [--no-build] [--db sqlite,postgres]
"""
import argparse, itertools, json, os, shutil, signal, subprocess, sys, tempfile, threading, time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "imgbatch")
PG = "postgres://postgres@127.0.0.1:5432/postgres"


def origin(folder):
    files = {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))
             if n.lower().endswith((".jpg", ".jpeg", ".png", ".webp"))}

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path.split("?")[0].lstrip("/"))
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, sorted(files)


def run(db_url, names, base, storage):
    env = dict(os.environ, DATABASE_URL=db_url, IMGBATCH_BIND="127.0.0.1:0", IMGBATCH_STORAGE=storage,
               IMGBATCH_ALLOW_PRIVATE_NETWORKS="true", IMGBATCH_LOG_FORMAT="json", IMGBATCH_RATE_LIMIT="0")
    p = subprocess.Popen([BIN, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addr = json.loads(p.stdout.readline())["address"]
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    api = f"http://{addr}"
    for _ in range(100):
        try:
            urllib.request.urlopen(api + "/readyz", timeout=2)
            break
        except Exception:
            time.sleep(0.1)
    cycle = itertools.cycle(names)
    rows = ["S. No.,Product Name,Input Image Urls"]
    for i in range(1, 101):
        urls = ",".join(f"{base}/{next(cycle)}?p={i}&k={k}" for k in range(3))
        rows.append(f'{i},Product {i},"{urls}"')
    csv = ("\n".join(rows) + "\n").encode()
    boundary = "imgbatchbench"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.csv\"\r\n"
            f"Content-Type: text/csv\r\n\r\n").encode() + csv + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(api + "/api/upload", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    started = time.time()
    rid = json.load(urllib.request.urlopen(req))["requestId"]
    peak = 0
    while True:
        st = json.load(urllib.request.urlopen(f"{api}/api/status/{rid}"))
        try:
            rss = [l for l in open(f"/proc/{p.pid}/status") if l.startswith("VmHWM")][0]
            peak = max(peak, int(rss.split()[1]) // 1024)
        except OSError:
            pass
        if st["status"] in ("completed", "completed_with_errors", "failed"):
            break
        time.sleep(0.05)
    took = time.time() - started
    outs = st["outputImageUrls"]
    ok = sum(1 for u in outs if u and urllib.request.urlopen(u).status == 200)
    codecs = {}
    for prod in st["products"]:
        for img in prod["images"]:
            codecs[img.get("codec")] = codecs.get(img.get("codec"), 0) + 1
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)
    return st["status"], took, 300 / took, peak, ok, codecs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="/work/shared/bench-images")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--db", default="sqlite,postgres")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    srv, names = origin(a.images)
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    print("| database | status | seconds | images/s | peak RSS MB | outputs downloaded | codec paths |")
    print("|---|---|---|---|---|---|---|")
    for db in a.db.split(","):
        tmp = tempfile.mkdtemp()
        if db == "sqlite":
            url = f"sqlite://{tmp}/db.sqlite"
        else:
            name = f"imgbatch_hundred_{os.getpid()}"
            subprocess.run(["psql", PG, "-qc", f"create database {name}"], check=True)
            url = PG.rsplit("/", 1)[0] + "/" + name
        try:
            status, took, ips, peak, ok, codecs = run(url, names, base, os.path.join(tmp, "images"))
            print(f"| {db} | {status} | {took:.1f} | {ips:.1f} | {peak} | {ok}/300 | {codecs} |")
        finally:
            if db != "sqlite":
                subprocess.run(["psql", PG, "-qc", f"drop database {name} with (force)"])
            shutil.rmtree(tmp, ignore_errors=True)
    srv.shutdown()


if __name__ == "__main__":
    sys.exit(main())
