"""How fast a typed prompt comes back from `noisepath serve --live` (docs/performance.md).

The live service over the shipped demo model on the CPU, driven through the app's
WSGI interface (no sockets: loopback HTTP adds about a millisecond per request, the
browser's drawing a few more), the way the page drives it: POST the job, then poll its
status every `--poll` seconds. Reported per job, best and median of `--repeat`:

- first step: from the POST to the first status with a streamed step (the page then
  loads that step's two PNG frames);
- complete: from the POST to `state: "done"` (runs written, the live bundle's app
  reloaded: the run opens);
- cache hit: the same job POSTed again (answered 200 from the live bundle).

Each repeat types a new prompt on a new seed into a fresh live bundle, so the seed's
shared guidance-0 run is computed too ("cold"), and then another prompt on the same
seed ("warm": only the guided runs). The job runs the typed scale (3) with the demo
bundle's scales 0, 1, 3, 7: four guidance scales.

    .venv/bin/python benchmarks/bench_live.py --steps 50 --repeat 3

With `--viewers N` it measures instead whether the shipped views keep answering while
live jobs run: it starts `noisepath serve --live` once (waitress on a loopback port,
the demo bundle and model) and runs bench_load.py's class of N viewing clients (each
loads the page, the index, a run and its sprites, then scrubs every step's JSON) in
that one server, alternating `--rounds` times: with no live job, then with two live
jobs kept going (two typed prompts from two client addresses, 127.0.0.2 and 127.0.0.3,
each POSTing a new prompt when its last is done and polling its status every 0.2 s as
the page does: one job computes while the other waits, as one worker runs one job at
a time). It prints the rows side by side (p50, p95, p99 of the viewers' requests) and
the live steps streamed during each "two" phase.

    .venv/bin/python benchmarks/bench_live.py --viewers 200
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def one_job(client, body, poll):
    t0 = time.perf_counter()
    resp = client.post("/api/live/jobs", json=body)
    job = resp.get_json()
    if resp.status_code not in (200, 202):
        raise SystemExit(f"job refused: {job}")
    first = None
    while job["state"] not in ("done", "failed"):
        time.sleep(poll)
        job = client.get(f"/api/live/jobs/{job['id']}.json").get_json()
        if first is None and job["steps_done"] >= 1:
            first = time.perf_counter() - t0
    if job["state"] != "done":
        raise SystemExit(f"job failed: {job['error']}")
    return first, time.perf_counter() - t0


# ------------------------------------------------ viewers while live jobs run (--viewers)

class TypingClient(threading.Thread):
    """One student typing prompts from its own loopback address: keeps one job queued or
    running (a new prompt when the last is done) and polls it as the page does."""

    def __init__(self, port: int, address: str, name: str, poll: float = 0.2):
        super().__init__(daemon=True)
        self.port, self.address, self.name, self.poll = port, address, name, poll
        self.stop_event = threading.Event()
        self.steps = self.jobs = self.refused = 0
        self.error = None

    def request(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30,
                                          source_address=(self.address, 0))
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()

    def run(self):
        n = 0
        try:
            while not self.stop_event.is_set():
                n += 1
                status, job = self.request("POST", "/api/live/jobs", {
                    "prompt": f"{self.name} star {n}", "seed": 2000 + n, "guidance_scale": 3})
                if status not in (200, 202):
                    self.refused += 1
                    time.sleep(1)
                    continue
                self.jobs += 1
                seen = 0
                while job["state"] not in ("done", "failed", "cancelled"):
                    time.sleep(self.poll)
                    _, job = self.request("GET", f"/api/live/jobs/{job['id']}.json")
                    if self.stop_event.is_set() and job["state"] == "queued":
                        self.request("POST", f"/api/live/jobs/{job['id']}/cancel")
                    self.steps += job["steps_done"] - seen
                    seen = job["steps_done"]
                if job["state"] == "failed":
                    self.error = job["error"]
                    return
        except Exception as e:  # reported with the numbers
            self.error = f"{type(e).__name__}: {e}"


def start_live_server(tmp: Path, threads: int, steps: int):
    """`noisepath serve --live` on a free loopback port: (process, port)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_load import start_serve

    log = tmp / "serve.log"
    started = start_serve(["--threads", str(threads), "--live", "--live-dir", str(tmp / "live"),
                           "--live-steps", str(steps), "--live-queue", "4"], log, timeout=300)
    if started is not None:
        return started
    raise SystemExit(f"noisepath serve --live did not start:\n{log.read_text()[-2000:]}")


def with_two_jobs(port: int, viewers, round_: int):
    """viewers() while two typing clients keep a live job each queued or running:
    (its result, a note on the live work done meanwhile). Returns once both jobs ended."""
    typists = [TypingClient(port, "127.0.0.2", f"red {round_}"),
               TypingClient(port, "127.0.0.3", f"blue {round_}")]
    for c in typists:
        c.start()
    deadline = time.monotonic() + 120  # both jobs submitted and one computing
    while sum(c.jobs for c in typists) < 2 or sum(c.steps for c in typists) < 1:
        if time.monotonic() > deadline or any(c.error for c in typists):
            raise SystemExit(f"live jobs did not start: {[c.error for c in typists]}")
        time.sleep(0.1)
    before = sum(c.steps for c in typists)
    result = viewers()
    steps = sum(c.steps for c in typists) - before
    for c in typists:
        c.stop_event.set()
    for c in typists:  # the running job finishes (the queued one is cancelled)
        c.join(300)
    errors = [c.error for c in typists if c.error]
    return result, (f"{steps} streamed steps, {sum(c.jobs for c in typists)} jobs"
                    + (f"; errors: {errors}" if errors else ""))


def viewers_while_live(args) -> int:
    """The shipped views' latency for `--viewers` clients, without and with two live jobs."""
    import asyncio

    from bench_load import load_test, stop

    load_before = f"{os.getloadavg()[0]:.2f}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        proc, port = start_live_server(Path(tmp), args.server_threads, args.steps)
        print(f"serve --live started in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        try:
            def viewers():
                return asyncio.run(load_test("127.0.0.1", port, base="/", clients=args.viewers,
                                             think=args.think_ms / 1000, ramp=args.ramp_s,
                                             max_s=args.max_s))
            for r in range(args.rounds):  # alternating, so a neighbour's load hits both
                rows.append(("none", viewers(), None))
                rows.append(("two", *with_two_jobs(port, viewers, r)))
        finally:
            stop(proc)
    print(f"load average before: {load_before}, after: {os.getloadavg()[0]:.2f} "
          f"({os.cpu_count()} CPUs); demo model, {args.steps} steps per run, "
          f"{args.server_threads} waitress threads")
    print("| live jobs | viewers | requests | errors | req/s | p50 ms | p95 ms | p99 ms | "
          "max ms | live work meanwhile |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r, note in rows:
        print(f"| {name} | {r['clients']} | {r['requests']} | {r['errors']} | {r['rps']} | "
              f"{r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['max_ms']} | {note or '-'} |")
    return 1 if any(r["errors"] for _, r, _ in rows) else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--poll", type=float, default=0.02, help="seconds between status polls")
    v = p.add_argument_group("shipped views while live jobs run")
    v.add_argument("--viewers", type=int, default=0,
                   help="this many viewing clients, without and with two live jobs")
    v.add_argument("--think-ms", type=float, default=50, help="pause between two steps")
    v.add_argument("--ramp-s", type=float, default=5, help="viewers arrive over this long")
    v.add_argument("--max-s", type=float, default=30, help="each of the two phases' limit")
    v.add_argument("--server-threads", type=int, default=16, help="waitress threads")
    v.add_argument("--rounds", type=int, default=2, help="none/two pairs, alternating")
    args = p.parse_args(argv)
    if args.viewers:
        return viewers_while_live(args)

    from backend import FRONTEND, create_app
    from backend.live import make_service

    demo = REPO / "static" / "demo-bundle"
    index = json.loads((demo / "bundle.json").read_text())
    rows = {"cold first step": [], "cold complete": [], "warm first step": [],
            "warm complete": [], "cache hit": []}
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        svc = make_service(str(REPO / "static" / "demo-model"), "cpu", Path(tmp) / "live",
                           index["config"], index["guidance_scales"], FRONTEND,
                           steps=args.steps, threads=args.threads)
        print(f"model loaded in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        client = create_app({"BUNDLE_DIR": demo, "LIVE": svc}).test_client()
        for r in range(args.repeat):
            seed = 1000 + r
            first, done = one_job(client, {"prompt": f"a red star {r}", "seed": seed,
                                           "guidance_scale": 3}, args.poll)
            rows["cold first step"].append(first)
            rows["cold complete"].append(done)
            first, done = one_job(client, {"prompt": f"a blue circle {r}", "seed": seed,
                                           "guidance_scale": 3}, args.poll)
            rows["warm first step"].append(first)
            rows["warm complete"].append(done)
            t0 = time.perf_counter()
            hit = client.post("/api/live/jobs", json={"prompt": f"a blue circle {r}",
                                                      "seed": seed, "guidance_scale": 3})
            rows["cache hit"].append(time.perf_counter() - t0)
            assert hit.status_code == 200 and hit.get_json()["cached"]
    print(f"demo model, {args.steps} steps, guidance scales 0 1 3 7, "
          f"{args.repeat} repeats (seconds)")
    for name, values in rows.items():
        print(f"  {name:16s} best {min(values):7.3f}  median {statistics.median(values):7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
