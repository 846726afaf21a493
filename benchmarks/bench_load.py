"""A class on loopback: N concurrent clients load the app and scrub through a run.

Each simulated student opens one keep-alive connection (as a browser would reuse
one) and, like the front end (frontend/js/api.js, each URL once), requests:
the page, api/index.json, a run manifest, the run's sprites, then every step's JSON
in order (the slider scrubbed from 0 to T-1), `--think-ms` apart. Students arrive
spread over `--ramp-s`. Measured against

  app    `noisepath serve` (waitress) on a free loopback port, in a subprocess;
  nginx  Debian's nginx serving `noisepath export` of the same bundle, run as the
         current user with a generated config, pid and logs in a temporary folder.

Reports requests/s, p50/p95/p99 latency and errors per server. Bounded: at most
`--clients` connections and `--max-s` seconds per server; every process it starts
is stopped at the end. Without `--bundle` it generates a synthetic bundle of
realistic shape (50 steps, 16x16x4 latents, 64 px frames).

    .venv/bin/python benchmarks/bench_load.py --clients 200
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NGINX = "/usr/sbin/nginx"


# ------------------------------------------------------------------- HTTP client

class Client:
    """A minimal HTTP/1.1 keep-alive client (Content-Length and chunked bodies)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                          "Accept-Encoding: gzip\r\nUser-Agent: bench_load\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:] if line)}
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await self.reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailers
                    break
                body += await self.reader.readexactly(size)
                await self.reader.readexactly(2)
            body = bytes(body)
        else:
            body = await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def close(self):
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.reader = self.writer = None


async def student(host, port, base, run_ids, steps, think, ramp, deadline, results,
                  packed=False):
    await asyncio.sleep(random.uniform(0, ramp))
    client = Client(host, port)
    rid = random.choice(run_ids)

    async def fetch(path, expect_json=False):
        if time.monotonic() > deadline:
            raise TimeoutError
        t0 = time.perf_counter()
        try:
            status, body = await asyncio.wait_for(client.get(base + path), 30)
            ok = status == 200
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                asyncio.TimeoutError):
            ok, body = False, b""
            await client.close()
        results.append((time.perf_counter() - t0, ok, path.split("/")[0] or "page"))
        return body

    try:
        await fetch("")
        await fetch("api/index.json")
        manifest = await fetch(f"api/runs/{rid}.json")
        try:
            images = [v["url"] for v in _json(manifest)["images"].values()]
        except (ValueError, KeyError):
            images = []
        for url in images:
            await fetch(url)
        if packed:  # a static export holds a run's steps in one file (docs/api.md)
            await fetch(f"api/runs/{rid}/steps.json")
        for i in range(0 if packed else steps):
            await fetch(f"api/runs/{rid}/steps/{i}.json")
            if think:
                await asyncio.sleep(think)
    except TimeoutError:
        pass
    finally:
        await client.close()


def _json(body: bytes):
    if body[:2] == b"\x1f\x8b":
        import gzip
        body = gzip.decompress(body)
    return json.loads(body)


async def load_test(host, port, *, base, clients, think, ramp, max_s) -> dict:
    probe = Client(host, port)
    status, body = await probe.get(base + "api/index.json")
    await probe.close()
    index = _json(body)
    run_ids = sorted(r for r, v in index["runs"].items() if v["guidance_scale"] > 0)
    steps = index["config"]["num_inference_steps"]
    packed = "export" in index   # noisepath export's layout: steps.json per run
    results: list[tuple[float, bool, str]] = []
    t0 = time.monotonic()
    await asyncio.gather(*(student(host, port, base, run_ids, steps, think, ramp,
                                   t0 + max_s, results, packed) for _ in range(clients)))
    wall = time.monotonic() - t0
    lat = sorted(r[0] for r in results)

    def pct(p):
        return 1000 * lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else float("nan")

    return {"clients": clients, "requests": len(results),
            "errors": sum(not ok for _, ok, _ in results), "wall_s": round(wall, 2),
            "rps": round(len(results) / wall, 1), "p50_ms": round(pct(50), 1),
            "p95_ms": round(pct(95), 1), "p99_ms": round(pct(99), 1),
            "max_ms": round(1000 * lat[-1], 1) if lat else None,
            "mean_ms": round(1000 * statistics.fmean(lat), 1) if lat else None,
            "completed_all_steps": len(results) >= clients * (steps + 3)}


# ---------------------------------------------------------------------- servers

def noisepath_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "noisepath"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "backend.cli"]


def start_serve(options: list[str], log: Path, timeout: float = 120):
    """`noisepath serve --port 0 OPTIONS` as a child process: (process, port), or None
    (the process stopped) when it did not print its address within timeout seconds."""
    proc = subprocess.Popen(noisepath_cmd() + ["serve", "--port", "0"] + options,
                            stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True,
                            cwd=REPO)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"Open http://127\.0\.0\.1:(\d+)/", line)
        if m:
            return proc, int(m.group(1))
        if not line and proc.poll() is not None:
            break
    stop(proc)
    return None


def start_app(bundle: Path, threads: int, log: Path):
    started = start_serve(["--bundle", str(bundle), "--threads", str(threads)], log)
    if started is None:
        raise RuntimeError(f"noisepath serve did not start; see {log}")
    return started


def start_nginx(site: Path, tmp: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / d).mkdir(exist_ok=True)
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    conf = tmp / "nginx.conf"
    conf.write_text(f"""{user}
worker_processes 2;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  types {{ text/html html; text/javascript js mjs; text/css css; application/json json;
          application/octet-stream npy; image/webp webp; image/png png; image/svg+xml svg;
          font/woff2 woff2; }}
  default_type application/octet-stream;
  sendfile on; tcp_nopush on; keepalive_requests 100000; server_tokens off;
  gzip on; gzip_min_length 256; gzip_comp_level 6;
  gzip_types application/json application/octet-stream text/css text/javascript;
  server {{
    listen 127.0.0.1:{port} backlog=2048;
    root {site};
    index index.html;
  }}
}}
""")
    proc = subprocess.Popen([NGINX, "-e", str(tmp / "error.log"), "-p", str(tmp), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx failed: {proc.stderr.read().decode()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError("nginx did not start")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT if os.name != "nt" else signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


# ------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--think-ms", type=float, default=50,
                   help="pause between two steps of a scrub (a slider dragged over 50 steps "
                        "in 2.5 s at the default)")
    p.add_argument("--ramp-s", type=float, default=5, help="students arrive over this long")
    p.add_argument("--max-s", type=float, default=40, help="stop each server's test after this")
    p.add_argument("--threads", type=int, default=16, help="waitress threads (noisepath serve)")
    p.add_argument("--bundle", type=Path, help="bundle to serve (default: a synthetic one)")
    p.add_argument("--servers", default="app,nginx", help="which to test: app, nginx or both")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--repeat", type=int, default=1, help="runs per server")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    random.seed(args.seed)

    load_before = f"{os.getloadavg()[0]:.2f}"
    tmp = Path(tempfile.mkdtemp(prefix="noisepath-bench-"))
    results = {}
    try:
        bundle = args.bundle
        if bundle is None:
            sys.path.insert(0, str(REPO))
            from tests.synthetic_bundle import make_bundle
            t0 = time.monotonic()
            bundle = make_bundle(tmp / "bundle", steps=50, latent=16, image_size=64)
            print(f"synthetic bundle: {time.monotonic() - t0:.1f} s", file=sys.stderr)
        servers = args.servers.split(",")
        test = functools.partial(load_test, "127.0.0.1", base="/", clients=args.clients,
                                 think=args.think_ms / 1000, ramp=args.ramp_s, max_s=args.max_s)
        if "app" in servers:
            proc, port = start_app(bundle, args.threads, tmp / "serve.log")
            try:
                results["app"] = [asyncio.run(test(port)) for _ in range(args.repeat)]
            finally:
                stop(proc)
        if "nginx" in servers:
            site = tmp / "site"
            subprocess.run(noisepath_cmd() + ["export", str(site), "--bundle", str(bundle)],
                           check=True, stdout=subprocess.DEVNULL, cwd=REPO)
            (tmp / "nginx").mkdir()
            proc, port = start_nginx(site, tmp / "nginx")
            try:
                results["nginx"] = [asyncio.run(test(port)) for _ in range(args.repeat)]
            finally:
                stop(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"load average before: {load_before}, after: {os.getloadavg()[0]:.2f} "
          f"({os.cpu_count()} CPUs)")
    print("| server | clients | requests | errors | req/s | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        for r in runs:
            print(f"| {name} | {r['clients']} | {r['requests']} | {r['errors']} | {r['rps']} | "
                  f"{r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['max_ms']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    failed = any(r["errors"] or not r["completed_all_steps"]
                 for runs in results.values() for r in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
