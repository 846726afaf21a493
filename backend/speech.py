"""Speech -> prompt (`noisepath serve --live` with the `[speech]` extra): what a spoken
clip is, what the recognizer heard in it, and how sure it was.

This module owns
- reading a clip: WAV (PCM 8/16/24/32-bit or float, any rate, any channels) mixed to
  mono and resampled to 16 kHz with numpy; webm/ogg (what MediaRecorder makes) are
  refused with advice, since decoding them would need ffmpeg (the page records WAV
  with Web Audio instead);
- the checks that make bad input a clear 4xx (`AudioError`): too large, too long, too
  short, silence, noise without speech;
- what the page draws: a waveform summary and a 64-bin log-mel spectrogram (PNG);
- the demo recognizer (`DemoRecognizer`): PocketSphinx, whose wheel ships a US-English
  acoustic model and dictionary, constrained by a JSGF grammar generated from the demo
  world's caption templates and words (precompute/demo/world.py), so it can only hear
  captions the demo model was trained to draw. Each word's confidence is its posterior
  in the recognizer's word lattice. When the grammar finds no parse, a loop over the
  same words says what was heard, and the answer is "not understood" with those
  hypotheses: a guess is never run without the user.

No torch here (backend/ serves without it); pocketsphinx is imported only when a
recognizer is made, so serving without the extra works and says what to install.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import tempfile
import threading

import numpy as np

# serve's --speech-per-address and --speech-at-once default to these: a class behind one
# router gets 3 clips at once, below the 4 the server holds, so another address still gets in.
SPEECH_PER_ADDRESS = 3
SPEECH_AT_ONCE = 4

SAMPLE_RATE = 16000       # Hz: what the acoustic model was trained on
MAX_SECONDS = 15.0        # a spoken prompt is a sentence
MIN_SECONDS = 0.3
MAX_UPLOAD = 2 * 2**20    # bytes: 15 s of 48 kHz mono 16-bit WAV is 1.4 MB (the page
                          # sends 16 kHz mono: 0.5 MB)
SILENCE_DBFS = -50.0      # a clip whose loudest 50 ms is quieter than this is silence
FRAME = 400               # 25 ms analysis frames at 16 kHz
HOP = 160                 # 10 ms hop (the recognizer's frame rate)
MEL_BINS = 64
MAX_COLUMNS = 300         # spectrogram frames and waveform columns sent to the page
# Spectral flatness (geometric / arithmetic mean of a frame's power spectrum) is about
# 0.56 for white noise and well under 0.3 in voiced speech, also with 20 dB of noise.
VOICED_FLATNESS = 0.3
MIN_VOICED_SECONDS = 0.15
ASCALE = 20.0             # pocketsphinx's own acoustic scale for posteriors (its -ascale)
# Digital silence (exact zeros, as synthesized or gated clips have) drives the features'
# log energy to its floor and derails the search: on espeak-ng clips the grammar then
# parsed 5 of 18 captions, with this microphone-like noise floor (about -70 dBFS,
# 10 steps of 16-bit; seeded, so a clip is always heard the same) 17 of 18.
DITHER = 3e-4
SPEECH_EXTRA_HINT = "pip install 'noisepath[speech]'"


class AudioError(ValueError):
    """A clip that cannot be recognized: an HTTP status, an error name and one line."""

    def __init__(self, status: int, name: str, message: str):
        super().__init__(message)
        self.status, self.name = status, name


def missing_library() -> str | None:
    """The one-line reason speech input is unavailable here, or None."""
    import importlib.util

    if importlib.util.find_spec("pocketsphinx") is None:
        return f"speaking a prompt needs pocketsphinx: {SPEECH_EXTRA_HINT}"
    return None


# ------------------------------------------------------------------------- decoding

def read_clip(data: bytes) -> tuple[np.ndarray, int]:
    """An uploaded clip as (samples (n, channels) float32 in [-1, 1], rate), or AudioError."""
    if len(data) > MAX_UPLOAD:
        raise AudioError(413, "payload_too_large",
                         f"the clip is larger than {MAX_UPLOAD // 2**20} MB")
    if not data:
        raise AudioError(400, "bad_request", "the clip is empty: send a WAV file")
    if data[:4] == b"\x1a\x45\xdf\xa3" or data[:4] == b"OggS":
        kind = "webm" if data[0] == 0x1A else "ogg"
        raise AudioError(415, "unsupported_media_type",
                         f"a {kind} clip cannot be decoded here (that needs ffmpeg): send WAV "
                         f"(the page records WAV; or ffmpeg -i clip.{kind} clip.wav)")
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioError(415, "unsupported_media_type",
                         "the clip is not a WAV file (RIFF/WAVE); send WAV audio")
    return _read_wav(data)


def _chunks(data: bytes):
    """(id, payload) of each RIFF chunk after the WAVE header."""
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        yield cid, data[pos + 8:pos + 8 + size]
        pos += 8 + size + (size & 1)


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    fmt = body = None
    for cid, payload in _chunks(data):
        if cid == b"fmt " and len(payload) >= 16:
            fmt = payload
        elif cid == b"data":
            body = payload
            break
    if fmt is None or body is None:
        raise AudioError(415, "unsupported_media_type", "the WAV file has no fmt or data chunk")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's tag
        tag = struct.unpack("<H", fmt[24:26])[0]
    if not 1 <= channels <= 8 or not 4000 <= rate <= 192000:
        raise AudioError(415, "unsupported_media_type",
                         f"the WAV file says {channels} channel(s) at {rate} Hz; send 1-8 "
                         "channels at 4-192 kHz")
    samples = _pcm(body, tag, bits)
    usable = len(samples) // channels * channels
    return samples[:usable].reshape(-1, channels), rate


def _pcm(body: bytes, tag: int, bits: int) -> np.ndarray:
    """The data chunk's samples as float32 in [-1, 1] (interleaved channels)."""
    if tag == 3 and bits in (32, 64):
        x = np.frombuffer(body[:len(body) // (bits // 8) * (bits // 8)],
                          "<f4" if bits == 32 else "<f8").astype(np.float32)
        return np.nan_to_num(np.clip(x, -1, 1))
    if tag != 1 or bits not in (8, 16, 24, 32):
        raise AudioError(415, "unsupported_media_type",
                         f"WAV format {tag} with {bits}-bit samples is not supported; send "
                         "PCM (8/16/24/32-bit) or 32-bit float")
    if bits == 8:
        return (np.frombuffer(body, np.uint8).astype(np.float32) - 128) / 128
    if bits == 24:
        raw = np.frombuffer(body[:len(body) // 3 * 3], np.uint8).reshape(-1, 3).astype(np.int32)
        ints = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        return (np.where(ints >= 2**23, ints - 2**24, ints) / 2**23).astype(np.float32)
    dtype = "<i2" if bits == 16 else "<i4"
    n = len(body) // (bits // 8) * (bits // 8)
    return (np.frombuffer(body[:n], dtype) / float(2 ** (bits - 1))).astype(np.float32)


def to_mono_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """Channels averaged, resampled to 16 kHz by the FFT (band-limited: what lies above
    the new Nyquist frequency is dropped)."""
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    if rate == SAMPLE_RATE or len(mono) == 0:
        return mono.astype(np.float32)
    n = max(1, int(round(len(mono) * SAMPLE_RATE / rate)))
    spectrum = np.fft.rfft(mono)
    kept = np.zeros(n // 2 + 1, dtype=complex)
    m = min(len(spectrum), len(kept))
    kept[:m] = spectrum[:m]
    return (np.fft.irfft(kept, n) * (n / len(mono))).astype(np.float32)


def decode(data: bytes) -> np.ndarray:
    """An uploaded clip as 16 kHz mono float32, checked: or AudioError (4xx)."""
    samples, rate = read_clip(data)
    seconds = len(samples) / rate
    if seconds > MAX_SECONDS:
        raise AudioError(413, "too_long", f"the clip is {seconds:.1f} s long; speak a prompt "
                         f"in at most {MAX_SECONDS:g} s")
    if seconds < MIN_SECONDS:
        raise AudioError(422, "too_short", f"the clip is {seconds:.2f} s long; a prompt "
                         f"takes at least {MIN_SECONDS:g} s")
    x = to_mono_16k(samples, rate)
    check_speech(x)
    return x


# ------------------------------------------------------------------ what is in a clip

def frames(x: np.ndarray) -> np.ndarray:
    """(n, FRAME) Hann-windowed 25 ms frames every 10 ms."""
    if len(x) < FRAME:
        x = np.pad(x, (0, FRAME - len(x)))
    n = 1 + (len(x) - FRAME) // HOP
    idx = np.arange(FRAME)[None, :] + HOP * np.arange(n)[:, None]
    return x[idx] * np.hanning(FRAME).astype(np.float32)


def power_spectrum(x: np.ndarray) -> np.ndarray:
    """(frames, FRAME // 2 + 1) power spectrum."""
    return np.abs(np.fft.rfft(frames(x), axis=1)) ** 2


def check_speech(x: np.ndarray) -> None:
    """AudioError for a clip with nothing to recognize: silence, or noise with no voiced
    sound (no frame whose spectrum has the peaks of a voice)."""
    loudest = float(np.sqrt(np.max(np.convolve(x ** 2, np.ones(800) / 800, "valid")))) \
        if len(x) >= 800 else float(np.sqrt(np.mean(x ** 2)))
    dbfs = 20 * math.log10(max(loudest, 1e-10))
    if dbfs < SILENCE_DBFS:
        raise AudioError(422, "silence", f"the clip is silent (loudest {dbfs:.0f} dBFS); is "
                         "the microphone on?")
    power = power_spectrum(x)[:, 1:] + 1e-12
    energy = power.mean(axis=1)
    loud = energy > energy.max() * 1e-3  # within 30 dB of the loudest frame
    flatness = np.exp(np.log(power).mean(axis=1)) / energy
    voiced = int(np.sum(loud & (flatness < VOICED_FLATNESS)))
    if voiced * HOP / SAMPLE_RATE < MIN_VOICED_SECONDS:
        raise AudioError(422, "no_speech", "the clip sounds like noise, with no voice in it; "
                         "speak closer to the microphone")


def waveform(x: np.ndarray, columns: int = MAX_COLUMNS) -> dict:
    """Min and max of the samples in `columns` equal slices, for drawing."""
    cols = max(1, min(columns, len(x)))
    parts = np.array_split(x, cols)
    return {"seconds": round(len(x) / SAMPLE_RATE, 3),
            "min": [round(float(p.min()), 4) for p in parts],
            "max": [round(float(p.max()), 4) for p in parts]}


def mel_filters(bins: int = MEL_BINS) -> np.ndarray:
    """(bins, FRAME // 2 + 1) triangular filters equally spaced on the mel scale."""
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = hz(np.linspace(mel(0), mel(SAMPLE_RATE / 2), bins + 2))
    freqs = np.linspace(0, SAMPLE_RATE / 2, FRAME // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.maximum(0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))


def mel_spectrogram(x: np.ndarray, columns: int = MAX_COLUMNS) -> np.ndarray:
    """(MEL_BINS, <= columns) log-mel power in dB, frames averaged down to `columns`."""
    spec = power_spectrum(x) @ mel_filters().T  # (frames, bins)
    groups = np.array_split(spec, min(columns, len(spec)))
    pooled = np.stack([g.mean(axis=0) for g in groups]).T  # (bins, columns)
    return 10 * np.log10(pooled + 1e-10)


def spectrogram_png(db: np.ndarray, floor_db: float = 80.0) -> bytes:
    """The spectrogram as a greyscale PNG, low frequencies at the bottom, the top
    `floor_db` decibels mapped to 0-255."""
    from PIL import Image

    top = db.max()
    scaled = np.clip((db - (top - floor_db)) / floor_db, 0, 1)
    image = Image.fromarray((scaled[::-1] * 255).astype(np.uint8), mode="L")
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


# -------------------------------------------------------------------- the grammar

def demo_words() -> dict[str, list[str]]:
    """The demo world's caption vocabulary, by role (precompute/demo/world.py)."""
    from precompute.demo import world

    return {"colour": list(world.COLOURS), "shape": list(world.SHAPES),
            "size": list(world.SIZES), "position": list(world.POSITION_PHRASES.values())}


def demo_grammar() -> str:
    """A JSGF grammar of every caption world.caption_of can write (both templates, the
    article a/an agreeing with its word), commas dropped."""
    words = demo_words()
    vowel = [c for c in words["colour"] if c[0] in "aeiou"]
    consonant = [c for c in words["colour"] if c[0] not in "aeiou"]
    article_colour = " | ".join(
        [f"a ({' | '.join(consonant)})"] + ([f"an ({' | '.join(vowel)})"] if vowel else []))
    return "\n".join([
        "#JSGF V1.0;",
        "grammar caption;",
        "public <caption> = <object> [and <object>] on <article_colour> background;",
        "<object> = <head> <shape> <position>;",
        "<head> = a <size> <colour> | <article_colour>;",
        f"<article_colour> = {article_colour};",
        f"<colour> = {' | '.join(words['colour'])};",
        f"<size> = {' | '.join(words['size'])};",
        f"<shape> = {' | '.join(words['shape'])};",
        f"<position> = {' | '.join(words['position'])};",
        ""])


def demo_vocabulary() -> list[str]:
    """Every word of the demo world's captions, sorted."""
    words = demo_words()
    return sorted({w for phrase in sum(words.values(), []) for w in phrase.split()}
                  | {"a", "an", "and", "on", "background"})


def word_loop_grammar() -> str:
    """Any sequence of the demo words: the fallback that says what was heard."""
    vocab = demo_vocabulary()
    return "\n".join(["#JSGF V1.0;", "grammar words;",
                      f"public <words> = ( {' | '.join(vocab)} )+;", ""])


# Non-rhotic (British) pronunciations of demo words that CMUdict has only in US form,
# in the acoustic model's phones; the grammar search then parses British speakers too.
EXTRA_PRONUNCIATIONS = {
    "large": "L AA JH", "star": "S T AA", "square": "S K W EH", "bottom": "B AO T AH M",
    "top": "T AO P", "orange": "AO R IH N JH", "background": "B AE K G R AW N D",
    "purple": "P ER P AH L", "circle": "S ER K AH L",
}


def is_caption(text: str) -> bool:
    """Whether text is a whole caption of the demo world."""
    from precompute.demo.world import parse_caption

    try:
        parse_caption(text)
    except ValueError:
        return False
    return True


def caption_text(words: list[str]) -> str:
    """The recognized words as the demo world writes captions (", on a ... background")."""
    text = " ".join(words)
    return re.sub(r" (on an? \w+ background)$", r", \1", text)


# ------------------------------------------------------------------- the recognizer

class DemoRecognizer:
    """PocketSphinx with the demo-world grammar (and the word loop as its fallback).
    One decode at a time (a lock): a 5 s clip takes a fraction of a second."""

    name = "pocketsphinx, demo-world grammar"
    not_understood = "that is not a caption the demo model knows"

    def __init__(self, extra_pronunciations: bool = True):
        from pocketsphinx import Config, Decoder

        self.decoders = {}
        for key, text in (("grammar", demo_grammar()), ("words", word_loop_grammar())):
            self.decoders[key] = self._decoder(Config, Decoder, key, text, extra_pronunciations)
        self.lock = threading.Lock()
        self.vocabulary = set(demo_vocabulary())

    @staticmethod
    def _decoder(Config, Decoder, key: str, grammar: str, extra_pronunciations: bool):
        """A decoder searching `grammar` (JSGF text; read when the decoder is made)."""
        with tempfile.TemporaryDirectory(prefix="noisepath-speech-") as folder:
            path = os.path.join(folder, f"{key}.gram")
            with open(path, "w", encoding="utf-8") as f:
                f.write(grammar)
            # bestpath rescoring: on for the grammar (its n-best); off for the word
            # loop, whose lattice is large (seconds to rescore) and whose first pass
            # heard better on the clips tried
            decoder = Decoder(Config(lm=None, jsgf=path, samprate=SAMPLE_RATE,
                                     loglevel="FATAL", bestpath=key == "grammar"))
            if extra_pronunciations:
                extra = list(EXTRA_PRONUNCIATIONS.items())
                for i, (word, phones) in enumerate(extra):  # the last rebuilds the search
                    decoder.add_word(f"{word}(9)", phones, update=i == len(extra) - 1)
        return decoder

    def recognize(self, x: np.ndarray) -> dict:
        """What was heard in 16 kHz mono samples: {understood, text, words [{word,
        confidence, start, end}], nbest [text], recognizer}."""
        x = x + np.random.default_rng(0).normal(0, DITHER, len(x)).astype(np.float32)
        pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
        with self.lock:
            words, nbest = self._decode("grammar", pcm)
            # the search's best path may stop short of the grammar's end: not a caption
            understood = bool(words) and is_caption(caption_text([w["word"] for w in words]))
            if not understood:
                words, nbest = self._decode("words", pcm)
        return {"understood": understood,
                "text": caption_text([w["word"] for w in words]) if understood else None,
                "heard": " ".join(w["word"] for w in words),
                "words": words, "nbest": nbest, "recognizer": self.name}

    def _decode(self, key: str, pcm: bytes) -> tuple[list[dict], list[str]]:
        """Words with times and confidences, and the n-best texts. The word loop's
        lattice is too large to rescore in time: its words have no confidence (None)."""
        d = self.decoders[key]
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        if hyp is None or not hyp.hypstr.strip():
            return [], []
        segments = [(base_word(s.word), s.start_frame, s.end_frame) for s in d.seg()]
        segments = [(w, s, e) for w, s, e in segments if w in self.vocabulary]
        if key != "grammar":
            return ([{"word": w, "start": round(s / 100, 2), "end": round((e + 1) / 100, 2),
                      "confidence": None} for w, s, e in segments],
                    [" ".join(w for w, _, _ in segments)])
        posteriors = lattice_posteriors(d)
        words = [{"word": w, "start": round(s / 100, 2), "end": round((e + 1) / 100, 2),
                  "confidence": round(word_confidence(posteriors, w, s, e), 3)}
                 for w, s, e in segments]
        nbest = []
        for n in d.nbest():
            text = caption_text([base_word(w) for w in n.hypstr.split()])
            if is_caption(text) and text not in nbest:
                nbest.append(text)
            if len(nbest) >= 5:
                break
        return words, nbest


def base_word(word: str) -> str:
    """A dictionary entry's word: "on(2)" -> "on"."""
    return word.split("(")[0]


# --------------------------------------------------------- confidence from the lattice

def lattice_posteriors(decoder) -> list[tuple[str, float, float, float]]:
    """(word, start s, end s, posterior) for every word arc of the decoder's lattice:
    forward-backward over its acoustic scores divided by ASCALE (as pocketsphinx's own
    posteriors are), read from the lattice in HTK form."""
    lattice = decoder.get_lattice()
    if lattice is None:
        return []
    with tempfile.NamedTemporaryFile(suffix=".slf", delete=False) as f:
        path = f.name
    try:
        lattice.write_htk(path)
        with open(path, encoding="utf-8") as f:
            text = f.read()
    finally:
        os.unlink(path)
    return arc_posteriors(*parse_htk(text))


def parse_htk(text: str):
    """Nodes {id: (word, time)}, arcs [(from, to, log score)], start, end of an HTK lattice."""
    nodes, arcs, head = {}, [], {}
    for line in text.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "I" in fields:
            nodes[int(fields["I"])] = (fields.get("W", "!NULL"), float(fields.get("t", 0)))
        elif "J" in fields:
            arcs.append((int(fields["S"]), int(fields["E"]), float(fields.get("a", 0)) / ASCALE))
        else:
            head.update(fields)
    return nodes, arcs, int(head.get("start", 0)), int(head.get("end", 0))


def arc_posteriors(nodes, arcs, start, end):
    """Posterior of each arc (its source node's word over [its time, the next node's])."""
    order = sorted(nodes, key=lambda n: (nodes[n][1], n != start))
    alpha = {n: -math.inf for n in nodes}
    beta = {n: -math.inf for n in nodes}
    alpha[start], beta[end] = 0.0, 0.0
    out_arcs = {n: [] for n in nodes}
    in_arcs = {n: [] for n in nodes}
    for a in arcs:
        out_arcs[a[0]].append(a)
        in_arcs[a[1]].append(a)
    for n in order:
        for s, e, score in out_arcs[n]:
            alpha[e] = np.logaddexp(alpha[e], alpha[s] + score)
    for n in reversed(order):
        for s, e, score in in_arcs[n]:
            beta[s] = np.logaddexp(beta[s], beta[e] + score)
    total = alpha[end]
    if not math.isfinite(total):
        return []
    return [(base_word(nodes[s][0]), nodes[s][1], nodes[e][1],
             math.exp(alpha[s] + score + beta[e] - total)) for s, e, score in arcs]


def word_confidence(posteriors, word: str, start_frame: int, end_frame: int) -> float:
    """The posterior mass of `word` at the middle of its time span among all words there."""
    if not posteriors:
        return 1.0
    mid = (start_frame + end_frame + 1) / 200
    here = [(w, p) for w, s, e, p in posteriors
            if s <= mid < e and not w.startswith("!") and w != "<sil>"]
    total = sum(p for _, p in here)
    same = sum(p for w, p in here if w == word)
    return same / total if total > 0 else 1.0


# ---------------------------------------------------------------------------- the API

CLIP_TYPES = {"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave",
              "application/octet-stream"}


class SpeechService:
    """The recognizer behind POST api/live/speech, with its limits: one clip at a time
    per browser and `per_address` per network address (a class behind one router
    shares one: 429), at most `max_waiting` clips in the server at once (503).
    A browser is its cookie's id (backend/clients.py); the address is the socket's."""

    RETRY_AFTER = 1  # s: a clip is recognized in a fraction of a second

    def __init__(self, recognizer, per_client: int = 1, max_waiting: int = SPEECH_AT_ONCE,
                 per_address: int = SPEECH_PER_ADDRESS):
        self.recognizer = recognizer
        self.per_client, self.max_waiting = per_client, max_waiting
        self.per_address = per_address
        self.busy: dict[str, int] = {}            # browser -> its clips being recognized
        self.busy_addresses: dict[str, int] = {}  # address -> its clips being recognized
        self.lock = threading.Lock()

    def info(self) -> dict:
        return {"available": True, "recognizer": self.recognizer.name,
                "max_seconds": MAX_SECONDS, "max_bytes": MAX_UPLOAD,
                "sample_rate": SAMPLE_RATE}

    def enter(self, client: str, address: str | None = None) -> tuple[int, str] | None:
        """Take a slot for a clip of browser `client` from network `address` (default:
        client); (status, one-line message) naming the first limit it would pass."""
        address = client if address is None else address
        wait = f"try again in about {self.RETRY_AFTER} s"
        with self.lock:
            if self.busy.get(client, 0) >= self.per_client:
                return 429, (f"a clip of this browser is being recognized (at most "
                             f"{self.per_client} per browser at a time); {wait}, when its "
                             "answer is back")
            shared = self.busy_addresses.get(address, 0)
            if shared >= self.per_address:
                return 429, (f"{shared} clips from your network address are being "
                             f"recognized (at most {self.per_address} per address, which a "
                             f"class behind one router shares: --speech-per-address); {wait}")
            if sum(self.busy.values()) >= self.max_waiting:
                return 503, (f"busy: {self.max_waiting} clips are being recognized (at most "
                             f"{self.max_waiting} at once: --speech-at-once); {wait}")
            self.busy[client] = self.busy.get(client, 0) + 1
            self.busy_addresses[address] = shared + 1
            return None

    def leave(self, client: str, address: str | None = None) -> None:
        """Give back the slot `enter` took for the same browser and address."""
        address = client if address is None else address
        with self.lock:
            for counts, key in ((self.busy, client), (self.busy_addresses, address)):
                counts[key] -= 1
                if not counts[key]:
                    del counts[key]

    def answer(self, x: np.ndarray) -> dict:
        """The recognizer's result and what the page draws, for checked samples."""
        import base64
        import time

        started = time.perf_counter()
        result = self.recognizer.recognize(x)
        seconds = time.perf_counter() - started
        spec = mel_spectrogram(x)
        png = base64.b64encode(spectrogram_png(spec)).decode("ascii")
        message = None if result["understood"] else (
            f"not understood: {getattr(self.recognizer, 'not_understood', 'no words heard')}" +
            (f" (heard: {result['heard']!r})" if result["heard"] else "") +
            "; pick a hypothesis or type the prompt")
        return {**result, "message": message, "recognize_seconds": round(seconds, 3),
                "waveform": waveform(x),
                "spectrogram": {"png": f"data:image/png;base64,{png}", "mel_bins": MEL_BINS,
                                "columns": int(spec.shape[1]),
                                "seconds": round(len(x) / SAMPLE_RATE, 3)}}


def unavailable(asr_model: str | None, demo_model: bool) -> str | None:
    """Why `serve --live` (with these settings) cannot recognize speech, or None."""
    import importlib.util

    if asr_model:
        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        return (f"--asr-model needs {', '.join(missing)}: pip install 'noisepath[precompute]'"
                if missing else None)
    if not demo_model:
        return ("speaking a prompt to this model needs a speech recognizer: --asr-model "
                "(a Whisper folder or hub id); the built-in one knows only demo captions")
    return missing_library()


def make_speech(asr_model: str | None = None, device: str = "cpu", demo_model: bool = True,
                per_address: int = SPEECH_PER_ADDRESS, at_once: int = SPEECH_AT_ONCE):
    """The speech service of `serve --live`: Whisper with --asr-model (loaded here, on
    the image model's device; precompute/asr.py), else the demo recognizer for the demo
    model; `per_address` clips of one address at once (--speech-per-address), `at_once`
    clips in the server at once (--speech-at-once). None when `unavailable` says why (the
    caller prints it)."""
    if unavailable(asr_model, demo_model):
        return None
    if asr_model:
        from precompute.asr import WhisperRecognizer  # torch: only with --asr-model

        recognizer = WhisperRecognizer(asr_model, device)
    else:
        recognizer = DemoRecognizer()
    return SpeechService(recognizer, per_address=per_address, max_waiting=at_once)


def speech_info(app) -> dict:
    svc = app.config.get("SPEECH")
    if svc is None:
        return {"available": False, "reason": app.config.get("SPEECH_UNAVAILABLE")
                or missing_library() or "speaking a prompt is off on this server"}
    return svc.info()


def init_app(app) -> None:
    """Register POST api/live/speech (backend/live.py's init_app calls this)."""
    from flask import Blueprint, current_app, jsonify, request

    from backend.clients import address, browser, give_browser_its_id
    from backend.live import check_origin, no_store, refuse

    bp = Blueprint("speech", __name__, url_prefix="/api/live")
    bp.after_request(give_browser_its_id)  # a new browser gets its id here too

    @bp.post("/speech")
    def recognize_clip():
        check_origin()
        svc = current_app.config.get("SPEECH")
        if svc is None:
            refuse(404, "not_available", speech_info(current_app)["reason"])
        if request.content_length is None and request.headers.get("Transfer-Encoding"):
            refuse(411, "length_required", "send the clip with a Content-Length")
        if (request.content_length or 0) > MAX_UPLOAD:
            refuse(413, "payload_too_large", f"the clip is larger than "
                   f"{MAX_UPLOAD // 2**20} MB; send at most {MAX_SECONDS:g} s of WAV")
        if request.mimetype not in CLIP_TYPES:
            refuse(415, "unsupported_media_type", "send the clip as WAV (Content-Type: "
                   "audio/wav)")
        client, where = browser(), address()
        busy = svc.enter(client, where)
        if busy is not None:
            refuse(busy[0], "too_many_requests" if busy[0] == 429 else "busy", busy[1],
                   svc.RETRY_AFTER)
        try:
            x = decode(request.get_data(cache=False))
            return no_store(jsonify(svc.answer(x)))
        except AudioError as e:
            refuse(e.status, e.name, str(e))
        finally:
            svc.leave(client, where)

    app.register_blueprint(bp)
