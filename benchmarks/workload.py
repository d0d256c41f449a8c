"""Writes the reference workload: a Docker-shaped json-file log tree with "standard mix v1".

By logical record: 64.4% plain text lines (90-170 bytes), 25% JSON application logs (150-260 bytes),
9% stack traces on stderr (a head line, an exception line, 3-12 "\\tat" lines, half with a "Caused by"),
1.5% long lines (1-8 KiB), 0.1% huge lines (20-60 KiB) that dockerd splits into 16 KiB partial entries.
Each record carries `seq=<container>-<n>`, so a receiver can count loss and duplicates. Deterministic per seed.

    python benchmarks/workload.py DIR --records 1000000 --containers 8
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time

PARTIAL_BYTES = 16 * 1024
LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR")
PATHS = ("/api/v1/items", "/api/v1/orders", "/healthz", "/api/v1/users/me", "/static/app.js")
SERVICES = (("shop", "web"), ("shop", "api"), ("shop", "worker"), ("billing", "api"), ("billing", "cron"),
            ("search", "indexer"), ("edge", "proxy"), ("auth", "api"))
T0_NS = 1_795_000_000_000_000_000


def rfc3339(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def record_lines(rng: random.Random, c: int, n: int) -> list[str]:
    """The output lines (each ending in a newline) of logical record n of container c."""
    tag = f"seq={c}-{n}"
    r = rng.random()
    if r < 0.644:
        return [f"2026-11-26 21:19:17,{n % 1000:03d} {rng.choice(LEVELS):5s} [worker-{n % 8}] c.e.shop.OrderService"
                f" - order accepted id={rng.randint(1, 10**9)} user=u{rng.randint(1, 9999)} {tag} "
                f"{'x' * rng.randint(0, 60)}\n"]
    if r < 0.894:
        return [json.dumps({"level": rng.choice(LEVELS).lower(), "msg": "request served", "method": "GET",
                            "path": rng.choice(PATHS), "status": rng.choice((200, 200, 201, 404, 500)),
                            "duration_ms": round(rng.random() * 300, 2),
                            "trace_id": f"{rng.getrandbits(128):032x}", "seq": tag}) + "\n"]
    if r < 0.984:
        lines = [f"2026-11-26 21:19:17,{n % 1000:03d} ERROR [worker-{n % 8}] c.e.shop.Checkout - payment failed "
                 f"{tag}\n", "java.lang.IllegalStateException: card declined\n"]
        lines += [f"\tat com.example.shop.payment.Gateway.call{k}(Gateway.java:{100 + k})\n"
                  for k in range(rng.randint(3, 12))]
        if rng.random() < 0.5:
            lines += ["Caused by: java.net.SocketTimeoutException: read timed out\n",
                      "\tat java.base/java.net.SocketInputStream.read(SocketInputStream.java:168)\n"]
        return lines
    if r < 0.999:
        return [f"DEBUG payload dump {tag} " + "ab" * rng.randint(500, 4000) + "\n"]
    return [f"DEBUG huge payload {tag} " + "Z" * rng.randint(20_000, 60_000) + "\n"]


def write_container(root: str, seed: int, c: int, records: int, rng: random.Random) -> dict[str, object]:
    cid = hashlib.sha256(f"{seed}-{c}".encode()).hexdigest()
    project, service = SERVICES[c % len(SERVICES)]
    name = f"{project}-{service}-{c + 1}"
    d = os.path.join(root, "containers", cid)
    os.makedirs(d, exist_ok=True)
    log_path = os.path.join(d, f"{cid}-json.log")
    labels = {"com.docker.compose.project": project, "com.docker.compose.service": service, "team": project}
    with open(os.path.join(d, "config.v2.json"), "w") as f:
        json.dump({"ID": cid, "Name": "/" + name, "Created": rfc3339(T0_NS), "LogPath": log_path,
                   "Config": {"Image": f"registry.example/{project}/{service}:1.{c}", "Labels": labels,
                              "Env": ["APP_ENV=prod", "DB_PASSWORD=hunter2"], "Tty": False},
                   "State": {"Running": True}}, f)
    with open(os.path.join(d, "hostconfig.json"), "w") as f:
        json.dump({"LogConfig": {"Type": "json-file", "Config": {}}}, f)
    entries = nbytes = 0
    ns = T0_NS + c
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    with open(log_path, "w") as out:
        buf = []
        for n in range(records):
            lines = record_lines(rng, c, n)
            stream = "stderr" if len(lines) > 1 or rng.random() < 0.1 else "stdout"
            for line in lines:
                for start in range(0, len(line), PARTIAL_BYTES):
                    ns += rng.randint(1_000, 2_000_000)
                    entry = dumps({"log": line[start:start + PARTIAL_BYTES], "stream": stream,
                                   "time": rfc3339(ns)}) + "\n"
                    buf.append(entry)
                    entries += 1
                    nbytes += len(entry)
            if len(buf) > 4096:
                out.write("".join(buf))
                buf.clear()
        out.write("".join(buf))
    return {"id": cid, "name": name, "records": records, "entries": entries, "bytes": nbytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("--containers", type=int, default=8)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    per = [a.records // a.containers + (1 if i < a.records % a.containers else 0) for i in range(a.containers)]
    manifest = {"mix": "standard mix v1", "seed": a.seed,
                "containers": [write_container(a.root, a.seed, c, per[c], rng) for c in range(a.containers)]}
    with open(os.path.join(a.root, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    total = sum(int(c["entries"]) for c in manifest["containers"])  # type: ignore[call-overload]
    print(f"wrote {a.records} records, {total} json-file entries under {a.root}", file=sys.stderr)


if __name__ == "__main__":
    main()
