"""Live prompts (`noisepath serve --live`): a bounded job queue, its JSON API and the
live bundle, served read-only at live/ like any bundle.

The work itself is precompute/live.py's (`LiveRunner`: the precompute's loop and
writer); this module never imports torch: the runner is built by backend/serve_cli.py
and handed to `create_app` as config LIVE (a `LiveService`).

Streaming is by polling: the page asks for its job's small JSON status a few times a
second and loads each new step's two PNG frames by URL. waitress answers with a fixed
pool of threads, and a server-sent event stream would hold one of them per watching
browser for a whole run; a poll holds one for a millisecond, so a class watching its
jobs never starves the shipped views.

Safe to share: jobs wait in a queue of bounded length with a per-browser limit and a
per-address ceiling (503 or 429 with Retry-After when full), the request names only a
prompt, a seed and a guidance scale (never a model, file or path), bodies are small
JSON objects checked field by field (4xx JSON otherwise), and POSTs from another site
are refused (Origin).

Who is who: a class behind one router (a school NAT) shares one address, so a client
is a browser, known by an unguessable id the server gives it in an HttpOnly,
SameSite=Strict cookie on its first live request (stateless: any well-formed id is a
browser; a missing or malformed one gets a new id). Only that browser may poll,
cancel or watch the frames of its jobs (others get 404, or 403 for a cancel). A
browser may have `per_client` jobs waiting or running; since ids cost nothing to
make, one address may have at most `per_address` (a class's worth), and the queue
bound holds for all. The address is the socket's: X-Forwarded-For is never read.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, urlsplit

from flask import Blueprint, Response, abort, current_app, jsonify, request

from backend.clients import address, browser, browser_cookie, browser_of, give_browser_its_id
from backend.errors import error_response
from backend.speech import speech_info

bp = Blueprint("live", __name__, url_prefix="/api/live")
log = logging.getLogger("noisepath.live")

MAX_BODY = 4096          # bytes: a prompt and two numbers
MAX_PROMPT_CHARS = 1000  # past 77 tokens the prompt is truncated, as the precompute does
MAX_SEED = 2**31 - 1
MAX_GUIDANCE = 20.0
KEPT_JOBS = 200          # finished jobs whose status stays answerable
KEPT_FRAMES = 8          # finished jobs whose streamed frames stay in memory (the newest)
FIELDS = {"prompt", "seed", "guidance_scale"}
MOUNT = "/live"          # the live bundle's app
# The limits of a class sharing one server (serve's --live-queue, --live-per-client and
# --live-per-address default to these; tests build LiveService with them too).
LIVE_QUEUE = 16      # jobs that may wait
LIVE_PER_CLIENT = 1  # jobs one browser may have waiting or running
LIVE_PER_ADDRESS = 8  # jobs all browsers of one network address may have together
MAX_SHIPPED_TEXTS = 500  # shipped prompts the box offers when they are not in the live bundle
LIVE_HEADER = "Noisepath-Live"  # on every answer of a --live server: the page shows its box


@dataclass
class Job:
    id: str
    client: str
    prompt: str
    seed: int
    guidance_scale: float
    run_id: str
    state: str = "queued"  # queued | running | done | failed | cancelled
    error: str | None = None
    total: int = 0
    steps_done: int = 0
    frames: list = field(default_factory=list)  # precompute.live.Frame per streamed step
    cached: bool = False
    stop: bool = False  # its client cancelled it while it ran: it stops at the next step
    words: list = field(default_factory=list)  # the tokenizer's words: {word, pieces, known}
    address: str = "?"  # the network address it came from (per-address ceiling)
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None


class JobCancelled(Exception):
    """Raised by the runner when its job's client cancelled it (should_stop() came true):
    the job stopped and left no unfinished run."""


class QueueFull(Exception):
    """A job refused by a limit: 429 (per browser, per address) or 503 (the queue)."""

    def __init__(self, status: int, message: str, retry_after: int):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


class LiveService:
    """The queue, one worker thread, and the app that serves the live bundle.

    runner: precompute.live.LiveRunner (or anything with its has/target/run/live_dir).
    make_app(live_dir) builds the read-only app of the live bundle (None: none yet)."""

    def __init__(self, runner, make_app, max_queue: int = LIVE_QUEUE,
                 per_client: int = LIVE_PER_CLIENT,
                 max_seed: int = MAX_SEED, max_guidance: float = MAX_GUIDANCE, info=None,
                 per_address: int = LIVE_PER_ADDRESS):
        self.runner, self.make_app = runner, make_app
        self.max_queue, self.per_client, self.per_address = max_queue, per_client, per_address
        self.max_seed, self.max_guidance = max_seed, max_guidance
        self.info = dict(info or {})
        self.jobs: dict[str, Job] = collections.OrderedDict()
        self.queue: collections.deque[Job] = collections.deque()
        self.cond = threading.Condition()
        self.seconds_per_job = 10.0  # refined by every finished job
        self.live_app = None
        self.reload()
        self.worker = threading.Thread(target=self._work, name="noisepath-live", daemon=True)
        self.worker.start()

    # -- the live bundle's app
    def reload(self) -> None:
        """Build the app of the live bundle as it is on disk now (after each job)."""
        try:
            self.live_app = self.make_app(self.runner.live_dir)
        except Exception as e:  # no bundle yet, or one that does not load
            if (self.runner.live_dir / "bundle.json").exists():
                log.error("the live bundle %s does not load: %s", self.runner.live_dir, e)
            self.live_app = None

    def has_run(self, rid: str) -> bool:
        app = self.live_app
        return app is not None and rid in app.extensions["noisepath.store"].runs

    # -- jobs
    def submit(self, client: str, prompt: str, seed: int, guidance_scale: float,
               address: str | None = None) -> Job:
        """Queue a job of browser `client` from network `address` (default: client), or
        answer it at once from the cache; QueueFull when a limit says no."""
        rid = self.runner.target(prompt, seed, guidance_scale)
        address = client if address is None else address
        job = Job(uuid.uuid4().hex, client, prompt, seed, guidance_scale, rid,
                  words=self.runner.words(prompt), address=address)
        with self.cond:
            if self.runner.has(prompt, seed, guidance_scale) and self.has_run(rid):
                job.state, job.cached, job.finished = "done", True, time.monotonic()
                self.runner.used(prompt)  # a hit counts as a use for the size bound
            else:
                self._check_limits(client, address)
                self.queue.append(job)
                self.cond.notify()
            self.jobs[job.id] = job
            self._forget_old()
        return job

    def reopen(self, client: str, query: str, address: str | None = None) -> Job | None:
        """A live/ URL (`?prompt=<id>&seed=..&guidance=..`, as a job's `open` says) of a
        typed prompt that the size bound evicted: its job again (recomputed), or None
        when the URL names no evicted prompt (the page then opens as it would)."""
        q = parse_qs(query)
        pid = (q.get("prompt") or [""])[0]
        text = getattr(self.runner, "evicted_text", lambda _: None)(pid) if pid else None
        if text is None:  # the live folder was deleted: the URL's own text, if it is pid's
            text = self.text_of(pid, (q.get("text") or [""])[0])
        if text is None:
            return None
        try:
            seed = int((q.get("seed") or ["1"])[0])
            g = float((q.get("guidance") or [self.info.get("default_guidance_scale", 7.0)])[0])
        except ValueError:
            return None
        if not (0 <= seed <= self.max_seed and math.isfinite(g) and 0 <= g <= self.max_guidance):
            return None
        if self.has_run(self.runner.target(text, seed, g)):
            return None
        return self.submit(client, text, seed, g, address)

    def text_of(self, pid: str, text: str) -> str | None:
        """A live/ URL's `text` when it is the prompt that `pid` names (its id is derived
        from it, as a job's `open` is), so a crafted link cannot compute something else
        under that id; None otherwise. Checked as a typed prompt is."""
        text = " ".join(text.split())
        if not pid or not text or len(text) > MAX_PROMPT_CHARS:
            return None
        return text if self.prompt_id(text) == pid else None

    def prompt_id(self, text: str) -> str:
        """The id of a typed prompt (its run ids start with it, but for guidance 0,
        whose runs every prompt of a seed shares as `empty`)."""
        return prompt_of(self.runner.target(text, 0, 1.0))

    def _check_limits(self, client: str, address: str) -> None:
        """QueueFull naming the first limit a new job of this browser at this address
        would pass: per browser (at one address), per address, the queue's length."""
        active = [j for j in self.jobs.values() if j.state in ("queued", "running")]
        mine = [j for j in active if j.client == client and j.address == address]
        if len(mine) >= self.per_client:
            wait = self.retry_after(min(map(self.ahead, mine)))
            raise QueueFull(429, f"this browser already has {len(mine)} job(s) waiting or "
                            f"running (at most {self.per_client} per browser: "
                            f"--live-per-client); try again in about {wait} s", wait)
        shared = [j for j in active if j.address == address]
        if len(shared) >= self.per_address:
            wait = self.retry_after(min(map(self.ahead, shared)))
            raise QueueFull(429, f"{len(shared)} jobs from your network address are waiting "
                            f"or running (at most {self.per_address} per address, which a "
                            f"class behind one router shares: --live-per-address); try "
                            f"again in about {wait} s", wait)
        if len(self.queue) >= self.max_queue:
            wait = self.retry_after(len(self.queue))
            raise QueueFull(503, f"busy: {len(self.queue)} jobs are waiting (at most "
                            f"{self.max_queue}: --live-queue); try again in about {wait} s",
                            wait)

    def retry_after(self, ahead: int) -> int:
        """Seconds until a job with `ahead` jobs before it is likely done (an estimate
        from the last jobs' durations)."""
        return max(1, math.ceil(self.seconds_per_job * (ahead + 1)))

    def ahead(self, job: Job) -> int:
        """Jobs that will run before this one (the running one included)."""
        with self.cond:
            if job.state != "queued":
                return 0
            running = any(j.state == "running" for j in self.jobs.values())
            return self.queue.index(job) + running if job in self.queue else 0

    def cancel(self, job: Job) -> bool:
        """A queued job is dropped; a running one is told to stop: the runner stops it
        at its next step, removes its unfinished runs, and it becomes "cancelled"."""
        with self.cond:
            if job.state == "queued" and job in self.queue:
                self.queue.remove(job)
                job.state, job.finished = "cancelled", time.monotonic()
                return True
            if job.state == "running":
                job.stop = True
                return True
            return False

    def _forget_old(self) -> None:
        while len(self.jobs) > KEPT_JOBS:
            old = next((k for k, j in self.jobs.items()
                        if j.state not in ("queued", "running")), None)
            if old is None:
                return
            del self.jobs[old]

    def _work(self) -> None:
        while True:
            with self.cond:
                while not self.queue:
                    self.cond.wait()
                job = self.queue.popleft()
                job.state, job.started = "running", time.monotonic()
            self._run(job)

    def _run(self, job: Job) -> None:
        def on_frame(i, total, frame):
            job.total = total
            job.frames.append(frame)
            job.steps_done = len(job.frames)
        error, cancelled = None, False
        try:
            self.runner.run(job.prompt, job.seed, job.guidance_scale, on_frame=on_frame,
                            should_stop=lambda: job.stop)
        except JobCancelled:  # the runner removed the job's unfinished runs
            cancelled = True
        except Exception as e:  # reported to the client; the runner left no half-written run
            log.error("live job %s failed", job.id, exc_info=e)
            first = str(e).splitlines()[0][:200] if str(e) else ""
            error = f"the job failed: {type(e).__name__}: {first}"
        self.reload()
        if cancelled:
            job.finished = time.monotonic()
            job.state = "cancelled"
            return
        if error is None and not self.has_run(job.run_id):
            error = ("the run was computed but the live bundle does not load; the server log "
                     "says why")
        job.finished = time.monotonic()
        if error is None:
            self.seconds_per_job = 0.5 * self.seconds_per_job + 0.5 * (job.finished - job.started)
        self._drop_old_frames()
        job.error = error
        job.state = "failed" if error else "done"  # last: a client that sees it sees the rest

    def _drop_old_frames(self) -> None:
        """Frames are for watching a job; only the newest finished jobs keep them (an
        SD-sized job's frames are megabytes)."""
        with self.cond:
            finished = [j for j in self.jobs.values() if j.finished is not None and j.frames]
            for old in finished[:max(0, len(finished) - KEPT_FRAMES)]:
                old.frames = []

    def status(self, job: Job) -> dict:
        done = job.state == "done"
        return {
            "id": job.id, "state": job.state, "prompt": job.prompt, "seed": job.seed,
            "guidance_scale": job.guidance_scale, "run_id": job.run_id, "cached": job.cached,
            "ahead": self.ahead(job), "steps_done": job.steps_done,
            "num_inference_steps": self.info.get("num_inference_steps"),
            # steps_done counts UNet calls: Heun and KDPM2 make two a step, PNDM more
            "unet_calls": job.total or self.info.get("unet_calls") or self.info.get("num_inference_steps"),
            "error": job.error, "words": job.words,
            # the typed prompt's id even at guidance 0, so the page shows that prompt and
            # the URL can compute it again from its text
            "open": (f"live/?prompt={self.prompt_id(job.prompt)}&seed={job.seed}"
                     f"&guidance={format_number(job.guidance_scale)}"
                     f"&text={quote(job.prompt, safe='')}") if done else None,
        }


def prompt_of(rid: str) -> str:
    """The prompt id of a run id (`<prompt id>--s<seed>-g<guidance>`)."""
    return rid.split("--s")[0]


def format_number(g: float) -> str:
    return str(int(g)) if float(g).is_integer() else repr(float(g))


# ------------------------------------------------------------------------ the API

def service() -> LiveService:
    return current_app.config["LIVE"]


def refuse(status: int, name: str, message: str, retry_after: int | None = None):
    resp = error_response(status, name, message)
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    abort(resp)


def check_origin() -> None:
    """A state-changing request from a page of another site is refused; a request
    without Origin (curl, a script) is a same-machine client and allowed."""
    origin = request.headers.get("Origin")
    site = request.headers.get("Sec-Fetch-Site")
    if site == "cross-site" or (origin is not None and (
            origin == "null" or urlsplit(origin).netloc.lower() != request.host.lower())):
        refuse(403, "cross_site", f"POST from another site ({(origin or site)[:80]!r}) is refused")


def read_body() -> dict:
    if request.content_length is None and request.headers.get("Transfer-Encoding"):
        refuse(411, "length_required", "send the body with a Content-Length")
    if (request.content_length or 0) > MAX_BODY:
        refuse(413, "payload_too_large", f"the body is larger than {MAX_BODY} bytes")
    if request.mimetype != "application/json":
        refuse(415, "unsupported_media_type", "send the job as JSON (Content-Type: "
               "application/json)")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        refuse(400, "bad_request", "the body must be a JSON object with prompt, seed and "
               "guidance_scale")
    return body


def check_job(body: dict, svc: LiveService) -> tuple[str, int, float]:
    """(prompt, seed, guidance_scale) or a 400 naming the first bad field."""
    def bad(message):
        refuse(400, "bad_request", message)
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        bad(f"unknown field(s) {', '.join(repr(k[:40]) for k in unknown)}: a job has "
            "prompt, seed and guidance_scale only")
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        bad("prompt must be a string")
    prompt = " ".join(prompt.split())
    if not prompt:
        bad("prompt is empty: type what the image should show")
    if len(prompt) > MAX_PROMPT_CHARS:
        bad(f"prompt is longer than {MAX_PROMPT_CHARS} characters")
    seed = body.get("seed", 1)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= svc.max_seed:
        bad(f"seed must be a whole number from 0 to {svc.max_seed}")
    g = body.get("guidance_scale", svc.info.get("default_guidance_scale", 7.0))
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) \
            or not 0 <= g <= svc.max_guidance:
        bad(f"guidance_scale must be a number from 0 to {format_number(svc.max_guidance)}")
    return prompt, seed, float(g)


# -- who is asking: a browser (its cookie's id) at a network address (backend/clients.py)

bp.after_request(give_browser_its_id)


def job_or_404(job_id: str, own: bool = False) -> Job:
    """The job; with own, only when this browser submitted it: another browser's job
    gets the answer of an unknown id."""
    job = service().jobs.get(job_id)
    if job is None or (own and job.client != browser()):
        refuse(404, "not_found", f"unknown job {job_id[:40]!r} (finished jobs are forgotten "
               "after a while; the run stays in the live bundle)")
    return job


def no_store(resp):
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/info.json")
def info():
    svc = service()
    return no_store(jsonify({
        **svc.info, "available": True, "max_seed": svc.max_seed,
        "max_guidance_scale": svc.max_guidance, "guidance_scales": svc.runner.base_scales,
        "queue": {"waiting": len(svc.queue), "max": svc.max_queue,
                  "per_client": svc.per_client, "per_address": svc.per_address},
        "speech": speech_info(current_app),
    }))


@bp.post("/jobs")
def submit():
    check_origin()
    svc = service()
    prompt, seed, g = check_job(read_body(), svc)
    try:
        job = svc.submit(browser(), prompt, seed, g, address())
    except QueueFull as e:
        refuse(e.status, "busy" if e.status == 503 else "too_many_requests", str(e),
               e.retry_after)
    resp = jsonify(svc.status(job))
    resp.status_code = 200 if job.state == "done" else 202
    resp.headers["Location"] = f"jobs/{job.id}.json"
    return no_store(resp)


@bp.get("/jobs/<job_id>.json")
def job_status(job_id: str):
    return no_store(jsonify(service().status(job_or_404(job_id, own=True))))


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id: str):
    check_origin()
    svc = service()
    job = job_or_404(job_id)
    if job.client != browser():
        refuse(403, "not_yours", "only the browser that submitted a job may cancel it")
    svc.cancel(job)
    return no_store(jsonify(svc.status(job)))


@bp.get("/jobs/<job_id>/frames/<int:i>/<kind>.png")
def frame(job_id: str, i: int, kind: str):
    job = job_or_404(job_id, own=True)
    if kind not in ("latent", "predicted"):
        refuse(404, "not_found", "a frame is latent.png or predicted.png")
    frames = job.frames
    if i >= len(frames):
        refuse(404, "not_found", f"step {i} of job {job_id[:40]} is not computed yet "
               f"({job.steps_done} are)" if i >= job.steps_done else
               f"the frames of job {job_id[:40]} are no longer kept (it finished a while ago)")
    resp = Response(getattr(frames[i], kind), mimetype="image/png")
    resp.headers["Cache-Control"] = "private, max-age=3600"
    return resp


# ------------------------------------------------------------- the live bundle's app

class LiveMount:
    """WSGI: /live/... is the live bundle's own app (the whole front end over it);
    /live/api/live/... is this server's live API, so the page under live/ can type too.
    Every answer carries the Noisepath-Live header: the page looks for it on a HEAD of
    api/index.json (which every server and export has), so a page without --live asks
    for nothing that is not there."""

    def __init__(self, app, svc: LiveService):
        self.app, self.svc = app, svc

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")

        def marked(status, headers, exc_info=None):  # the page asks for live by this header
            return start_response(status, [*headers, (LIVE_HEADER, "1")], exc_info)
        return self._route(environ, marked, path)

    def _route(self, environ, start_response, path):
        if path == MOUNT:
            location = f"{environ.get('SCRIPT_NAME', '')}{MOUNT}/"
            start_response("308 Permanent Redirect",
                           [("Location", location), ("Content-Length", "0")])
            return [b""]
        if not path.startswith(MOUNT + "/"):
            return self.app(environ, start_response)
        rest = path[len(MOUNT):]
        if rest.startswith("/api/live/"):
            return self.app({**environ, "PATH_INFO": rest}, start_response)
        if rest == "/" and environ.get("REQUEST_METHOD") == "GET":
            reopened = self._reopen(environ, start_response)
            if reopened is not None:
                return reopened
        live = self.svc.live_app
        if live is None:
            from backend.errors import plain_error
            body, headers = plain_error(404, "not_found", "no typed prompt has been computed "
                                        "yet: type one on the main page")
            start_response("404 Not Found", headers)
            return [body]
        return live.wsgi_app({**environ, "PATH_INFO": rest,
                              "SCRIPT_NAME": environ.get("SCRIPT_NAME", "") + MOUNT},
                             start_response)


    def _reopen(self, environ, start_response):
        """The URL of an evicted typed prompt: queue its job again and send the browser
        to the main page, whose prompt box streams it (?live_job=) and then opens it.
        Queuing work is a change of state: only for the user's own navigation (typed,
        bookmarked, or from this app: Sec-Fetch-Site none or same-origin, or a client
        without Fetch Metadata), never for another site's link, image or script."""
        site = environ.get("HTTP_SEC_FETCH_SITE")
        dest = environ.get("HTTP_SEC_FETCH_DEST")
        if site not in (None, "none", "same-origin") or dest not in (None, "document"):
            return None
        try:
            job = self.svc.reopen(browser_of(environ)[0], environ.get("QUERY_STRING", ""),
                                  environ.get("REMOTE_ADDR") or "?")
        except QueueFull:
            job = None  # busy: the page opens without it, as a full queue would say
        if job is None:
            return None
        location = f"{environ.get('SCRIPT_NAME', '')}/?live_job={job.id}"
        headers = [("Location", location), ("Content-Length", "0"), ("Cache-Control", "no-store")]
        cookie = browser_cookie(environ)  # the page watches the job as this browser
        start_response("303 See Other", headers + ([("Set-Cookie", cookie)] if cookie else []))
        return [b""]


def init_app(app) -> None:
    """Register the live API and mount the live bundle (create_app, with LIVE set)."""
    app.register_blueprint(bp)
    from backend import speech
    speech.init_app(app)  # POST api/live/speech: a spoken prompt (backend/speech.py)
    app.wsgi_app = LiveMount(app.wsgi_app, app.config["LIVE"])


# ------------------------------------------------------------------ the server's set-up

def missing_libraries() -> str | None:
    """The one-line reason `serve --live` cannot run here, or None."""
    import importlib.util

    missing = [m for m in ("torch", "diffusers", "transformers")
               if importlib.util.find_spec(m) is None]
    if missing:
        return (f"--live runs the model, which needs {', '.join(missing)}: "
                "pip install 'noisepath[precompute]' (serving without --live needs none)")
    return None


def make_service(model, device: str, live_dir, shipped_config: dict, shipped_scales,
                 frontend_dir, steps: int | None = None, max_queue: int = LIVE_QUEUE,
                 per_client: int = LIVE_PER_CLIENT, max_prompts: int | None = None,
                 threads: int = 0, shipped_dir=None,
                 per_address: int = LIVE_PER_ADDRESS) -> LiveService:
    """Load the model (slow) and start the queue. The live settings follow the shipped
    bundle's when it was made by the same model (precompute/live.py)."""
    from pathlib import Path

    from backend import REPO, create_app
    from precompute.live import DEFAULT_MAX_PROMPTS, LiveRunner, default_live_dir, live_settings

    model_path = Path(model)
    same = shipped_config.get("model")
    if same is not None and model_path.exists() and (REPO / same).exists() \
            and (REPO / same).resolve() == model_path.resolve():
        model = same  # the shipped bundle's own name for it: its settings apply
    settings = live_settings(str(model), shipped_config, steps)
    live_dir = Path(live_dir) if live_dir else default_live_dir(settings)
    same_model = settings["model"] == str(shipped_config.get("model"))
    runner = LiveRunner(settings, live_dir, shipped_scales if same_model else [0, 1, 7],
                        device=device, threads=threads,
                        max_prompts=max_prompts or DEFAULT_MAX_PROMPTS,
                        model_path=str(model_path) if model_path.exists() else str(model))
    runner.load()
    if shipped_dir is not None:
        runner.seed_from(shipped_dir)  # same settings: typed and shipped prompts compare
    shipped = shipped_prompts(runner, settings, shipped_config, shipped_dir)

    def make_app(root):
        if not (Path(root) / "bundle.json").exists():
            return None
        return create_app({"BUNDLE_DIR": root, "FRONTEND_DIR": frontend_dir,
                           "SKIP_INVALID": True, "ALLOWED_HOSTS": ["*"]})
    default_g = shipped_config.get("default_guidance_scale") if same_model else None
    return LiveService(runner, make_app, max_queue=max_queue, per_client=per_client,
                       per_address=per_address,
                       info={"model": settings["model"], "device": device,
                             "num_inference_steps": settings["num_inference_steps"],
                             "unet_calls": runner.unet_calls(),
                             "scheduler": settings["scheduler"],
                             "demo_model": same_model and settings["model"] == "static/demo-model",
                             "default_guidance_scale": default_g if default_g is not None else 7.0,
                             "shipped": shipped})


def shipped_prompts(runner, settings: dict, shipped_config: dict, shipped_dir) -> dict:
    """Whether the shipped prompts are in the live bundle (seeded: same settings), and
    when not, which settings differ and the shipped texts, which the prompt box offers
    so that a typed prompt can be compared with a shipped one run in the live settings."""
    from pathlib import Path

    from precompute.writer import CONFIG_IDENTITY_KEYS

    seeded = bool(runner._shipped())
    differs = [k for k in CONFIG_IDENTITY_KEYS if k != "dtype"
               and shipped_config.get(k) != settings.get(k)]
    texts = []
    if not seeded and shipped_dir is not None:
        for f in sorted(Path(shipped_dir).glob("prompts/*/prompt.json"))[:MAX_SHIPPED_TEXTS]:
            try:
                text = json.loads(f.read_text(encoding="utf-8")).get("text")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(text, str) and text.strip():
                texts.append(text)
    return {"in_live_bundle": seeded, "differs_in": [] if seeded else differs,
            "texts": sorted(texts)}
