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
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--poll", type=float, default=0.02, help="seconds between status polls")
    args = p.parse_args(argv)

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
