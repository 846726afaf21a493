"""`noisepath serve`: the app on a bundle under waitress, a production WSGI server.

    noisepath serve                         the shipped demo bundle on http://127.0.0.1:8000/
    noisepath serve --bundle DIR --open     another bundle, and open the browser
    noisepath serve --host 0.0.0.0          share with a class: prints the LAN address(es)

What the server guarantees (bounded connections, timeouts, JSON errors, the Host
check) is in docs/api.md; the connection limits are in backend/server.py.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import socket
import sys
import threading
import webbrowser
from pathlib import Path

from backend import DEFAULT_BUNDLE, REPO, create_app
from backend.format import BundleError
from backend.hosts import allowed_hosts
from backend.live import LIVE_PER_ADDRESS, LIVE_PER_CLIENT, LIVE_QUEUE
from backend.server import CONNECTION_LIMIT, PER_CLIENT_LIMIT
from backend.speech import SPEECH_AT_ONCE, SPEECH_PER_ADDRESS

DEFAULT_MODEL = REPO / "static" / "demo-model"
DEFAULT_THREADS = 16
MAX_THREADS = 256
ALL_INTERFACES = ("0.0.0.0", "", "::")
INTERRUPTED_MESSAGE = "noisepath serve: stopped during start-up; nothing was served"
DEMO_HELP = ("The demo bundle is made by the demo model (docs/demo-model.md):\n"
             "  noisepath train-demo      # train the tiny demo model\n"
             "  noisepath precompute ...  # record its runs into static/demo-bundle/\n"
             "or serve a bundle you have:  noisepath serve --bundle DIR")


def add_arguments(p) -> None:
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, metavar="DIR",
                   help="the bundle folder to serve")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 lets other machines (a class) connect")
    p.add_argument("--port", type=port_number, default=8000,
                   help="TCP port, 1-65535 (0: any free port, printed)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="another host name the app may be opened as (a DNS name of this "
                   "machine, a reverse proxy's); repeatable. Requests for other names get "
                   "400 (DNS rebinding); \"*\" answers any")
    p.add_argument("--open", action="store_true", help="open the app in a web browser")
    p.add_argument("--threads", type=thread_count, default=DEFAULT_THREADS,
                   help=f"worker threads answering requests, 1-{MAX_THREADS}")
    p.add_argument("--checksums", action="store_true",
                   help="verify every file's SHA-256 at startup (slower on big bundles)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="serve the valid runs of a bundle with bad ones, and list the rest")
    p.add_argument("--connections-per-address", type=connection_count,
                   default=PER_CLIENT_LIMIT, metavar="N",
                   help="open connections one client address may hold; a browser holds up "
                   "to 6, and a class behind one router shares an address (default "
                   f"{PER_CLIENT_LIMIT}: 40 browsers; at most {CONNECTION_LIMIT})")
    live = p.add_argument_group("typed prompts (--live: needs the [precompute] extra)")
    live.add_argument("--live", action="store_true",
                      help="add a prompt box: the server runs typed prompts on --model with "
                      "the precompute's loop, into a live bundle of its own (docs/api.md)")
    live.add_argument("--model", default=str(DEFAULT_MODEL), metavar="MODEL",
                      help="the model --live runs: a diffusers Stable Diffusion folder or hub "
                      "id (default: the shipped demo model)")
    live.add_argument("--device", default="cpu", choices=["auto", "cuda", "mps", "cpu"],
                      help="where --live runs the model (default: cpu)")
    live.add_argument("--asr-model", metavar="MODEL",
                      help="speech recognizer for spoken prompts: a Whisper folder or hub "
                      "id, run on --device (default: the demo model's own recognizer, with "
                      "the [speech] extra; another --model needs this)")
    live.add_argument("--speech-per-address", type=lambda t: whole_number(
        t, 1, 1000, "--speech-per-address"), default=SPEECH_PER_ADDRESS, metavar="N",
        help="spoken clips all browsers of one network address (a class behind one "
        "router) may have being recognized at once, one per browser (default "
        f"{SPEECH_PER_ADDRESS}: below --speech-at-once, so another address still gets in)")
    live.add_argument("--speech-at-once", type=lambda t: whole_number(
        t, 1, 64, "--speech-at-once"), default=SPEECH_AT_ONCE, metavar="N",
        help="spoken clips the server holds at once, every browser together (default "
        f"{SPEECH_AT_ONCE}); "
        "one more gets a 503 and the page sends it again a second later")
    live.add_argument("--live-dir", type=Path, metavar="DIR",
                      help="the live bundle folder (default: under the user's cache folder)")
    live.add_argument("--live-steps", type=lambda t: whole_number(t, 1, 1000, "--live-steps"),
                      metavar="N", help="num_inference_steps of typed prompts (default: the "
                      "shipped bundle's for its model, else 50)")
    live.add_argument("--live-queue", type=lambda t: whole_number(t, 1, 1000, "--live-queue"),
                      default=LIVE_QUEUE, metavar="N", help=f"jobs that may wait (default {LIVE_QUEUE})")
    live.add_argument("--live-per-client", type=lambda t: whole_number(
        t, 1, 1000, "--live-per-client"), default=LIVE_PER_CLIENT, metavar="N",
        help=f"jobs one browser may have waiting or running (default {LIVE_PER_CLIENT})")
    live.add_argument("--live-per-address", type=lambda t: whole_number(
        t, 1, 1000, "--live-per-address"), default=LIVE_PER_ADDRESS, metavar="N",
        help="jobs all browsers of one network address (a class behind one router) may "
        f"have waiting or running together (default {LIVE_PER_ADDRESS}; --live-queue still "
        "applies)")
    live.add_argument("--live-cache-prompts", type=lambda t: whole_number(
        t, 1, 100000, "--live-cache-prompts"), default=50, metavar="N",
        help="typed prompts the live bundle keeps; the least recently used go (default 50)")


def whole_number(text: str, low: int, high: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{what} must be a whole number from {low} to "
                                         f"{high}, not {text!r}")
    return value


def port_number(text: str) -> int:
    return whole_number(text, 0, 65535, "the port")


def thread_count(text: str) -> int:
    return whole_number(text, 1, MAX_THREADS, "the number of threads")


def connection_count(text: str) -> int:
    return whole_number(text, 1, CONNECTION_LIMIT, "the number of connections")


def lan_addresses() -> list[str]:
    """This machine's IPv4 addresses that other machines on the network can reach."""
    found = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.add(info[4][0])
    except OSError:
        pass
    try:  # the address of the interface with the default route; sends no packet
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 80))
            found.add(s.getsockname()[0])
    except OSError:
        pass
    return sorted(a for a in found if not a.startswith("127."))


def urls(host: str, port: int, lan: list[str] | None = None) -> list[str]:
    if host in ALL_INTERFACES:
        lan = lan_addresses() if lan is None else lan
        return [f"http://127.0.0.1:{port}/"] + [f"http://{a}:{port}/" for a in lan]
    shown = f"[{host}]" if ":" in host else host
    return [f"http://{shown}:{port}/"]


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (OSError if the port is taken), for waitress to listen on."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        if os.name != "nt":  # on Windows this flag would let two servers share a port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def make_server(app, host: str, port: int, threads: int,
                connections_per_address: int = PER_CLIENT_LIMIT):
    """waitress on host:port with noisepath's connection limits (backend/server.py)."""
    from backend import server

    sock = listen_socket(host, port)
    try:
        return server.make_server(app, sock, threads,
                                  per_client_limit=connections_per_address)
    except BaseException:
        sock.close()
        raise


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_signals():
    """Ctrl+C (SIGINT) and SIGTERM (docker stop, systemd, kill) stop the server cleanly,
    also when it was started from a script that ignores SIGINT in background jobs (a
    Python child inherits that, and Ctrl+C then did nothing). Restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run(args) -> int:
    """Start (load the bundle, listen), then serve until Ctrl+C or SIGTERM."""
    with stop_signals():
        server = None
        try:
            started = start(args)
            if isinstance(started, int):
                return started
            server, addresses, store = started
        except KeyboardInterrupt:
            if server is not None:
                server.close()
            print(f"\n{INTERRUPTED_MESSAGE}", file=sys.stderr, flush=True)
            return 130
        return serve(server, addresses, store, args.open)


def start(args):
    """The listening server, its URLs and the store; or an exit code after a message."""
    lan = lan_addresses() if args.host in ALL_INTERFACES else []
    live = speech = None
    if args.live:
        live = start_live(args)
        if isinstance(live, int):
            return live
        speech = start_speech(args, live.info.get("demo_model", False))
        if isinstance(speech, int):
            return speech
    try:
        app = create_app({"BUNDLE_DIR": args.bundle, "CHECKSUMS": args.checksums,
                          "SKIP_INVALID": args.skip_invalid, "LIVE": live,
                          "SPEECH": speech[0] if speech else None,
                          "SPEECH_UNAVAILABLE": speech[1] if speech else None,
                          "ALLOWED_HOSTS": allowed_hosts(args.host, lan, args.allowed_host)})
    except BundleError as e:
        if not args.bundle.exists() and args.bundle.resolve() == DEFAULT_BUNDLE.resolve():
            print(f"noisepath serve: the demo bundle is missing ({DEFAULT_BUNDLE}).\n"
                  f"{DEMO_HELP}", file=sys.stderr)
        elif not args.bundle.is_dir():
            print(f"noisepath serve: there is no bundle folder at {args.bundle}", file=sys.stderr)
        else:
            print(f"noisepath serve: {e}\n\nCheck it with `noisepath validate {args.bundle}`;"
                  " serve only its valid runs with --skip-invalid.", file=sys.stderr)
        return 1
    store = app.extensions["noisepath.store"]
    if store.frontend_file("index.html") is None:
        print(f"warning: no front end at {store.frontend}/index.html: only the API will answer",
              file=sys.stderr)
    b = store.bundle
    if b.skipped_runs or b.skipped_prompts or b.skipped_trajectories or b.skipped_sections:
        sections = "".join(f", the {name} section" for name in b.skipped_sections)
        print(f"skipped {len(b.skipped_runs)} invalid run(s), {len(b.skipped_prompts)} "
              f"prompt(s), {len(b.skipped_trajectories)} trajectory map(s){sections}:",
              file=sys.stderr)
        for p in b.problems:
            if p.severity == "error":
                print(f"  {p}", file=sys.stderr)
    try:
        server = make_server(app, args.host, args.port, args.threads,
                             args.connections_per_address)
    except (OSError, UnicodeError) as e:  # UnicodeError: an unusable host name
        if getattr(e, "errno", None) == errno.EADDRINUSE:
            print(f"noisepath serve: port {args.port} on {args.host} is already in use "
                  f"(another noisepath serve?). Stop it, or pick another port: "
                  f"--port {args.port + 1}", file=sys.stderr)
        else:
            print(f"noisepath serve: cannot listen on {args.host}:{args.port}: "
                  f"{getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return 1
    port = server.effective_port if hasattr(server, "effective_port") else args.port
    return server, urls(args.host, int(port), lan), store


def start_live(args):
    """The live service (model loaded), or an exit code after a one-line message."""
    from backend import FRONTEND
    from backend.live import make_service, missing_libraries

    problem = missing_libraries()
    if problem:
        print(f"noisepath serve: {problem}", file=sys.stderr)
        return 2
    if args.host in ALL_INTERFACES:
        print("warning: --live on all interfaces: anyone on the network can spend this "
              "machine's compute on prompts (jobs are queued and limited per browser "
              "and per address)",
              file=sys.stderr)
    try:  # the served bundle's settings (create_app checks the bundle itself below)
        index = json.loads((args.bundle / "bundle.json").read_text(encoding="utf-8"))
        config, scales = dict(index["config"]), list(index["guidance_scales"])
    except (OSError, ValueError, KeyError, TypeError):
        config, scales = {}, [0, 1, 7]
    print(f"loading {args.model} for --live on {args.device} ...", file=sys.stderr, flush=True)
    try:
        return make_service(args.model, args.device, args.live_dir, config, scales, FRONTEND,
                            steps=args.live_steps, max_queue=args.live_queue,
                            per_client=args.live_per_client,
                            per_address=args.live_per_address,
                            max_prompts=args.live_cache_prompts, shipped_dir=args.bundle)
    except Exception as e:  # a missing model, a device that is not there
        print(f"noisepath serve: --live cannot load {args.model}: "
              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1


def start_speech(args, demo_model: bool):
    """(the spoken-prompt service of --live, None) (backend/speech.py), or (None, why)
    after printing why in one line (what to install, or --asr-model; the page says it
    too), or exit code 1 when the --asr-model does not load (as --model stops it)."""
    from backend.speech import make_speech, unavailable

    asr_model = args.asr_model
    problem = unavailable(asr_model, demo_model)
    if problem:
        print(f"note: {problem}", file=sys.stderr)
        return None, problem
    if asr_model:
        print(f"loading {asr_model} for spoken prompts on {args.device} ...", file=sys.stderr,
              flush=True)
    try:
        return make_speech(asr_model, args.device, demo_model,
                           args.speech_per_address, args.speech_at_once), None
    except Exception as e:  # a missing model, a folder that is not Whisper
        print(f"noisepath serve: --asr-model cannot load {asr_model}: "
              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1


def serve(server, addresses: list[str], store, open_browser: bool) -> int:
    try:
        print(f"Noisepath: {len(store.runs)} runs of {store.bundle.root}")
        print(f"Open {addresses[0]} in a web browser.")
        if len(addresses) > 1:
            print("Students on the same network open:")
            for url in addresses[1:]:
                print(f"  {url}")
        print("Press Ctrl+C to stop.", flush=True)
        if open_browser:
            threading.Timer(0.5, webbrowser.open, [addresses[0]]).start()
        server.run()  # returns on Ctrl+C (waitress catches KeyboardInterrupt)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    print("\nstopped", flush=True)
    return 0
