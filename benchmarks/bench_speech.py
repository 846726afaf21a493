"""How well and how fast the demo recognizer (backend/speech.py) hears spoken captions
(docs/performance.md, "Spoken prompts").

Captions: `--captions` distinct held-out captions of the demo world: scenes drawn with
`sample_scene(split="test")` from numpy's generator seeded `--seed` (default 18; the
demo model was trained with seed 0 on split "train", which never draws a held-out
attribute combination, so the model never saw any of these captions). Each is spoken
by espeak-ng in the four voices of tests/speech_helpers.py (US male `en-us`, US female
`en-us+f3`, British RP male `en-gb-x-rp`, British female `en+f2`) at three speeds
(`--speeds`, words per minute), clean and with white noise at 20 dB SNR (noise power
1/100 of the clip's mean power, silences included).

Reported per condition (clean, noisy), per voice and per speed:
- WER: word edit distance over the reference's words (commas dropped). A clip the
  grammar does not parse counts with the words its fallback heard (never run by the
  page, but what the recognizer said);
- sentence accuracy: the transcript is the caption exactly (understood and right);
- parsed: the grammar found a caption (`understood`); wrong: parsed but not the caption
  (the page would run a wrong prompt, unless a word is under 0.8 confidence: `caught`);
- the page's confidence threshold: for several thresholds, how many wrong parsed
  captions it would catch and how many right ones it would stop;
- time: the recognizer's seconds from the end of the clip (the whole clip is decoded
  when it ends) to the transcript, scaled to a 5 s clip (seconds x 5 / clip length),
  median and 95th percentile; the recognizer's CPU seconds (this process's, which a
  loaded machine does not inflate as it does wall time); and the whole answer of POST
  api/live/speech (reading, checks, spectrogram, recognizer) the same way.

    .venv/bin/python benchmarks/bench_speech.py                   # 200 captions, full grid
    .venv/bin/python benchmarks/bench_speech.py --rotate-speeds --workers 2  # a third

The full grid is ordered so that any prefix of it is balanced: first the
`--rotate-speeds` third, then the second and third speed of each caption and voice in
turn. `--rows FILE` appends each clip's rows to a JSON-lines file as they come (a run
stopped early keeps them, and the same command resumes where it stopped); `--report
FILE` prints the tables of such a file without measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend import speech  # noqa: E402
from tests.speech_helpers import VOICES, add_noise, speak  # noqa: E402

SNR_DB = 20.0
UNSURE = 0.8  # frontend/js/views/speech-input.js: a parsed clip with a word under it waits


def held_out_captions(n: int, seed: int) -> list[str]:
    """n distinct captions of held-out scenes (world.is_held_out), drawn with seed."""
    from precompute.demo.world import sample_scene

    rng = np.random.default_rng(seed)
    captions: list[str] = []
    while len(captions) < n:
        caption = sample_scene(rng, split="test").caption
        if caption not in captions:
            captions.append(caption)
    return captions


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance over words (substitutions, insertions, deletions)."""
    row = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hypothesis, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


_RECOGNIZER = None


def _recognizer():
    global _RECOGNIZER
    if _RECOGNIZER is None:
        _RECOGNIZER = speech.DemoRecognizer()
    return _RECOGNIZER


def measure(job: tuple[str, str, int]) -> list[dict]:
    """One caption in one voice at one speed, clean and noisy: a row per condition."""
    caption, voice, wpm = job
    clean = speak(caption, voice, wpm)
    rows = []
    noise_seed = zlib.crc32(f"{caption}|{voice}|{wpm}".encode())  # the same noise every run
    for condition, clip in (("clean", clean), ("noisy", add_noise(clean, SNR_DB, noise_seed))):
        started = time.perf_counter()
        x = speech.decode(clip)
        decoded, cpu = time.perf_counter(), time.process_time()
        out = _recognizer().recognize(x)
        recognized, cpu = time.perf_counter(), time.process_time() - cpu
        speech.spectrogram_png(speech.mel_spectrogram(x))
        speech.waveform(x)
        answered = time.perf_counter()
        reference = caption.replace(",", "").split()
        hypothesis = out["heard"].split()
        seconds = len(x) / speech.SAMPLE_RATE
        confidences = [w["confidence"] for w in out["words"] if w["confidence"] is not None]
        rows.append({
            "condition": condition, "caption": caption, "voice": voice, "wpm": wpm, "words": len(reference),
            "errors": word_errors(reference, hypothesis), "parsed": out["understood"],
            "correct": out["understood"] and out["text"] == caption,
            "caught": bool(confidences) and min(confidences) < UNSURE,
            "min_confidence": min(confidences) if confidences else None,
            "recognize_5s": (recognized - decoded) * 5 / seconds, "cpu_5s": cpu * 5 / seconds,
            "answer_5s": (answered - started) * 5 / seconds, "seconds": seconds})
    return rows


def summary(rows: list[dict]) -> str:
    n = len(rows)
    words = sum(r["words"] for r in rows)
    wer = sum(r["errors"] for r in rows) / words
    correct = sum(r["correct"] for r in rows) / n
    parsed = sum(r["parsed"] for r in rows) / n
    wrong = [r for r in rows if r["parsed"] and not r["correct"]]
    caught = sum(r["caught"] for r in wrong)
    return (f"{n:5d} clips  WER {100 * wer:5.1f}%  sentences {100 * correct:5.1f}%  "
            f"parsed {100 * parsed:5.1f}%  wrong {len(wrong):3d} (caught {caught})")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", type=int, default=200)
    parser.add_argument("--seed", type=int, default=18, help="of the held-out captions")
    parser.add_argument("--speeds", type=int, nargs="+", default=[130, 160, 190],
                        help="espeak-ng words per minute")
    parser.add_argument("--voices", nargs="+", default=list(VOICES))
    parser.add_argument("--workers", type=int, default=1, help="processes (one decoder each)")
    parser.add_argument("--rotate-speeds", action="store_true",
                        help="each caption in each voice at one speed, the speeds taken in "
                        "turn (a third of the grid: every voice and speed still has a third "
                        "of the captions)")
    parser.add_argument("--rows", help="append each clip's rows to this JSON-lines file "
                        "(and skip the clips it already holds)")
    parser.add_argument("--report", help="print the tables of a --rows file; measure nothing")
    args = parser.parse_args()

    if args.report:
        rows = read_rows(args.report)
        report(rows, sorted({r["voice"] for r in rows}, key=list(VOICES).index),
               sorted({r["wpm"] for r in rows}))
        return
    captions = held_out_captions(args.captions, args.seed)
    jobs = grid(captions, args.voices, args.speeds, args.rotate_speeds)
    rows: list[dict] = read_rows(args.rows) if args.rows and os.path.exists(args.rows) else []
    done = {(r["caption"], r["voice"], r["wpm"]) for r in rows}
    todo = [job for job in jobs if job not in done]
    print(f"{len(captions)} held-out captions (seed {args.seed}) x {len(args.voices)} voices x "
          f"{len(args.speeds)} speeds {args.speeds} wpm x clean/noisy ({SNR_DB:g} dB SNR); "
          f"{len(jobs) - len(todo)} of {len(jobs)} clips already measured; "
          f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    started = time.perf_counter()
    sink = open(args.rows, "a", encoding="utf-8") if args.rows else None
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            for out in pool.map(measure, todo, chunksize=4):
                keep(rows, out, sink)
    else:
        for job in todo:
            keep(rows, measure(job), sink)
    print(f"{time.perf_counter() - started:.0f} s; load average after: "
          f"{os.getloadavg()[0]:.1f}\n")
    report(rows, args.voices, args.speeds)


def grid(captions: list[str], voices: list[str], speeds: list[int],
         rotate: bool) -> list[tuple[str, str, int]]:
    """The clips to measure: every caption x voice x speed, ordered so that any prefix
    is balanced (the k-th pass speaks each caption in each voice at its k-th speed in
    turn); with `rotate`, only the first pass (a third of the grid for three speeds)."""
    passes = 1 if rotate else len(speeds)
    return [(c, v, speeds[(i + j + k) % len(speeds)]) for k in range(passes)
            for i, c in enumerate(captions) for j, v in enumerate(voices)]


def keep(rows: list[dict], out: list[dict], sink) -> None:
    """A clip's rows, kept and (with --rows) appended to the file at once."""
    rows.extend(out)
    if sink is not None:
        sink.write("".join(json.dumps(r) + "\n" for r in out))
        sink.flush()


def read_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def report(rows: list[dict], voices: list[str], speeds: list[int]) -> None:
    """The tables: WER, sentences, parsed, wrong per condition, voice and speed; the
    page's threshold; time per 5 s clip."""
    clips = len({(r["caption"], r["voice"], r["wpm"]) for r in rows})
    print(f"{clips} clips per condition")
    for condition in ("clean", "noisy"):
        mine = [r for r in rows if r["condition"] == condition]
        print(f"{condition:6s} all      {summary(mine)}")
        for voice in voices:
            print(f"{'':6s} {voice:12s} {summary([r for r in mine if r['voice'] == voice])}")
        for wpm in speeds:
            print(f"{'':6s} {wpm:3d} wpm      {summary([r for r in mine if r['wpm'] == wpm])}")
    print("\nthe page's threshold: parsed clips with a word under it wait for Enter")
    parsed = [r for r in rows if r["parsed"]]
    for threshold in (0.6, 0.7, 0.8, 0.9, 0.95):
        stopped = [r for r in parsed if r["min_confidence"] < threshold]
        print(f"  {threshold:.2f}: wrong ones caught {sum(not r['correct'] for r in stopped)} of "
              f"{sum(not r['correct'] for r in parsed)}, right ones stopped "
              f"{sum(r['correct'] for r in stopped)} of {sum(r['correct'] for r in parsed)}")
    seconds = [r["seconds"] for r in rows]
    print(f"\nclip length: median {statistics.median(seconds):.1f} s, "
          f"max {max(seconds):.1f} s")
    for key, what in (("recognize_5s", "recognizer"), ("cpu_5s", "recognizer CPU"),
                      ("answer_5s", "whole answer")):
        values = [r[key] for r in rows]
        print(f"{what} per 5 s clip: median {statistics.median(values):.3f} s, "
              f"p95 {percentile(values, 95):.3f} s")


if __name__ == "__main__":
    main()
