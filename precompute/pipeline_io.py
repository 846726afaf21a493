"""Moves a job's results from the model to the bundle without making the model wait.

Owns the two stages after a job's denoising sweep (precompute/loop.py):

- decoding: every latent of a job (each run's x_t and predicted x0, all guidance scales)
  goes through the VAE in one batched `decode_job` call, `decode_batch_size` latents at a
  time, the batch chosen from the device's free memory (`auto_decode_batch_size`); with a
  preview decoder (precompute/preview_decoder.py) the in-between frames come from it and
  only each run's final image from the full VAE;
- writing: resizing frames, encoding sprites (WebP, PNG previews), compressing arrays and
  writing JSON run in `RunWriters`, a pool of worker processes fed through a bounded
  queue, so the next job's sweep runs while the last job's files are written. Each worker
  stages its run and publishes it (precompute/writer.py: staging + rename), so a killed
  worker or process leaves only finished runs, and the same command resumes the rest.
  `workers=0` writes in the calling process; the files are the same bytes either way.

Imports no torch at module level: worker processes load numpy, Pillow and the writer only.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# ---------------------------------------------------------------------------- decoding

# Decoder activation memory per image, in units of H x W x (widest full-size decoder
# channels) x itemsize. Measured for SD 1.5's AutoencoderKL at 512 px (peak allocated
# while decoding a batch, minus the weights): about 10 such tensors are alive at the
# peak (resnet input, two convs, the upsampler's output at double size). 16 leaves room.
DECODE_BYTES_FACTOR = 16
CPU_DECODE_BATCH = 8       # a CPU gains nothing from larger batches, and memory is shared
MAX_DECODE_BATCH = 32       # larger gains little on a GPU, and pads more (decode_padded)


def auto_decode_batch_size(components, height: int, width: int) -> int:
    """Latents decoded at once: on a GPU, what half of its free memory holds (at most 32);
    elsewhere a moderate 8, fewer when the images are large for the machine's memory."""
    import torch

    vae = components.vae
    itemsize = torch.finfo(getattr(vae, "dtype", components.dtype)).bits // 8
    channels = list(getattr(vae.config, "block_out_channels", [128]))
    per_image = DECODE_BYTES_FACTOR * height * width * max(channels[:2]) * itemsize
    device = components.device
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(max(1, min(MAX_DECODE_BATCH, free // 2 // per_image)))
    available = _available_memory()
    if available is None:
        return CPU_DECODE_BATCH
    return int(max(1, min(CPU_DECODE_BATCH, available // 4 // per_image)))


def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def use_channels_last(components) -> None:
    """Put the UNet and the VAE in channels_last memory format (NHWC convolutions: faster
    on tensor-core GPUs for some shapes; benchmarks/gpu_check.sh measures it). Results
    change only by summation order (tests/test_pipeline_io.py)."""
    import torch

    for module in (components.unet, components.vae):
        module.to(memory_format=torch.channels_last)


@dataclass
class DecodedRun:
    """One run's frames, uint8 (N, H, W, 3) at the model's resolution."""
    decoded: np.ndarray                 # (T+1, H, W, 3): x_T .. x_0
    pred_original_sample: np.ndarray    # (T, H, W, 3)
    approximate: dict | None = None     # run.json's images.*.approximate (preview decoder)


def decode_job(components, results, batch_size: int, preview=None) -> list[DecodedRun]:
    """Decode every latent of a job's runs in one batched pass (full VAE), or, with a
    `preview` decoder (precompute/preview_decoder.py), the in-between frames with it and
    each run's final image with the full VAE. Returns one DecodedRun per result."""
    if preview is not None:
        return preview.decode_job(components, results, batch_size)
    latents = np.concatenate([np.concatenate([r.latents, r.pred_original_sample])
                              for r in results])                      # (G (2T+1), C, h, w)
    images = decode_padded(components, latents, batch_size)            # (G (2T+1), H, W, 3)
    out, start = [], 0
    for r in results:
        n, m = len(r.latents), len(r.pred_original_sample)
        out.append(DecodedRun(images[start:start + n], images[start + n:start + n + m]))
        start += n + m
    return out


def decode_padded(components, latents: np.ndarray, batch_size: int, vae=None) -> np.ndarray:
    """loop.decode_latents in batches of exactly `batch_size` (the last one padded with
    copies of the last latent, dropped after): a convolution's summation order can depend
    on the batch size, so this keeps each image independent of which job, and which other
    runs, it was decoded with. A bundle's images are then the same bytes however its jobs
    were split (a resumed precompute, two processes), for one batch size."""
    from precompute import loop

    n = len(latents)
    if n == 0:
        return np.zeros((0, 0, 0, 3), np.uint8)
    pad = -n % batch_size
    if pad:
        latents = np.concatenate([latents, np.repeat(latents[-1:], pad, axis=0)])
    return loop.decode_latents(components, latents, batch_size, vae=vae)[:n]


# ----------------------------------------------------------------------------- writing

def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, size, size', 3), keeping the aspect ratio (Lanczos)."""
    n, h, w, _ = frames.shape
    if max(h, w) == size:
        return frames
    nh, nw = (size, round(w * size / h)) if h >= w else (round(h * size / w), size)
    return np.stack([np.asarray(Image.fromarray(f).resize((nw, nh), Image.LANCZOS))
                     for f in frames])


@dataclass
class RunTask:
    """Everything a worker needs to write one run: writer.stage_run's arguments, with the
    VAE's frames at full size (the worker resizes them to `image_size`)."""
    manifest: dict
    arrays: dict
    frames: dict                        # name -> (frames (N, H, W, 3) uint8, "webp" | ...)
    image_size: int
    approximate: dict = field(default_factory=dict)  # name -> images.<name>.approximate

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]


_WRITERS: dict = {}  # per process: (root, config key) -> BundleWriter


def write_run(root: str, config: dict, task: RunTask) -> tuple[str, bool, float]:
    """Stage and publish one run (in a worker process, or inline): (run_id, new, seconds)."""
    from precompute.writer import BundleWriter, dumps

    start = time.perf_counter()
    key = (str(root), dumps(config))
    if key not in _WRITERS:
        _WRITERS[key] = BundleWriter(root, config)
    writer = _WRITERS[key]
    images = {name: _sprite(name, resize_frames(frames, task.image_size), fmt,
                            task.approximate.get(name))
              for name, (frames, fmt) in task.frames.items()}
    staged = writer.stage_run(task.manifest, task.arrays, images)
    new = writer.publish([staged]) == 1
    return task.run_id, new, time.perf_counter() - start


def _sprite(name: str, frames: np.ndarray, fmt: str, approximate: dict | None):
    """writer.stage_run's image: (frames, fmt), with the entry field `approximate` when a
    preview decoder made some of the frames."""
    return (frames, fmt) if approximate is None else (frames, fmt, {"approximate": approximate})


def _exit_with_parent(parent: int) -> None:
    """In a writer process: die with the precompute that started it (killed), so no writer
    outlives it or publishes after it; a run it was staging stays in .tmp/ until the next
    precompute clears it (writer.clean_stale_staging) and computes that run again. Linux:
    the kernel's parent-death signal, at once; elsewhere a thread that polls."""
    import signal
    import threading

    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # died before the signal was armed
            os._exit(1)
        return
    except (OSError, AttributeError):
        pass

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def default_workers() -> int:
    """Writer processes by default: a quarter of the cores, 1 to 4 (a GPU job writes about
    as fast as 2-4 cores encode; on a small CPU one keeps a core for the model)."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


class WriterDied(OSError):
    """A writer process died (killed, out of memory): finished runs are in the bundle."""


@dataclass
class _PendingJob:
    run_ids: list
    futures: list
    on_done: object
    results: list = field(default_factory=list)


class RunWriters:
    """Writes runs in `workers` processes (0: in this one), at most `max_pending` runs
    queued; `submit` returns at once unless the queue is full. `waited` counts the seconds
    the caller spent waiting for writers (serial writes, a full queue, the final drain);
    `drain_waited` is the final drain's share: the last job's writes, which no later job
    can overlap (one job's worth however many jobs a precompute has)."""

    def __init__(self, root: Path, config: dict, workers: int, max_pending: int | None = None):
        self.root, self.config, self.workers = str(root), dict(config), int(workers)
        self.max_pending = max_pending or max(2, 2 * self.workers)
        self.waited = 0.0
        self.drain_waited = 0.0    # of `waited`: in drain()
        self.write_seconds = 0.0   # time spent writing, summed over workers
        self._pool = None
        self._jobs: list[_PendingJob] = []

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        self.close(cancel=kind is not None)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: the parent holds torch (threads, maybe CUDA), which a fork must not copy
            self._pool = ProcessPoolExecutor(self.workers,
                                             mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_exit_with_parent,
                                             initargs=(os.getpid(),))
        return self._pool

    def start(self) -> None:
        """Start the worker processes now (they take a second to import), e.g. while the
        model loads."""
        if self.workers:
            pool = self._executor()
            pool.submit(int, 0).result()

    def submit(self, tasks: list[RunTask], on_done=None) -> list[tuple[str, bool]]:
        """Queue one job's runs; `on_done(finished)` is called once all are written, with
        [(run_id, new)]. Returns the jobs' results that finished meanwhile (also passed to
        their on_done)."""
        if not self.workers:
            start = time.perf_counter()
            results = [write_run(self.root, self.config, t) for t in tasks]
            self.waited += time.perf_counter() - start
            self.write_seconds += sum(s for *_, s in results)
            finished = [(rid, new) for rid, new, _ in results]
            if on_done is not None:
                on_done(finished)
            return finished
        done = []
        while self._pending() + len(tasks) > max(self.max_pending, len(tasks)) and self._jobs:
            done += self._collect(block=True)
        pool = self._executor()
        try:
            futures = [pool.submit(write_run, self.root, self.config, t) for t in tasks]
        except BrokenProcessPool:
            raise self._died() from None
        self._jobs.append(_PendingJob([t.run_id for t in tasks], futures, on_done))
        return done + self._collect(block=False)

    def writing(self, run_id: str) -> bool:
        """Whether run_id is queued or being written here."""
        return any(run_id in job.run_ids for job in self._jobs)

    def drain(self) -> list[tuple[str, bool]]:
        """Wait for every queued run; returns what finished."""
        done, before = [], self.waited
        while self._jobs:
            done += self._collect(block=True)
        self.drain_waited += self.waited - before
        return done

    def close(self, cancel: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None

    def _pending(self) -> int:
        return sum(not f.done() for job in self._jobs for f in job.futures)

    def _collect(self, block: bool) -> list[tuple[str, bool]]:
        """Finish the jobs whose runs are all written (waiting for one, if block)."""
        if block:
            start = time.perf_counter()
            wait([f for job in self._jobs for f in job.futures if not f.done()],
                 return_when=FIRST_COMPLETED)
            self.waited += time.perf_counter() - start
        finished = []
        for job in [j for j in self._jobs if all(f.done() for f in j.futures)]:
            self._jobs.remove(job)
            results = [self._result(f) for f in job.futures]
            self.write_seconds += sum(s for *_, s in results)
            pairs = [(rid, new) for rid, new, _ in results]
            if job.on_done is not None:
                job.on_done(pairs)
            finished += pairs
        return finished

    def _result(self, future):
        try:
            return future.result()
        except BrokenProcessPool:
            raise self._died() from None

    def _died(self) -> WriterDied:
        return WriterDied(f"a writer process died while writing runs to {self.root}; the "
                          "runs it finished are in the bundle: run the same command again to "
                          "compute the rest")
