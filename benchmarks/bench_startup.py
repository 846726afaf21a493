"""How long `noisepath serve` takes to answer, and where that time goes.

Start-up: starts `noisepath serve --bundle DIR --port P` (a free loopback port) as a
subprocess, polls every 5 ms, and prints the seconds from the start of the command to
the first HTTP 200 of `/` and then of `api/index.json`, and the CPU seconds the server
used until then; `--repeat` times, min / median / max. The server is stopped after each.

Phases (`--phases`): the CPU seconds of each part of the same start-up, measured in a
fresh interpreter each time: imports, validation (split by what it reads: encoded
arrays' members, images, JSON documents, the rest), the store, the first requests, and
the first request of a run's document (which decodes the run's arrays for its stats).
CPU seconds do not depend on what else the machine runs; wall seconds on a busy
machine do.

`--checkout DIR` times another source tree (e.g. `git archive` of an older commit into
DIR) with the same bundle, for a before/after.

    .venv/bin/python benchmarks/bench_startup.py --repeat 5 --phases
"""

from __future__ import annotations

import argparse
import http.client
import importlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "static" / "demo-bundle"
POLL_S = 0.005


def serve_command(checkout: Path | None = None) -> list[str]:
    """The installed `noisepath` next to this interpreter, as a user runs it; or, to compare
    versions, `python -m backend.cli` run in another checkout (e.g. `git archive` of a commit)."""
    script = Path(sys.executable).parent / "noisepath"
    if checkout is None and script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "backend.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_of(port: int, path: str) -> int | None:
    """The HTTP status of GET path, or None while nothing listens."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return None


def first_200(proc: subprocess.Popen, port: int, path: str, t0: float, timeout: float) -> float:
    """Seconds from t0 until GET path answers 200 (polling every POLL_S)."""
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"noisepath serve exited with {proc.returncode}:\n"
                             f"{proc.stderr.read().decode(errors='replace')}")
        status = status_of(port, path)
        if status == 200:
            return time.perf_counter() - t0
        if status is not None:
            raise SystemExit(f"GET {path} answered {status}")
        time.sleep(POLL_S)
    raise SystemExit(f"no 200 for {path} within {timeout} s")


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def one_start(bundle: Path, timeout: float, checkout: Path | None = None
              ) -> tuple[float, float, float]:
    """(seconds to the first 200 of /, of api/index.json, CPU seconds the server used)."""
    port = free_port()
    cpu0 = children_cpu()
    cmd = serve_command(checkout) + ["serve", "--bundle", str(bundle.resolve()),
                                     "--port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=checkout or REPO)
    try:
        page = first_200(proc, port, "/", t0, timeout)
        index = first_200(proc, port, "/api/index.json", t0, timeout)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    return page, index, children_cpu() - cpu0


# ---------------------------------------------------------------------- phases

def timed(spent: dict, key: str, *candidates: str) -> None:
    """Wrap the first of `candidates` ("module:Class.function") that exists so that its
    CPU time adds to spent[key] (outermost calls only). Names of both validator layouts
    are listed, so older checkouts can be measured too."""
    for cand in candidates:
        mod, _, qual = cand.partition(":")
        try:
            owner = importlib.import_module(mod)
        except ImportError:
            continue
        *path, name = qual.split(".")
        for part in path:
            owner = getattr(owner, part, None)
        fn = getattr(owner, name, None) if owner is not None else None
        if fn is None:
            continue
        depth = [0]

        def wrapper(*a, _fn=fn, **k):
            depth[0] += 1
            t = time.process_time()
            try:
                return _fn(*a, **k)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    spent[key] = spent.get(key, 0.0) + time.process_time() - t
        setattr(owner, name, wrapper)
        return


def phase_child(bundle: str) -> None:
    """One start-up in this (fresh) interpreter, in parts; prints them as JSON."""
    sys.path.insert(0, os.getcwd())  # the checkout measured
    t0 = time.process_time()
    import backend.bundle  # noqa: F401 (what `noisepath serve` imports)
    import backend.store  # noqa: F401
    from backend import create_app
    out = {"imports (backend, flask, numpy, PIL)": time.process_time() - t0}
    spent: dict[str, float] = {}
    timed(spent, "validate", "backend.bundle:check_bundle", "backend.bundle:validate_bundle")
    timed(spent, "  encoded arrays (.q8.npz members)", "backend.validate_run:_Run.encoded_array",
          "backend.validator:_Checker.encoded_array")
    timed(spent, "  images (open each file)", "backend.validate_run:_Run.image_file",
          "backend.validator:_Checker.image")
    timed(spent, "  JSON documents (read, parse)", "backend.validator:Checker.json",
          "backend.validator:_Checker.load_json")
    timed(spent, "bundle", "backend.bundle:Bundle.__init__")
    timed(spent, "store", "backend.store:Store.__init__")
    t = time.process_time()
    app = create_app({"BUNDLE_DIR": bundle})
    out["create_app (total)"] = time.process_time() - t
    out["validate (total)"] = spent["validate"]
    parts = {k: v for k, v in spent.items() if k.startswith("  ")}
    out.update(parts)
    out["  other checks (schema, paths, file stats)"] = spent["validate"] - sum(parts.values())
    out["bundle: the rest (after validation)"] = spent["bundle"] - spent["validate"]
    out["store: the index, the keys of the rest"] = spent["store"]
    client = app.test_client()
    t = time.process_time()
    assert client.get("/").status_code == 200
    assert client.get("/api/index.json").status_code == 200
    out["first / and api/index.json (test client)"] = time.process_time() - t
    rid = next(iter(app.extensions["noisepath.store"].runs))
    t = time.process_time()
    assert client.get(f"/api/runs/{rid}.json").status_code == 200
    out["first run document (decodes the run's arrays)"] = time.process_time() - t
    print(json.dumps(out))


def interpreter_start() -> float:
    """CPU seconds of `python -c pass`."""
    cpu0 = children_cpu()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return children_cpu() - cpu0


def phases(bundle: Path, repeat: int, checkout: Path | None = None) -> None:
    runs = []
    for _ in range(repeat):
        r = subprocess.run([sys.executable, __file__, "--phase-child", str(bundle.resolve())],
                           cwd=checkout or REPO, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(r.stderr)
        runs.append({"python -c pass (interpreter start)": interpreter_start(),
                     **json.loads(r.stdout.strip().splitlines()[-1])})
    print(f"\nphases, {repeat} fresh interpreters: median (min-max) CPU seconds "
          "(time.process_time: what each part costs, whatever else the machine runs)")
    for key in runs[0]:
        xs = [r[key] for r in runs]
        print(f"  {key:52s} {statistics.median(xs):6.3f}  ({min(xs):.3f}-{max(xs):.3f})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=DEMO)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a 200")
    p.add_argument("--checkout", type=Path, metavar="DIR",
                   help="time `python -m backend.cli serve` of the source tree in DIR instead")
    p.add_argument("--phases", action="store_true",
                   help="also split start-up into its parts, in-process")
    p.add_argument("--phase-child", metavar="BUNDLE", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase_child:
        phase_child(args.phase_child)
        return 0
    where = f" (in {args.checkout})" if args.checkout else ""
    print(f"command: {' '.join(serve_command(args.checkout))} serve --bundle {args.bundle} "
          f"--port <free>{where}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} CPUs)")
    pages, indexes, cpus = [], [], []
    for i in range(args.repeat):
        page, index, cpu = one_start(args.bundle, args.timeout, args.checkout)
        pages.append(page)
        indexes.append(index)
        cpus.append(cpu)
        print(f"  try {i + 1}: first 200 of / after {page:.3f} s, of api/index.json after "
              f"{index:.3f} s; the server used {cpu:.3f} s of CPU")
    for what, xs in (("first 200 of /", pages), ("first 200 of api/index.json", indexes),
                     ("server CPU until then", cpus)):
        print(f"{what:28s} min {min(xs):.3f}  median {statistics.median(xs):.3f}  "
              f"max {max(xs):.3f} s  ({len(xs)} starts)")
    if args.phases:
        phases(args.bundle, args.repeat, args.checkout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
