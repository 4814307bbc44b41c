#!/usr/bin/env bash
# API checks against a live imgbatch:
#   (a) schemathesis fuzzes the OpenAPI document served at /api/openapi.json (every check);
#   (b) newman runs docs/postman_collection.json;
#   (c) docker-compose.yml and the Dockerfile are parsed and checked (no Docker engine here).
#
# Usage: .ci/api-checks.sh [path/to/imgbatch]        (default: target/debug/imgbatch)
#
# The service runs on a free loopback port with a fresh SQLite database in a temporary folder,
# and is stopped (and the folder removed) however the script ends. Exit status: 0 when every
# check passed, 1 otherwise. Tools that are missing are installed outside the work tree:
# schemathesis (PyPI) in a virtualenv, newman (npm) in a local prefix, both under
# $IMGBATCH_CI_CACHE (default ~/.cache/imgbatch-ci).
#
# Knobs: ST_MAX_EXAMPLES (default 30 per operation), ST_SEED (fixed seed, to replay a failure).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

BIN="${1:-target/debug/imgbatch}"
case "$BIN" in /*) ;; *) BIN="$ROOT/$BIN" ;; esac
if [[ ! -x "$BIN" ]]; then
  echo "api-checks: FAIL: no executable at $BIN (build it first: cargo build)" >&2
  exit 1
fi

ST_VERSION="4.32.5"      # schemathesis: the CLI and schemathesis.toml below are written for 4.x
NEWMAN_VERSION="6.2.2"
ST_MAX_EXAMPLES="${ST_MAX_EXAMPLES:-30}"
CACHE="${IMGBATCH_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imgbatch-ci}"

START=$SECONDS
WORK="$(mktemp -d "${TMPDIR:-/tmp}/imgbatch-api-checks.XXXXXX")"
SERVER_PID=""
FAILED=()

log() { echo "api-checks: $*"; }
fail() {
  echo "api-checks: FAIL: $*" >&2
  FAILED+=("$1")
}

# Stops the service with SIGTERM (SIGKILL after 20s); sets STOP_RC to its exit status.
STOP_RC=0
stop_server() {
  STOP_RC=0
  [[ -n "$SERVER_PID" ]] || return 0
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 200); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "api-checks: the service ignored SIGTERM for 20s; killing it" >&2
      kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
  fi
  wait "$SERVER_PID" 2>/dev/null || STOP_RC=$?
  SERVER_PID=""
}

cleanup() {
  local rc=$?
  stop_server
  if [[ $rc -ne 0 && -s "$WORK/server.log" ]]; then
    echo "api-checks: last lines of the service's log:" >&2
    tail -n 30 "$WORK/server.log" >&2 || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools ------------------------------------------------------------------------------------

# schemathesis: the one on PATH when it is the pinned version, else a virtualenv of our own.
ST=""
PY=""
if command -v st >/dev/null 2>&1 && st --version 2>/dev/null | grep -q "version $ST_VERSION\$"; then
  ST="st"
else
  venv="$CACHE/venv-schemathesis-$ST_VERSION"
  if [[ ! -x "$venv/bin/st" ]]; then
    log "installing schemathesis $ST_VERSION into $venv"
    rm -rf "$venv"
    if python3 -m venv "$venv" >/dev/null 2>&1; then
      "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION" pyyaml
    else
      # No venv module (Debian without python3-venv): a user install instead.
      rm -rf "$venv"
      pip_user=(python3 -m pip install --quiet --disable-pip-version-check --user
                "schemathesis==$ST_VERSION" pyyaml)
      "${pip_user[@]}" || "${pip_user[@]}" --break-system-packages
      mkdir -p "$venv/bin"
      ln -sf "$(python3 -m site --user-base)/bin/st" "$venv/bin/st"
      ln -sf "$(command -v python3)" "$venv/bin/python"
    fi
  fi
  ST="$venv/bin/st"
  PY="$venv/bin/python"
fi

# Python with PyYAML, for docker-compose.yml (schemathesis's virtualenv has it).
if [[ -z "$PY" ]]; then
  PY="python3"
  if ! "$PY" -c 'import yaml' 2>/dev/null; then
    log "installing pyyaml"
    "$PY" -m pip install --quiet --disable-pip-version-check pyyaml \
      || "$PY" -m pip install --quiet --disable-pip-version-check --break-system-packages pyyaml
  fi
fi

# newman: the one on PATH, else a local npm prefix outside the work tree (no node_modules here).
if command -v newman >/dev/null 2>&1; then
  NEWMAN="newman"
else
  NEWMAN="$CACHE/newman-$NEWMAN_VERSION/node_modules/.bin/newman"
  if [[ ! -x "$NEWMAN" ]]; then
    if ! command -v npm >/dev/null 2>&1; then
      if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing nodejs and npm (Debian packages)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
      else
        echo "api-checks: FAIL: newman is missing and npm is not installed" >&2
        exit 1
      fi
    fi
    log "installing newman $NEWMAN_VERSION into $CACHE/newman-$NEWMAN_VERSION"
    mkdir -p "$CACHE/newman-$NEWMAN_VERSION"
    npm install --silent --no-audit --no-fund --prefix "$CACHE/newman-$NEWMAN_VERSION" \
      "newman@$NEWMAN_VERSION" >/dev/null
  fi
fi

log "schemathesis: $($ST --version 2>&1 | tail -n 1); newman: $($NEWMAN --version)"

# --- start the service ------------------------------------------------------------------------

# Port 0: the OS picks a free port, and the first log line names the bound address (no race
# between finding a free port and binding it).
# IMGBATCH_WORKERS=0 serves the API only: these checks are about the HTTP contract, and the
# CSVs uploaded here (the Postman example, schemathesis's) name images on the internet, which
# the service must not go and fetch from CI. Unset variables that would change the contract
# (API keys make every call 401, a default webhook makes `webhook` non-null).
log "starting $BIN"
LAUNCH=$SECONDS
env -u IMGBATCH_API_KEYS -u IMGBATCH_WEBHOOK_URL -u IMGBATCH_PUBLIC_URL \
  DATABASE_URL="sqlite://$WORK/db.sqlite" \
  IMGBATCH_BIND="127.0.0.1:0" \
  IMGBATCH_STORAGE="$WORK/images" \
  IMGBATCH_RATE_LIMIT=0 \
  IMGBATCH_WORKERS=0 \
  IMGBATCH_LOG_FORMAT=text \
  NO_COLOR=1 \
  "$BIN" serve >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

BASE=""
for _ in $(seq 1 300); do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "api-checks: FAIL: the service exited at start" >&2
    exit 1
  fi
  if [[ -z "$BASE" ]]; then
    addr="$(grep -aoE 'listening on http://127\.0\.0\.1:[0-9]+' "$WORK/server.log" | head -n 1 || true)"
    [[ -n "$addr" ]] && BASE="${addr#listening on }"
  fi
  if [[ -n "$BASE" ]] && curl -fsS -o /dev/null --max-time 2 "$BASE/readyz" 2>/dev/null; then
    break
  fi
  sleep 0.1
done
if [[ -z "$BASE" ]] || ! curl -fsS -o /dev/null --max-time 2 "$BASE/readyz"; then
  echo "api-checks: FAIL: the service was not ready within 30s" >&2
  exit 1
fi
log "service ready at $BASE (in $((SECONDS - LAUNCH))s)"

# --- (a) schemathesis -------------------------------------------------------------------------

# A real request for the {requestId} operations: without one, every generated ID is unknown and
# only the 404 answers would ever be checked against the schema.
REQUEST_ID="$(curl -fsS -F "file=@docs/examples/products.csv" "$BASE/api/upload" \
  | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["requestId"])')"

cat >"$WORK/schemathesis.toml" <<EOF
# Dictionaries mix known-good values into generation (probability 0.5); the other half of the
# cases are still generated from the schema alone (random IDs, random file bytes).
[dictionaries.request_ids]
values = ["$REQUEST_ID"]

[dictionaries.csv_files]
values = ["S. No.,Product Name,Input Image Urls\\n1,SKU1,https://example.com/a.jpg\\n2,SKU2,https://example.com/b.jpg https://example.com/c.png\\n"]

[parameters]
# The status, output.csv and webhook-retry operations then see a request that exists (200, 409).
"path.requestId" = { dictionary = "request_ids", probability = 0.5 }
# Uploads then sometimes carry a valid CSV, so their 200 answer is checked against the schema too.
"body.file" = { dictionary = "csv_files", probability = 0.5 }

# No check is excluded. One is narrowed, for two operations:
# positive_data_acceptance expects every schema-valid request to be accepted. For an upload, the
# schema can say "file is binary" but not "file is a valid products CSV", so a schema-valid upload
# whose bytes are not such a CSV is rightly refused with 400 (Invalid CSV format, documented in
# the spec). Likewise an Idempotency-Key that generation happens to repeat with another file is
# rightly refused with 422 (documented). Anything else (415, 5xx, ...) still fails the check.
[[operations]]
include-path = "/api/upload"
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 422]

# The request list's cursor is opaque: the schema can say "a base64url string" but not "a
# nextCursor this service gave", so a generated cursor is rightly refused with 400 (documented).
[[operations]]
include-path = "/api/requests"
checks.positive_data_acceptance.expected-statuses = ["2xx", 400]

# Live events of a request that exists stream until it settles, and here nothing settles (no
# workers): each such case would hold its connection for the whole request timeout. The first
# event comes at once, and is checked against the schema; the stream's end is checked by newman
# and tests/it/requests.rs.
[[operations]]
include-path = "/api/requests/{requestId}/events"
max-stream-events = 1
EOF

seed_args=()
[[ -n "${ST_SEED:-}" ]] && seed_args=(--seed "$ST_SEED")

log "(a) schemathesis: $BASE/api/openapi.json, --checks all, $ST_MAX_EXAMPLES examples per operation"
# Run from the temporary folder: schemathesis finds no stray config there, and writes nothing
# into the work tree.
if (cd "$WORK" && timeout 300 "$ST" --config-file "$WORK/schemathesis.toml" run \
      "$BASE/api/openapi.json" \
      --checks all \
      --max-examples "$ST_MAX_EXAMPLES" \
      --generation-database none \
      --request-timeout 10 \
      --workers 2 \
      --no-color \
      "${seed_args[@]}"); then
  log "(a) schemathesis: passed"
else
  fail "schemathesis"
fi

# --- (b) newman -------------------------------------------------------------------------------

log "(b) newman: docs/postman_collection.json"
if timeout 120 "$NEWMAN" run docs/postman_collection.json \
      --working-dir "$ROOT" \
      --env-var "baseUrl=$BASE" \
      --timeout-request 10000 \
      --color off \
      --reporters cli; then
  log "(b) newman: passed"
else
  fail "newman"
fi

# --- (c) docker-compose.yml and Dockerfile ----------------------------------------------------

log "(c) docker-compose.yml and Dockerfile"
if "$PY" - "$ROOT" <<'PYEOF'; then
import os
import sys

import yaml

root = sys.argv[1]
problems = []
with open(os.path.join(root, "docker-compose.yml"), encoding="utf-8") as f:
    doc = yaml.safe_load(f)

services = (doc or {}).get("services") or {}
for name in ("postgres", "imgbatch"):
    if name not in services:
        problems.append(f"service {name!r} is missing")

app = services.get("imgbatch") or {}
env = app.get("environment") or {}
if isinstance(env, list):  # the "KEY=value" list form
    env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
for var in ("DATABASE_URL", "IMGBATCH_BIND", "IMGBATCH_STORAGE"):
    if env.get(var) in (None, ""):
        problems.append(f"imgbatch's environment does not set {var}")
db_url = str(env.get("DATABASE_URL") or "")
if db_url and not db_url.startswith(("postgres://", "postgresql://")):
    problems.append(f"imgbatch's DATABASE_URL is not a postgres: URL: {db_url}")

depends = app.get("depends_on") or {}
if "postgres" not in depends:
    problems.append("imgbatch does not depend on postgres")

# The images live in a volume mounted where IMGBATCH_STORAGE points.
storage = str(env.get("IMGBATCH_STORAGE") or "")
targets = []
for v in app.get("volumes") or []:
    if isinstance(v, str) and ":" in v:  # short form source:target[:mode]
        targets.append(v.split(":")[1])
    elif isinstance(v, dict):  # long form
        targets.append(v.get("target"))
if storage and storage not in targets:
    problems.append(f"no volume is mounted at IMGBATCH_STORAGE ({storage})")

# The Dockerfile the imgbatch service builds, and the one at the root.
build = app.get("build")
if build is None:
    problems.append("imgbatch has no build section")
else:
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    path = os.path.normpath(os.path.join(root, context, dockerfile))
    if not os.path.isfile(path):
        problems.append(f"the Dockerfile that imgbatch builds is missing: {path}")
    else:
        with open(path, encoding="utf-8") as f:
            stages = [l for l in f if l.strip().upper().startswith("FROM ")]
        if len(stages) < 2:
            problems.append(f"{path} is not a multi-stage build")
if not os.path.isfile(os.path.join(root, "Dockerfile")):
    problems.append("there is no Dockerfile at the repository root")

for p in problems:
    print(f"  - {p}")
if problems:
    sys.exit(1)
print(f"  services {sorted(services)}; imgbatch sets DATABASE_URL, IMGBATCH_BIND, IMGBATCH_STORAGE; Dockerfile present")
PYEOF
  log "(c) compose: passed"
else
  fail "docker-compose"
fi

# --- the service itself -----------------------------------------------------------------------

if ! curl -fsS -o /dev/null --max-time 5 "$BASE/healthz"; then
  fail "the service stopped answering during the checks"
fi
if grep -aq "panicked" "$WORK/server.log"; then
  grep -a -A3 "panicked" "$WORK/server.log" | head -n 20 >&2
  fail "the service panicked during the checks"
fi

log "stopping the service"
stop_server
if [[ $STOP_RC -ne 0 ]]; then
  fail "the service exited with status $STOP_RC after SIGTERM (expected a clean exit)"
fi

elapsed=$((SECONDS - START))
if ((${#FAILED[@]})); then
  echo "api-checks: FAILED (${FAILED[*]}) in ${elapsed}s" >&2
  exit 1
fi
log "OK in ${elapsed}s"
