"""`noisepath serve`: startup messages, refusals, and the app under waitress."""

import argparse
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend import serve_cli


def parse(*argv):
    p = argparse.ArgumentParser()
    serve_cli.add_arguments(p)
    return p.parse_args(list(argv))


class FakeServer:
    effective_port = 8123

    def run(self):
        pass

    def close(self):
        pass


@pytest.fixture
def no_server(monkeypatch):
    opened = []
    monkeypatch.setattr(serve_cli, "make_server", lambda *a, **k: FakeServer())
    monkeypatch.setattr(serve_cli.webbrowser, "open", opened.append)
    monkeypatch.setattr(serve_cli.threading, "Timer",
                        lambda delay, fn, args: type("T", (), {"start": lambda s: fn(*args)})())
    return opened


def test_startup_prints_the_url_to_open(synthetic_bundle_ro, no_server, capsys):
    assert serve_cli.run(parse("--bundle", str(synthetic_bundle_ro))) == 0
    out = capsys.readouterr().out
    assert "Open http://127.0.0.1:8123/ in a web browser." in out
    assert no_server == []


def test_open_launches_the_browser(synthetic_bundle_ro, no_server):
    serve_cli.run(parse("--bundle", str(synthetic_bundle_ro), "--open"))
    assert no_server == ["http://127.0.0.1:8123/"]


def test_host_all_interfaces_lists_lan_addresses(synthetic_bundle_ro, no_server, monkeypatch,
                                                 capsys):
    monkeypatch.setattr(serve_cli, "lan_addresses", lambda: ["192.168.1.20"])
    serve_cli.run(parse("--bundle", str(synthetic_bundle_ro), "--host", "0.0.0.0"))
    out = capsys.readouterr().out
    assert "http://127.0.0.1:8123/" in out
    assert "Students on the same network open:\n  http://192.168.1.20:8123/" in out


def test_lan_addresses_are_not_loopback():
    assert all(not a.startswith("127.") for a in serve_cli.lan_addresses())


def test_missing_demo_bundle_says_how_to_make_one(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "static" / "demo-bundle"
    monkeypatch.setattr(serve_cli, "DEFAULT_BUNDLE", missing)
    assert serve_cli.run(parse("--bundle", str(missing))) == 1
    err = capsys.readouterr().err
    assert "demo bundle is missing" in err and "noisepath train-demo" in err
    assert "--bundle DIR" in err


def test_missing_bundle_folder_is_named(tmp_path, capsys):
    assert serve_cli.run(parse("--bundle", str(tmp_path / "nope"))) == 1
    assert "no bundle folder at" in capsys.readouterr().err


def test_bad_bundle_exits_1_with_file_and_field(synthetic_bundle, capsys):
    run = synthetic_bundle / "runs" / "empty--s1-g0"
    (run / "noise_pred.npy").unlink()
    assert serve_cli.run(parse("--bundle", str(synthetic_bundle))) == 1
    err = capsys.readouterr().err
    assert "runs/empty--s1-g0/noise_pred.npy" in err and "--skip-invalid" in err


def test_skip_invalid_lists_the_skipped_runs(synthetic_bundle, no_server, capsys):
    (synthetic_bundle / "runs" / "empty--s1-g0" / "noise_pred.npy").unlink()
    assert serve_cli.run(parse("--bundle", str(synthetic_bundle), "--skip-invalid")) == 0
    out = capsys.readouterr()
    assert "skipped 1 invalid run(s)" in out.err and "empty--s1-g0" in out.err
    assert "17 runs" in out.out


def test_busy_port_is_a_clear_message(synthetic_bundle_ro, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert serve_cli.run(parse("--bundle", str(synthetic_bundle_ro),
                                   "--port", str(port))) == 1
    assert f"port {port} on 127.0.0.1 is already in use" in capsys.readouterr().err


@pytest.fixture
def served(synthetic_bundle_ro, request):
    """`noisepath serve` in a subprocess on a free loopback port (param ignore_sigint:
    start it with SIGINT ignored, as a script's background job is)."""
    ignore = getattr(request, "param", {}).get("ignore_sigint", False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "serve", "--bundle", str(synthetic_bundle_ro),
         "--port", "0", "--threads", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore else None)
    line = ""
    deadline = time.monotonic() + 120  # a bound for a hung start, generous for a busy CPU
    while "Open http" not in line and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            pytest.fail(proc.stderr.read())
    port = int(line.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        pass  # listening
    yield proc, port
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def test_serves_under_waitress_without_server_header(served):
    proc, port = served
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for url in ["/api/index.json", "/api/runs/empty--s1-g0/steps/0.json", "/nope"]:
        conn.request("GET", url)
        r = conn.getresponse()
        r.read()
        assert r.status in (200, 404)
        assert r.getheader("Server") is None and r.getheader("Via") is None
        assert r.getheader("X-Content-Type-Options") == "nosniff"
    conn.close()


def test_ctrl_c_stops_cleanly(served):
    proc, port = served
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    assert "stopped" in proc.stdout.read()


@pytest.mark.parametrize("served", [{"ignore_sigint": True}], indirect=True)
def test_ctrl_c_stops_even_when_started_with_sigint_ignored(served):
    """A background job of a script starts with SIGINT ignored (POSIX), and Python keeps
    that for its own children; serve still stops on it."""
    proc, port = served
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    assert "stopped" in proc.stdout.read()


def test_sigterm_stops_cleanly(served):
    proc, port = served
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert "stopped" in proc.stdout.read()


def test_never_flask_debug_server():
    source = Path(serve_cli.__file__).read_text(encoding="utf-8")
    assert "app.run(" not in source and "waitress" in source
    assert os.environ.get("FLASK_DEBUG") in (None, "", "0")


def test_missing_front_end_is_a_warning(synthetic_bundle_ro, no_server, monkeypatch, tmp_path,
                                        capsys):
    import backend
    monkeypatch.setattr(backend, "FRONTEND", tmp_path / "none")
    assert serve_cli.run(parse("--bundle", str(synthetic_bundle_ro))) == 0
    assert "no front end" in capsys.readouterr().err
