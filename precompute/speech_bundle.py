"""`python -m precompute.speech_bundle BUNDLE`: add spoken examples to a bundle (its
`speech/` section, docs/bundle-format.md "Spoken examples"), so the static site shows
speech -> transcript -> prompt -> run with no server.

Prompts of the bundle (each group's main prompt first, then the variants) are spoken by
Debian's espeak-ng in the voices asked for, in turn; each clip is made what the live page
sends (16 kHz mono WAV, here `--bits` 8 per sample: half the bytes, and every browser
plays it) and the demo recognizer (backend/speech.py: PocketSphinx with the demo-world
grammar) hears exactly those bytes. An example is kept only when the recognizer's
transcript is the prompt, so it leads to that prompt's run (the bundle's first seed, at
its default guidance scale); a prompt a voice was not heard right on is reported and the
next one tried. Its words, confidences and n-best are recorded as the recognizer said
them: the app shows how sure it was.

Nothing else in the bundle changes: no run is computed again. The section is built in
the bundle's `.tmp/` and renamed into place (an interrupted run leaves the old section);
a second run with the same arguments writes the same bytes and says it is up to date.

Needs espeak-ng (`apt-get install espeak-ng`) and the `[speech]` extra (pocketsphinx).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from backend import speech
from backend.speech_examples import FORMAT, INDEX, SECTION, VERSION
from precompute.writer import replace_section

# espeak-ng's "en" is British English; "en-gb+f2" would ignore its variant, "en+f2" does
# not (tests/speech_helpers.py and benchmarks/bench_speech.py use the same four)
VOICES = {"en-us": "US male", "en-us+f3": "US female", "en-gb-x-rp": "British (RP) male",
          "en+f2": "British female"}


def espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise SystemExit("speech_bundle: needs espeak-ng to speak the prompts "
                         "(apt-get install espeak-ng)")
    return path


def synthesizer_name() -> str:
    out = subprocess.run([espeak(), "--version"], capture_output=True, text=True, timeout=30)
    words = out.stdout.split()  # "eSpeak NG text-to-speech: 1.51  Data at: ..."
    version = words[words.index("text-to-speech:") + 1] if "text-to-speech:" in words else "?"
    return f"espeak-ng {version}"


def recognizer_name() -> str:
    return f"pocketsphinx {importlib.metadata.version('pocketsphinx')}, demo-world grammar"


def speak(text: str, voice: str, words_per_minute: int) -> bytes:
    """text spoken by espeak-ng: WAV bytes (22050 Hz mono 16-bit)."""
    return subprocess.run([espeak(), "-v", voice, "-s", str(words_per_minute), "--stdout", text],
                          capture_output=True, check=True, timeout=60).stdout


def wav_bytes(x: np.ndarray, bits: int) -> bytes:
    """16 kHz mono samples in [-1, 1] as PCM WAV: 8-bit (unsigned) or 16-bit."""
    import io
    import wave

    if bits == 8:
        data = np.clip(np.round(x * 127 + 128), 0, 255).astype(np.uint8).tobytes()
    else:
        data = np.clip(np.round(x * 32767), -32768, 32767).astype("<i2").tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(bits // 8)
        w.setframerate(speech.SAMPLE_RATE)
        w.writeframes(data)
    return out.getvalue()


def clip_of(text: str, voice: str, words_per_minute: int, bits: int) -> bytes:
    """The clip as the page would send it: espeak-ng's speech at 16 kHz mono, `bits` per
    sample, peak-normalized to 0.9 (espeak-ng speaks quietly; 8-bit needs the range)."""
    x = speech.to_mono_16k(*speech.read_clip(speak(text, voice, words_per_minute)))
    peak = float(np.max(np.abs(x))) or 1.0
    return wav_bytes(x * (0.9 / peak), bits)


def candidates(index: dict) -> list[str]:
    """Prompt ids to speak, in order: each group's main prompt, then the variants (the
    empty prompt and prompts that are no demo caption left out)."""
    order: list[str] = []
    for rank in range(max((len(g["prompts"]) for g in index["groups"]), default=0)):
        order += [g["prompts"][rank] for g in index["groups"] if rank < len(g["prompts"])]
    seen: set[str] = set()
    return [p for p in order if p != "empty" and not (p in seen or seen.add(p))
            and speech.is_caption(index["prompts"][p]["text"])]


def the_run(index: dict, prompt_id: str, seed: int, guidance: float) -> str | None:
    """The run of the prompt at that seed and guidance scale, or None."""
    for rid, run in index["runs"].items():
        if (run["prompt_id"], run["seed"], float(run["guidance_scale"])) == \
                (prompt_id, seed, float(guidance)):
            return rid
    return None


def example(recognizer, text: str, prompt_id: str, run_id: str, voice: str, wpm: int,
            bits: int) -> tuple[dict, dict[str, bytes]] | str:
    """One example's index entry and its files, or why the recognizer did not hear
    the prompt."""
    clip = clip_of(text, voice, wpm, bits)
    x = speech.decode(clip)  # what POST api/live/speech does with these bytes
    result = recognizer.recognize(x)
    if not result["understood"] or result["text"] != text:
        return f"heard {result['heard']!r}" + ("" if result["understood"] else " (no parse)")
    eid = f"{voice.replace('+', '-')}-{wpm}-{prompt_id}"[:200]
    mel = speech.mel_spectrogram(x)
    png = speech.spectrogram_png(mel)
    files = {f"{eid}.wav": clip, f"{eid}.png": png}
    wave = speech.waveform(x)
    entry = {
        "id": eid, "voice": voice, "voice_name": VOICES.get(voice, voice),
        "words_per_minute": wpm, "text": text, "prompt_id": prompt_id, "run_id": run_id,
        "clip": {"file": f"{eid}.wav", "sha256": hashlib.sha256(clip).hexdigest(),
                 "sample_rate": speech.SAMPLE_RATE, "bits": bits,
                 "seconds": round(len(x) / speech.SAMPLE_RATE, 3)},
        # 3 decimals: a 48 px high drawing needs no more (half the bytes of 4)
        "waveform": {k: [round(v, 3) for v in wave[k]] for k in ("min", "max")},
        "spectrogram": {"file": f"{eid}.png", "sha256": hashlib.sha256(png).hexdigest(),
                        "mel_bins": speech.MEL_BINS, "columns": int(mel.shape[1])},
        "result": {k: result[k] for k in ("understood", "text", "heard", "words", "nbest")},
    }
    return entry, files


def build(index: dict, voices: list[str], per_voice: int, wpm: int, seed: int | None,
          guidance: float | None, bits: int, recognizer=None,
          log=print) -> tuple[dict, dict[str, bytes]]:
    """The section's index document and files for a bundle index (bundle.json), heard
    by `recognizer` (default: a new speech.DemoRecognizer)."""
    seed = index["seeds"][0] if seed is None else seed
    guidance = index["config"].get("default_guidance_scale") if guidance is None else guidance
    if guidance is None:
        raise SystemExit("speech_bundle: the bundle has no default_guidance_scale: pass "
                         "--guidance")
    pool = [p for p in candidates(index) if the_run(index, p, seed, guidance)]
    if not pool:
        raise SystemExit(f"speech_bundle: no demo caption of the bundle has a run at seed "
                         f"{seed} and guidance {guidance:g}")
    recognizer = recognizer or speech.DemoRecognizer()
    examples, files, used = [], {}, set()
    for turn in range(per_voice):
        for voice in voices:
            for pid in pool:
                if pid in used:
                    continue
                text = index["prompts"][pid]["text"]
                made = example(recognizer, text, pid, the_run(index, pid, seed, guidance),
                               voice, wpm, bits)
                if isinstance(made, str):
                    log(f"  {voice} at {wpm} wpm: {text!r} not heard right ({made}); next")
                    continue
                used.add(pid)
                examples.append(made[0])
                files.update(made[1])
                log(f"  {voice}: {text!r}")
                break
            else:
                log(f"  {voice}: no prompt left that it is heard right on")
    if not examples:
        raise SystemExit("speech_bundle: the recognizer heard no prompt right; nothing written")
    doc = {"format": FORMAT, "version": VERSION, "synthesizer": synthesizer_name(),
           "recognizer": recognizer_name(), "examples": examples}
    return doc, files


def write_section(bundle: Path, doc: dict, files: dict[str, bytes]) -> bool:
    """Put the section at BUNDLE/speech/, atomically (staged in .tmp/, renamed); False
    when the same bytes are there already (nothing touched)."""
    body = (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()
    target = bundle / SECTION
    wanted = {**files, Path(INDEX).name: body}
    if target.is_dir() and sorted(p.name for p in target.iterdir()) == sorted(wanted) and all(
            (target / name).read_bytes() == data for name, data in wanted.items()):
        return False
    replace_section(bundle, SECTION, wanted)
    return True


def main(argv: list[str] | None = None, recognizer=None) -> int:
    """The command; `recognizer`: a speech.DemoRecognizer to reuse (tests)."""
    p = argparse.ArgumentParser(prog="python -m precompute.speech_bundle",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    p.add_argument("--voices", nargs="+", default=list(VOICES), metavar="VOICE",
                   help=f"espeak-ng voices, in turn (default: {' '.join(VOICES)})")
    p.add_argument("--per-voice", type=int, default=2, metavar="N",
                   help="examples per voice (default 2)")
    p.add_argument("--speed", type=int, default=160, metavar="WPM",
                   help="espeak-ng words per minute (default 160)")
    p.add_argument("--seed", type=int, help="the run's seed (default: the bundle's first)")
    p.add_argument("--guidance", type=float,
                   help="the run's guidance scale (default: the bundle's default)")
    p.add_argument("--bits", type=int, choices=(8, 16), default=8,
                   help="bits per sample of the stored clips (default 8)")
    args = p.parse_args(argv)
    missing = speech.missing_library()
    if missing:
        raise SystemExit(f"speech_bundle: {missing}")
    from backend.validator import validate_bundle

    index_path = args.bundle / "bundle.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SystemExit(f"speech_bundle: {index_path}: cannot be read ({e})") from e
    print(f"speaking prompts of {args.bundle} in {', '.join(args.voices)} at {args.speed} wpm")
    doc, files = build(index, args.voices, args.per_voice, args.speed, args.seed,
                       args.guidance, args.bits, recognizer)
    changed = write_section(args.bundle, doc, files)
    problems = [p for p in validate_bundle(args.bundle, checksums=True)
                if p.file.startswith(SECTION)]
    for problem in problems:
        print(problem, file=sys.stderr)
    size = sum(len(b) for b in files.values()) + (args.bundle / INDEX).stat().st_size
    print(f"{'wrote' if changed else 'up to date:'} {args.bundle / SECTION}: "
          f"{len(doc['examples'])} examples, {size / 1024:.0f} KiB")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
