"""Whisper for real models (`noisepath serve --live --model ... --asr-model MODEL`): the
recognizer behind POST api/live/speech when the served model is not the demo model,
whose grammar-constrained recognizer (backend/speech.py) only knows demo captions.

transformers' automatic-speech-recognition pipeline over any local Whisper folder or
hub id, on the same device as the image model. It answers what backend/speech.py's
DemoRecognizer answers (text, words, n-best), so the page and API do not change: the
transcript is the prompt (any text is a prompt for a real model); a clip in which
Whisper hears nothing is "not understood". Whisper's words carry no confidence here
(null), nor times (the pipeline gives word times only for checkpoints with alignment
heads; null).
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
MAX_NEW_TOKENS = 96  # a prompt is at most 77 CLIP tokens; Whisper's are of similar size


class WhisperRecognizer:
    """A Whisper checkpoint through transformers' pipeline; one clip at a time."""

    not_understood = "Whisper heard no words"

    def __init__(self, model: str, device: str = "cpu", max_new_tokens: int = MAX_NEW_TOKENS):
        import threading

        from transformers import pipeline

        from precompute.model import check_device

        self.name = f"whisper ({model})"
        self.pipe = pipeline("automatic-speech-recognition", model=model,
                             device=check_device(device))
        self.lock = threading.Lock()
        self.max_new_tokens = max_new_tokens

    def recognize(self, x: np.ndarray) -> dict:
        """What was heard in 16 kHz mono samples, in DemoRecognizer's form."""
        with self.lock:
            out = self.pipe({"raw": np.asarray(x, dtype=np.float32), "sampling_rate": SAMPLE_RATE},
                            generate_kwargs={"max_new_tokens": self.max_new_tokens})
        text = " ".join(str(out.get("text", "")).split())
        words = [{"word": w, "start": None, "end": None, "confidence": None}
                 for w in text.split()]
        return {"understood": bool(text), "text": text or None, "heard": text,
                "words": words, "nbest": [text] if text else [], "recognizer": self.name}
