"""Spoken clips for the speech tests and benchmark: Debian's espeak-ng speaks a text to
WAV (`apt-get install espeak-ng`; .ci/run installs it), and WAV files made with numpy."""

from __future__ import annotations

import io
import shutil
import subprocess
import wave

import numpy as np

ESPEAK = shutil.which("espeak-ng")
ESPEAK_SKIP = "needs Debian's espeak-ng to speak test clips (apt-get install espeak-ng)"
# espeak-ng's "en" is British English; "en-gb+f2" would ignore its variant, "en+f2" does not.
VOICES = {"en-us": "US male", "en-us+f3": "US female", "en-gb-x-rp": "British (RP) male",
          "en+f2": "British female"}  # the benchmark's four


def speak(text: str, voice: str = "en-us", words_per_minute: int = 160) -> bytes:
    """text spoken by espeak-ng as WAV bytes (22050 Hz mono 16-bit)."""
    return subprocess.run([ESPEAK, "-v", voice, "-s", str(words_per_minute), "--stdout", text],
                          capture_output=True, check=True, timeout=60).stdout


def wav_bytes(samples: np.ndarray, rate: int, bits: int = 16, float_format: bool = False) -> bytes:
    """samples (n,) or (n, channels) in [-1, 1] as a WAV file (PCM, or 32-bit float)."""
    x = samples if samples.ndim == 2 else samples[:, None]
    channels = x.shape[1]
    if float_format:
        import struct

        data = x.astype("<f4").tobytes()
        fmt = struct.pack("<HHIIHH", 3, channels, rate, rate * channels * 4, channels * 4, 32)
        body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + \
            b"data" + struct.pack("<I", len(data)) + data
        return b"RIFF" + struct.pack("<I", len(body)) + body
    if bits == 8:
        data = np.clip(np.round(x * 127 + 128), 0, 255).astype(np.uint8).tobytes()
    elif bits == 24:
        ints = np.clip(np.round(x * (2**23 - 1)), -2**23, 2**23 - 1).astype("<i4")
        data = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        data = np.clip(np.round(x * 32767), -32768, 32767).astype("<i2").tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(bits // 8)
        w.setframerate(rate)
        w.writeframes(data)
    return out.getvalue()


def add_noise(clip: bytes, snr_db: float, seed: int = 0) -> bytes:
    """A WAV clip with white noise added at snr_db (signal power over noise power)."""
    with wave.open(io.BytesIO(clip)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64) / 32768
    power = np.mean(x ** 2)
    noise = np.random.default_rng(seed).normal(0, np.sqrt(power / 10 ** (snr_db / 10)), len(x))
    return wav_bytes(np.clip(x + noise, -1, 1), rate)


def tiny_whisper(folder) -> str:
    """A randomly initialised Whisper (d_model 16, 2 layers, 4 heads, 80 mel bins) with a
    letters-only tokenizer, saved to folder, all built offline: for plumbing tests only
    (what it says is noise)."""
    import json
    from pathlib import Path

    from transformers import (WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperTokenizer)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ"]  # Ġ: a space
    (folder / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(letters)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    specials = ["<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    end = "<|endoftext|>"
    tokenizer = WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                 additional_special_tokens=specials, eos_token=end,
                                 bos_token=end, unk_token=end, pad_token=end)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in [end, *specials]}
    config = WhisperConfig(
        vocab_size=len(tokenizer), d_model=16, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=32,
        decoder_ffn_dim=32, num_mel_bins=80, max_source_positions=1500,
        max_target_positions=128, decoder_start_token_id=ids["<|startoftranscript|>"],
        eos_token_id=ids[end], pad_token_id=ids[end], bos_token_id=ids[end])
    model = WhisperForConditionalGeneration(config)
    model.generation_config.forced_decoder_ids = None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return str(folder)
