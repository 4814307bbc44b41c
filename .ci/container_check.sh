#!/usr/bin/env bash
# CI: the container files agree with the code, without a Docker engine or an image registry.
#
#   1. Cargo.toml's rust-version equals the highest rust_version of any locked dependency
#      (`cargo metadata --format-version 1 --locked`, every package of the lock's resolve).
#   2. The Dockerfile's builder, `FROM rust:X...`, is at least that version.
#   3. Each folder the service writes (the final stage's WORKDIR, IMGBATCH_STORAGE and the
#      SQLite folder of DATABASE_URL, set in the Dockerfile or in compose, and compose's
#      volume targets) is created and chowned to the image's user by a RUN before `USER`; the
#      user has a fixed uid. (A fresh named volume takes the ownership of the image's folder.)
#   4. The final stage has a HEALTHCHECK, and compose's healthcheck asks the same path.
#   5. .dockerignore excludes target/, and none of what the Dockerfile COPYs.
#
# Usage: .ci/container_check.sh [ROOT]     (ROOT: the repository, default this one)
#   CONTAINER_CHECK_METADATA=FILE uses FILE as cargo metadata's output (for tests of the script).
set -euo pipefail
ROOT="${1:-$(cd "$(dirname "$0")/.." && pwd)}"

META="${CONTAINER_CHECK_METADATA:-}"
if [[ -z "$META" ]]; then
  META="$(mktemp)"
  trap 'rm -f "$META"' EXIT
  if ! (cd "$ROOT" && cargo metadata --format-version 1 --locked >"$META" 2>"$META.err"); then
    cat "$META.err" >&2
    rm -f "$META.err"
    echo "container-check: FAIL: cargo metadata --locked failed" >&2
    exit 1
  fi
  rm -f "$META.err"
fi

exec python3 - "$ROOT" "$META" <<'PYEOF'
import json
import os
import re
import shlex
import sys

root, meta_path = sys.argv[1], sys.argv[2]
problems = []


def say(msg):
    print(f"container-check: {msg}")


def fail(msg):
    problems.append(msg)
    print(f"container-check:   FAIL: {msg}")


def vkey(v):
    """'1.89' and '1.89.0' compare equal; pre-release suffixes are ignored."""
    nums = [int(x) for x in re.findall(r"\d+", v.split("-")[0])[:3]]
    return tuple(nums + [0] * (3 - len(nums)))


def vstr(k):
    return ".".join(str(x) for x in k)


# --- 1. rust-version against the locked dependencies -------------------------------------------

with open(meta_path, encoding="utf-8") as f:
    meta = json.load(f)
members = set(meta.get("workspace_members") or [])
resolved = {n["id"] for n in (meta.get("resolve") or {}).get("nodes") or []}
packages = {p["id"]: p for p in meta.get("packages") or []}
if not resolved:
    fail("cargo metadata has no resolve (was it run without --no-deps?)")
deps = [packages[i] for i in resolved if i in packages and i not in members]
declared = [(vkey(p["rust_version"]), p["name"], p["version"]) for p in deps if p.get("rust_version")]
declared.sort(reverse=True)
need = declared[0][0] if declared else (0, 0, 0)
top = [f"{n} {v}" for k, n, v in declared if k == need]
say(f"1. {len(deps)} locked dependencies, {len(declared)} declare a rust-version; highest "
    f"{vstr(need)} ({', '.join(top[:5])}{', ...' if len(top) > 5 else ''})")
own = [packages[i] for i in members if i in packages]
for p in own:
    rv = p.get("rust_version")
    if rv is None:
        fail(f"{p['name']}'s Cargo.toml declares no rust-version (the locked dependencies need {vstr(need)})")
    elif vkey(rv) != need:
        fail(f"{p['name']}'s Cargo.toml says rust-version = \"{rv}\"; the highest any locked "
             f"dependency declares is {vstr(need)} ({top[0]}): set it to that")
    else:
        say(f"   Cargo.toml rust-version = \"{rv}\": equal")


# --- the Dockerfile, as instructions by stage --------------------------------------------------

def dockerfile_stages(path):
    """[(stage name or None, [(INSTRUCTION, argument text)])], continuation lines joined."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    instructions, cur = [], ""
    for line in text.splitlines():
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):  # a comment inside a continued instruction
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        if cur.strip():
            word, _, rest = cur.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
        cur = ""
    if cur.strip():
        word, _, rest = cur.strip().partition(" ")
        instructions.append((word.upper(), rest.strip()))
    stages = []
    for ins, arg in instructions:
        if ins == "FROM":
            words = [w for w in arg.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append({"image": words[0] if words else "", "name": name, "ins": []})
        elif stages:
            stages[-1]["ins"].append((ins, arg))
    return stages


def env_pairs(arg):
    """ENV a=b c="d e"  or the old form  ENV a b."""
    out = {}
    try:
        words = shlex.split(arg)
    except ValueError:
        words = arg.split()
    if words and "=" not in words[0]:
        out[words[0]] = " ".join(words[1:])
        return out
    for w in words:
        if "=" in w:
            k, v = w.split("=", 1)
            out[k] = v
    return out


dockerfile = os.path.join(root, "Dockerfile")
stages = dockerfile_stages(dockerfile) if os.path.isfile(dockerfile) else []
if not stages:
    fail("no Dockerfile with a FROM at the repository root")
final = stages[-1] if stages else {"image": "", "name": None, "ins": []}

# --- 2. the builder's Rust ----------------------------------------------------------------------

builders = [s for s in stages[:-1] if re.fullmatch(r"(?:[\w.\-]+(?::\d+)?/)?(?:library/)?rust", s["image"].split(":")[0].split("@")[0])]
if not builders:
    fail("no build stage FROM rust:<version>-... in the Dockerfile")
for b in builders:
    tag = b["image"].split("@")[0].split(":", 1)[1] if ":" in b["image"].split("@")[0] else ""
    m = re.match(r"(\d+\.\d+(?:\.\d+)?)", tag)
    if not m:
        fail(f"the builder {b['image']} has no version in its tag (it must be at least {vstr(need)})")
    elif vkey(m.group(1)) < need:
        fail(f"the builder {b['image']} has Rust {m.group(1)}, older than the {vstr(need)} the locked "
             f"dependencies need: use rust:{vstr(need)[:-2] if need[2] == 0 else vstr(need)}-bookworm or newer")
    else:
        say(f"2. builder FROM {b['image']}: Rust {m.group(1)} >= {vstr(need)}")


# --- compose: the imgbatch service -------------------------------------------------------------

def mini_yaml(text):
    """The subset docker-compose.yml uses: block mappings, block lists, flow lists, scalars."""
    lines = []
    for raw in text.splitlines():
        s = raw.rstrip()
        t = s.lstrip()
        if not t or t.startswith("#"):
            continue
        lines.append((len(s) - len(t), t))

    def scalar(v):
        v = v.strip()
        if " #" in v and not v.startswith(("'", '"')):
            v = v.split(" #", 1)[0].strip()
        if v.startswith("[") and v.endswith("]"):
            try:
                return json.loads(v)
            except ValueError:
                return [scalar(x) for x in v[1:-1].split(",") if x.strip()]
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            return v[1:-1]
        return v

    def block(i, ind):
        if i < len(lines) and lines[i][1].startswith("- "):
            out = []
            while i < len(lines) and lines[i][0] == ind and lines[i][1].startswith("- "):
                item = lines[i][1][2:]
                if re.match(r"^[\w.\-]+:(\s|$)", item) and not re.match(r"^[\w.\-]+:\S", item):
                    # "- key: value" starts a mapping inside the list
                    sub = [(ind + 2, item)]
                    j = i + 1
                    while j < len(lines) and lines[j][0] > ind:
                        sub.append(lines[j])
                        j += 1
                    saved = lines[:]
                    lines[i:j] = sub
                    val, _ = block(i, ind + 2)
                    lines[:] = saved
                    out.append(val)
                    i = j
                else:
                    out.append(scalar(item))
                    i += 1
            return out, i
        out = {}
        while i < len(lines) and lines[i][0] == ind:
            t = lines[i][1]
            m = re.match(r"^(\"[^\"]*\"|'[^']*'|[^:]+):(?:\s+(.*))?$", t)
            if not m:
                i += 1
                continue
            key, val = scalar(m.group(1)), m.group(2)
            i += 1
            if val is not None and val.strip() != "":
                out[key] = scalar(val)
            elif i < len(lines) and (lines[i][0] > ind or (lines[i][0] == ind and lines[i][1].startswith("- "))):
                out[key], i = block(i, lines[i][0])
            else:
                out[key] = None
        return out, i

    return block(0, lines[0][0])[0] if lines else {}


compose_path = os.path.join(root, "docker-compose.yml")
app = {}
if os.path.isfile(compose_path):
    with open(compose_path, encoding="utf-8") as f:
        text = f.read()
    try:
        if os.environ.get("CONTAINER_CHECK_NO_YAML"):
            raise ImportError
        import yaml  # noqa: PLC0415
        doc = yaml.safe_load(text)
    except ImportError:
        doc = mini_yaml(text)
    app = ((doc or {}).get("services") or {}).get("imgbatch") or {}
compose_env = app.get("environment") or {}
if isinstance(compose_env, list):
    compose_env = dict(e.split("=", 1) if "=" in e else (e, "") for e in compose_env)
compose_targets = []
for v in app.get("volumes") or []:
    if isinstance(v, str) and ":" in v:
        compose_targets.append(v.split(":")[1])
    elif isinstance(v, dict) and v.get("target"):
        compose_targets.append(v["target"])

# --- 3. the folders the user writes ------------------------------------------------------------

user_idx = max((i for i, (ins, _) in enumerate(final["ins"]) if ins == "USER"), default=None)
user_spec = final["ins"][user_idx][1].split()[0] if user_idx is not None else ""
user = user_spec.split(":")[0]
if not user or user in ("root", "0"):
    fail(f"the final stage runs as {user or 'root (no USER)'}; it must run as a non-root user")
before_user = final["ins"][:user_idx] if user_idx is not None else final["ins"]

env = {}
workdir = "/"
for ins, arg in final["ins"]:
    if ins == "ENV":
        env.update(env_pairs(arg))
    elif ins == "WORKDIR":
        workdir = os.path.normpath(os.path.join(workdir, arg.strip().strip("\"'")))


def abspath(p):
    return os.path.normpath(os.path.join(workdir, p))


def sqlite_dir(url):
    m = re.match(r"^sqlite:(?://)?([^?]*)", url or "")
    if not m or m.group(1) in ("", ":memory:"):
        return None
    return os.path.dirname(abspath(m.group(1))) or "/"


need_dirs = {}  # folder -> why


def need(d, why):
    need_dirs.setdefault(d, []).append(why)


need(workdir, "the final stage's WORKDIR")
for where, e in (("Dockerfile ENV", env), ("compose environment", compose_env)):
    st = str(e.get("IMGBATCH_STORAGE") or "")
    if st and "://" not in st:
        need(abspath(st), f"IMGBATCH_STORAGE in the {where}")
    d = sqlite_dir(str(e.get("DATABASE_URL") or ""))
    if d:
        need(d, f"the SQLite folder of DATABASE_URL in the {where}")
if "IMGBATCH_STORAGE" not in env and "IMGBATCH_STORAGE" not in compose_env:
    need(abspath("data/images"), "IMGBATCH_STORAGE's default, data/images")
if "DATABASE_URL" not in env and "DATABASE_URL" not in compose_env:
    need(abspath("data"), "DATABASE_URL's default, sqlite://data/imgbatch.db")
for t in compose_targets:
    need(os.path.normpath(t), "a compose volume target")
need_dirs.pop("/", None)


def owner_matches(spec):
    name = spec.split(":")[0]
    return name in (user, uid_of_user)


def under(path, top):
    return path == top or path.startswith(top.rstrip("/") + "/")


uid_of_user = None
created, owned = set(), set()
for ins, arg in before_user:
    if ins != "RUN":
        continue
    for seg in re.split(r"&&|\|\||;|\|", arg):
        try:
            w = shlex.split(seg)
        except ValueError:
            w = seg.split()
        if not w:
            continue
        cmd, args = os.path.basename(w[0]), w[1:]
        if cmd in ("useradd", "adduser"):
            name = next((a for a in reversed(args) if not a.startswith("-")), "")
            opts = dict()
            for i, a in enumerate(args):
                if a.startswith("--") and "=" in a:
                    opts[a.split("=", 1)[0]] = a.split("=", 1)[1]
                elif a.startswith("-") and i + 1 < len(args):
                    opts[a] = args[i + 1]
            if name == user:
                uid_of_user = opts.get("-u") or opts.get("--uid")
                home = opts.get("-d") or opts.get("--home-dir") or opts.get("--home")
                if home and ("-m" in args or "--create-home" in args):
                    created.add(os.path.normpath(home))
                    owned.add(os.path.normpath(home))
        elif cmd == "mkdir":
            for a in args:
                if a.startswith("-"):
                    continue
                p = abspath(a)
                created.add(p)
                owned.discard(p)
                if "-p" in args or "--parents" in args:
                    q = os.path.dirname(p)
                    while q not in ("/", ""):
                        created.add(q)
                        q = os.path.dirname(q)
        elif cmd == "install" and ("-d" in args or "--directory" in args):
            o = args[args.index("-o") + 1] if "-o" in args and args.index("-o") + 1 < len(args) else ""
            skip = {i + 1 for i, a in enumerate(args) if a in ("-o", "-g", "-m")}
            for i, a in enumerate(args):
                if a.startswith("-") or i in skip:
                    continue
                created.add(abspath(a))
                if o and owner_matches(o):
                    owned.add(abspath(a))
        elif cmd == "chown":
            rec = any(a in ("-R", "--recursive") or re.fullmatch(r"-[a-zA-Z]*R[a-zA-Z]*", a) for a in args)
            rest = [a for a in args if not a.startswith("-")]
            if len(rest) < 2:
                continue
            spec, paths = rest[0], [abspath(p) for p in rest[1:]]
            if not owner_matches(spec):
                continue
            for p in paths:
                owned.add(p)
                if rec:
                    owned.update(c for c in created if under(c, p))

say(f"3. the final stage runs as {user_spec or '(no USER)'}"
    f"{f', uid {uid_of_user}' if uid_of_user else ''}; folders it writes:")
if user and user not in ("root", "0") and not (user.isdigit() or uid_of_user):
    fail(f"the user {user} has no fixed uid (useradd --uid N), so a bind mount cannot be prepared for it")
for d, whys in sorted(need_dirs.items()):
    why = "; ".join(whys)
    if d not in created:
        fail(f"{d} ({why}) is not created (mkdir) in the final stage before USER")
    elif d not in owned:
        fail(f"{d} ({why}) is created but not chowned to {user} before USER (a fresh volume there would be root's)")
    else:
        say(f"   {d} ({why}): created and owned by {user} before USER")

# --- 4. HEALTHCHECK ----------------------------------------------------------------------------

checks = [arg for ins, arg in final["ins"] if ins == "HEALTHCHECK"]
if not checks or checks[-1].strip().upper() == "NONE":
    fail("the final stage has no HEALTHCHECK")
else:
    paths = re.findall(r"https?://[^/\s\"']+(/[\w/.\-]*)", checks[-1])
    say(f"4. HEALTHCHECK {checks[-1]}")
    test = app.get("healthcheck", {}).get("test") if isinstance(app.get("healthcheck"), dict) else None
    if test:
        ctext = " ".join(test) if isinstance(test, list) else str(test)
        cpaths = re.findall(r"https?://[^/\s\"']+(/[\w/.\-]*)", ctext)
        if paths and cpaths and paths[0] != cpaths[0]:
            fail(f"compose's healthcheck asks {cpaths[0]}, the Dockerfile's HEALTHCHECK {paths[0]}")
        else:
            say(f"   compose's healthcheck: {ctext} (same path)")

# --- 5. .dockerignore --------------------------------------------------------------------------

def ignore_rules(path):
    rules = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            neg = s.startswith("!")
            s = s[1:] if neg else s
            s = os.path.normpath(s.strip("/")) if s.strip("/") else "."
            rx = ""
            i = 0
            while i < len(s):
                if s.startswith("**/", i):  # any number of folders, none included
                    rx += "(?:.*/)?"
                    i += 3
                elif s.startswith("**", i):
                    rx += ".*"
                    i += 2
                elif s[i] == "*":
                    rx += "[^/]*"
                    i += 1
                elif s[i] == "?":
                    rx += "[^/]"
                    i += 1
                else:
                    rx += re.escape(s[i])
                    i += 1
            rules.append((re.compile(rx + r"\Z"), neg))
    return rules


def ignored(rules, rel):
    """Docker's rule: the last matching pattern wins; a pattern that matches a folder covers
    everything in it."""
    parts = rel.split("/")
    out = False
    for rx, neg in rules:
        if any(rx.match("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            out = not neg
    return out


di = os.path.join(root, ".dockerignore")
if not os.path.isfile(di):
    fail("there is no .dockerignore (the build context would carry target/)")
else:
    rules = ignore_rules(di)
    for probe in ("target", "target/release/imgbatch"):
        if not ignored(rules, probe):
            fail(f".dockerignore does not exclude {probe}")
    sources = []
    for s in stages:
        for ins, arg in s["ins"]:
            if ins in ("COPY", "ADD") and "--from" not in arg:
                words = [w for w in arg.split() if not w.startswith("--")]
                sources += [w.strip("\"'") for w in words[:-1]]
    kept = []
    for src in sources:
        rel = os.path.normpath(src)
        full = os.path.join(root, rel)
        files = [rel]
        if os.path.isdir(full):
            files = [os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(full) for f in fs]
        bad = [f for f in files if ignored(rules, f)]
        if bad:
            fail(f".dockerignore excludes {bad[0]}, which the Dockerfile copies ({src})")
        else:
            kept.append(src)
    if not [p for p in problems if "dockerignore" in p]:
        say(f"5. .dockerignore excludes target/; keeps what the Dockerfile copies: {' '.join(kept)}")

if problems:
    say(f"FAIL ({len(problems)} problem{'s' if len(problems) != 1 else ''})")
    sys.exit(1)
say("passed")
PYEOF
