"""The bundle's spoken examples (docs/bundle-format.md, "Spoken examples"): the optional
`speech/` section that `python -m precompute.speech_bundle BUNDLE` writes. Each example
is a prompt of the bundle spoken by an espeak-ng voice, the clip the demo recognizer
heard (backend/speech.py), its spectrogram, and what the recognizer made of it (words
with confidences, n-best), with the run it leads to. So the static site shows the whole
chain, speech -> transcript -> prompt -> run, without a server or a recognizer.

This module owns the section's format:
- `check_section`: backend/validator.py's check of speech/index.json and its files, by
  file and field (the WAV and PNG headers are read; checksums when validation has them);
- `kept_examples`: the examples whose run is served (serve --skip-invalid drops others);
- the blueprint: GET api/speech/examples.json (always answered: `examples` is empty for a
  bundle without the section) and GET api/speech/files/<file> (the clips and
  spectrograms), which `noisepath export` writes as files (`api_paths`).

No torch and no pocketsphinx: serving reads JSON and files only.
"""

from __future__ import annotations

import struct
from pathlib import Path

SECTION = "speech"
INDEX = f"{SECTION}/index.json"
FORMAT = "noisepath-speech"
VERSION = 1
MAX_EXAMPLES = 64
MAX_COLUMNS = 300             # waveform columns and spectrogram width (backend/speech.py)
MAX_WORDS = 40
MAX_NBEST = 5
CLIP_RATE = 16000             # what the recognizer heard (backend/speech.SAMPLE_RATE)
CLIP_BITS = (8, 16)           # PCM WAV: 8-bit halves the section; every browser plays it
MIN_SECONDS, MAX_SECONDS = 0.3, 15.0   # backend/speech.py's limits for a spoken prompt
SECONDS_SLACK = 0.002         # index seconds are rounded to 3 decimals
FILE_MIME = {".wav": "audio/wav", ".png": "image/png"}
EXAMPLES_URL = "api/speech/examples.json"
FILES_URL = "api/speech/files"
EXTENSION_KEY = "noisepath.speech_examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------ checking

def check_section(c, index: dict) -> dict | None:
    """speech/index.json checked (c: backend.validator.Checker), or None when the bundle
    has no speech/ folder or the section has errors (each named by file and field)."""
    folder = c.root / SECTION
    if not (folder.exists() or folder.is_symlink()):
        return None
    errors = c.errors()
    doc = c.json(INDEX)  # a speech/ leading out of the bundle is named there
    if doc is None:
        return None
    _check_head(c, doc)
    examples = c.need(doc, INDEX, "examples", lambda v: isinstance(v, list) and 0 < len(
        v) <= MAX_EXAMPLES, f"an array of 1 to {MAX_EXAMPLES} examples") or []
    seen: set[str] = set()
    for i, example in enumerate(examples):
        _check_example(c, example, f"examples[{i}].", index, seen)
    return doc if c.errors() == errors else None


def _check_head(c, doc: dict) -> None:
    from backend.validator import describe

    if doc.get("format") != FORMAT:
        c.add(INDEX, "format", f"must be {FORMAT!r}, is {describe(doc.get('format'))}")
    if doc.get("version") != VERSION:
        c.add(INDEX, "version", f"is {describe(doc.get('version'))}; this noisepath reads "
              f"version {VERSION}")
    for key in ("synthesizer", "recognizer"):
        c.need(doc, INDEX, key, lambda v: isinstance(v, str) and 0 < len(v) <= 200,
               "a string (at most 200 characters)")


def _check_example(c, ex, p: str, index: dict, seen: set[str]) -> None:
    from backend.validator import is_int, is_name, shown

    if not isinstance(ex, dict):
        c.add(INDEX, p[:-1], "must be an object")
        return
    eid = c.need(ex, INDEX, "id", is_name, "a name (letters, digits, - and _)", p)
    if eid is not None and eid in seen:
        c.add(INDEX, p + "id", f"{eid!r} is used by another example")
    seen.add(eid)
    for key in ("voice", "voice_name", "text"):
        c.need(ex, INDEX, key, lambda v: isinstance(v, str) and 0 < len(v) <= 1000,
               "a non-empty string", p)
    c.need(ex, INDEX, "words_per_minute", lambda v: is_int(v, 20, 1000),
           "an integer from 20 to 1000", p)
    pid = c.need(ex, INDEX, "prompt_id", lambda v: is_name(v) and v in index["prompts"],
                 "a prompt id of the bundle", p)
    rid = c.need(ex, INDEX, "run_id", lambda v: is_name(v) and v in index["runs"],
                 "a run id of the bundle", p)
    if pid is not None and rid is not None:
        run = index["runs"][rid]
        if not isinstance(run, dict) or run.get("prompt_id") != pid:
            c.add(INDEX, p + "run_id", f"run {shown(rid)} is not a run of prompt {shown(pid)}")
        elif isinstance(ex.get("text"), str) and index["prompts"][pid].get("text") != ex["text"]:
            c.add(INDEX, p + "text", f"is not the text of prompt {shown(pid)} (the spoken "
                  "text must be the prompt it leads to)")
    seconds = _check_clip(c, ex, p)
    _check_waveform(c, ex, p)
    _check_spectrogram(c, ex, p)
    _check_result(c, ex, p, seconds)


def _file_entry(c, ex: dict, key: str, p: str, suffix: str, extra) -> tuple[dict, Path] | None:
    """ex[key], an object naming a file of speech/ (with sha256 and `extra` fields), and
    the file's path; None (and a problem) when either is wrong."""
    from backend.format import FILE_NAME
    from backend.validator import is_name, is_sha256

    entry = c.need(ex, INDEX, key, lambda v: isinstance(v, dict) and is_name(
        v.get("file"), FILE_NAME) and v["file"].endswith(suffix) and is_sha256(v.get("sha256"))
        and extra(v), f"an object: file (a {suffix} name in speech/), sha256, "
        + ("sample_rate, bits, seconds" if suffix == ".wav" else "mel_bins, columns"), p)
    if entry is None:
        return None
    path = c.file(f"{SECTION}/{entry['file']}", entry["sha256"], f"{p}{key}.sha256")
    return (entry, path) if path is not None else None


def _check_clip(c, ex: dict, p: str) -> float | None:
    """The clip's entry against its WAV header: mono PCM at CLIP_RATE, the bits and
    length it says. Its length in seconds, or None."""
    from backend.validator import is_number

    found = _file_entry(c, ex, "clip", p, ".wav", lambda v: v.get("sample_rate") == CLIP_RATE
                        and v.get("bits") in CLIP_BITS
                        and is_number(v.get("seconds"), MIN_SECONDS, MAX_SECONDS))
    if found is None:
        return None
    entry, path = found
    rel = f"{SECTION}/{entry['file']}"
    try:
        header = wav_header(path.read_bytes())
    except OSError as e:
        c.add(rel, "", f"cannot be read ({e.strerror or e})")
        return None
    except ValueError as e:
        c.add(rel, "", f"not a WAV clip the app plays ({e})")
        return None
    said = {"sample_rate": entry["sample_rate"], "bits": entry["bits"], "channels": 1}
    for key, value in said.items():
        if header[key] != value:
            c.add(rel, key, f"file has {header[key]}, {INDEX} says {value}")
    if abs(header["seconds"] - entry["seconds"]) > SECONDS_SLACK:
        c.add(rel, "seconds", f"file holds {header['seconds']:.3f} s, {INDEX} says "
              f"{entry['seconds']}")
    return entry["seconds"]


def wav_header(data: bytes) -> dict:
    """channels, sample_rate, bits and seconds of a PCM WAV file (ValueError otherwise)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("no RIFF/WAVE header")
    fmt = body = None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if cid == b"fmt ":
            fmt = data[pos + 8:pos + 8 + size]
        elif cid == b"data":
            body = min(size, len(data) - pos - 8)
            break
        pos += 8 + size + (size & 1)
    if fmt is None or len(fmt) < 16 or body is None:
        raise ValueError("no fmt or data chunk")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag != 1 or bits not in CLIP_BITS or not channels or not rate:
        raise ValueError(f"format {tag} with {bits}-bit samples; expected PCM, "
                         f"{' or '.join(map(str, CLIP_BITS))} bits")
    frames = body // (channels * bits // 8)
    return {"channels": channels, "sample_rate": rate, "bits": bits, "seconds": frames / rate}


def _check_waveform(c, ex: dict, p: str) -> None:
    from backend.validator import is_number

    def columns(v):
        return (isinstance(v, list) and 0 < len(v) <= MAX_COLUMNS
                and all(is_number(x, -1, 1) for x in v))
    wave = c.need(ex, INDEX, "waveform", lambda v: isinstance(v, dict) and columns(
        v.get("min")) and columns(v.get("max")) and len(v["min"]) == len(v["max"]),
        f"an object: min and max, arrays of the same 1 to {MAX_COLUMNS} numbers from -1 to 1", p)
    if wave is not None and any(lo > hi for lo, hi in zip(wave["min"], wave["max"])):
        c.add(INDEX, p + "waveform", "a column's min is above its max")


def _check_spectrogram(c, ex: dict, p: str) -> None:
    from backend.validator import is_int

    found = _file_entry(c, ex, "spectrogram", p, ".png", lambda v: is_int(
        v.get("mel_bins"), 1, 256) and is_int(v.get("columns"), 1, MAX_COLUMNS))
    if found is None:
        return
    entry, path = found
    rel = f"{SECTION}/{entry['file']}"
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as e:
        c.add(rel, "", f"cannot be read ({e.strerror or e})")
        return
    if head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        c.add(rel, "", "not a PNG image")
        return
    width, height = struct.unpack(">II", head[16:24])
    if (width, height) != (entry["columns"], entry["mel_bins"]):
        c.add(rel, "", f"image is {width} x {height}, {INDEX} says columns {entry['columns']} "
              f"x mel_bins {entry['mel_bins']}")


def _check_result(c, ex: dict, p: str, seconds: float | None) -> None:
    """What the recognizer said: understood, text (a string when understood), heard, the
    words with confidence (null or 0-1) and times inside the clip, the n-best texts."""
    from backend.validator import is_number

    result = c.need(ex, INDEX, "result", lambda v: isinstance(v, dict), "an object", p)
    if result is None:
        return
    p += "result."
    understood = c.need(result, INDEX, "understood", lambda v: type(v) is bool, "true or false", p)
    c.need(result, INDEX, "text", lambda v: isinstance(v, str) if understood else v is None,
           "the transcript (a string) when understood, else null", p)
    c.need(result, INDEX, "heard", lambda v: isinstance(v, str), "a string", p)
    c.need(result, INDEX, "nbest", lambda v: isinstance(v, list) and len(v) <= MAX_NBEST and all(
        isinstance(x, str) for x in v), f"an array of at most {MAX_NBEST} strings", p)
    end = seconds + SECONDS_SLACK if seconds is not None else MAX_SECONDS

    def word(w):
        return (isinstance(w, dict) and isinstance(w.get("word"), str) and w["word"]
                and (w.get("confidence") is None or is_number(w["confidence"], 0, 1))
                and is_number(w.get("start"), 0, end) and is_number(w.get("end"), 0, end)
                and w["start"] <= w["end"])
    c.need(result, INDEX, "words", lambda v: isinstance(v, list) and len(v) <= MAX_WORDS and all(
        word(w) for w in v), "an array of {word, confidence (null or 0 to 1), start, end "
        "(seconds inside the clip)}", p)
    if understood and isinstance(result.get("text"), str) and isinstance(ex.get("text"), str) \
            and result["text"] != ex["text"]:
        c.add(INDEX, p + "text", "the transcript is not the spoken prompt: an example leads "
              "to the run of what was heard")


# ------------------------------------------------------------------------- serving

def kept_examples(section: dict | None, runs: dict) -> dict | None:
    """The checked section with only the examples whose run is served, or None."""
    if section is None:
        return None
    examples = [e for e in section["examples"] if e["run_id"] in runs]
    return {**section, "examples": examples} if examples else None


def served_document(section: dict | None, index_runs: dict) -> dict:
    """api/speech/examples.json: each example as the page draws it (the shape of the
    live POST api/live/speech answer: waveform, spectrogram, words), with its clip's URL
    and the run it opens (seed, guidance_scale)."""
    from backend.payloads import VERSION_CHARS

    if section is None:
        return {"synthesizer": None, "recognizer": None, "examples": []}

    def url(entry):
        return f"{FILES_URL}/{entry['file']}?v={entry['sha256'][:VERSION_CHARS]}"
    examples = []
    for e in section["examples"]:
        run = index_runs[e["run_id"]]
        clip, spec = e["clip"], e["spectrogram"]
        examples.append({
            "id": e["id"], "voice": e["voice"], "voice_name": e["voice_name"],
            "words_per_minute": e["words_per_minute"], "text": e["text"],
            "prompt_id": e["prompt_id"], "run_id": e["run_id"], "seed": run["seed"],
            "guidance_scale": run["guidance_scale"],
            "clip": {"url": url(clip), "mime": "audio/wav", "seconds": clip["seconds"],
                     "sample_rate": clip["sample_rate"], "bits": clip["bits"]},
            "waveform": {"seconds": clip["seconds"], "min": e["waveform"]["min"],
                         "max": e["waveform"]["max"]},
            "spectrogram": {"png": url(spec), "mel_bins": spec["mel_bins"],
                            "columns": spec["columns"], "seconds": clip["seconds"]},
            "result": {**e["result"], "recognizer": section["recognizer"]}})
    return {"synthesizer": section["synthesizer"], "recognizer": section["recognizer"],
            "examples": examples}


def files_of(section: dict | None) -> dict[str, str]:
    """file name -> sha256 of every file the section names."""
    if section is None:
        return {}
    return {e[key]["file"]: e[key]["sha256"] for e in section["examples"]
            for key in ("clip", "spectrogram")}


def api_paths(bundle) -> list[str]:
    """The URL paths (no leading slash) the app answers for a bundle's section: what
    `noisepath export` writes (backend/export_pack.py)."""
    files = files_of(getattr(bundle, "speech", None))
    return [EXAMPLES_URL] + [f"{FILES_URL}/{name}" for name in sorted(files)]


def init_app(app) -> None:
    """Register the section's routes over the app's bundle (store.init_app first)."""
    from flask import Blueprint, current_app, request

    from backend.errors import not_found
    from backend.payloads import VERSION_CHARS
    from backend.resource import IMMUTABLE, REVALIDATE, json_resource, make_resource, send
    from backend.store import get_store_of

    bundle = get_store_of(app).bundle
    section = getattr(bundle, "speech", None)
    app.extensions[EXTENSION_KEY] = {
        "document": json_resource(served_document(section, bundle.index["runs"])),
        "files": files_of(section), "bodies": {}}
    bp = Blueprint("speech_examples", __name__, url_prefix="/api/speech")

    @bp.get("/examples.json")
    def examples():
        return send(current_app.extensions[EXTENSION_KEY]["document"])

    @bp.get("/files/<name>")
    def file(name: str):
        served = current_app.extensions[EXTENSION_KEY]
        sha = served["files"].get(name)
        path = bundle.file_path(f"{SECTION}/{name}") if sha else None
        if path is None:
            not_found(f"no spoken example file {name[:80]!r}; api/speech/examples.json "
                      "gives the URLs")
        if name not in served["bodies"]:
            try:
                body = path.read_bytes()
            except OSError as e:
                not_found(f"spoken example file {name!r} cannot be read ({e.strerror or e})")
            served["bodies"][name] = make_resource(body, FILE_MIME[Path(name).suffix])
        fresh = request.args.get("v") == sha[:VERSION_CHARS]
        return send(served["bodies"][name], IMMUTABLE if fresh else REVALIDATE)

    app.register_blueprint(bp)
