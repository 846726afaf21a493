"""2-D maps of denoising trajectories: every step's latent as a point.

One projection is fitted on all the runs it is given (the caller passes every run
of one seed), so any two runs of that seed can be drawn on the same map. UMAP is
what Diffusion Explainer uses; PCA is the fast, exactly reproducible fallback.
Both are deterministic for a fixed seed. Output is centred and scaled into [-1, 1]
with the aspect ratio kept.
"""

from __future__ import annotations

import warnings

import numpy as np

METHODS = ("umap", "pca")


def pca(x: np.ndarray, n_components: int) -> np.ndarray:
    """Scores on the top principal components, (N, n_components), with a fixed sign per axis.

    Uses the N x N Gram matrix when there are fewer points than dimensions (always, for
    latents: a few thousand steps vs 16,384 numbers each).
    """
    x = x - x.mean(axis=0)  # (N, D)
    if len(x) <= x.shape[1]:
        gram = (x @ x.T).astype(np.float64)  # (N, N)
        eigenvalues, eigenvectors = np.linalg.eigh(gram)
        order = np.argsort(eigenvalues)[::-1][:n_components]
        scores = eigenvectors[:, order] * np.sqrt(np.clip(eigenvalues[order], 0, None))  # (N, k)
    else:
        eigenvalues, eigenvectors = np.linalg.eigh((x.T @ x).astype(np.float64))  # (D, D)
        order = np.argsort(eigenvalues)[::-1][:n_components]
        scores = x.astype(np.float64) @ eigenvectors[:, order]  # (N, k)
    # an eigenvector's sign is arbitrary: make each axis' largest |score| positive
    flip = np.sign(scores[np.abs(scores).argmax(axis=0), np.arange(scores.shape[1])])
    return scores * np.where(flip == 0, 1, flip)


def normalize(points: np.ndarray) -> np.ndarray:
    """Centre on the bounding box and scale so the longer side spans [-1, 1]."""
    low, high = points.min(axis=0), points.max(axis=0)
    half_range = (high - low).max() / 2
    return (points - (low + high) / 2) / (half_range if half_range > 0 else 1.0)


def project_trajectories(latents_by_run: dict[str, np.ndarray], method: str = "umap",
                         seed: int = 0) -> dict[str, np.ndarray]:
    """{run_id: (T+1, C, h, w)} -> {run_id: (T+1, 2)} on one shared, fitted map."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not latents_by_run:
        return {}
    run_ids = list(latents_by_run)
    lengths = [len(latents_by_run[r]) for r in run_ids]
    x = np.concatenate([np.asarray(latents_by_run[r], np.float32).reshape(n, -1)
                        for r, n in zip(run_ids, lengths)])  # (sum of T+1, C*h*w)

    if method == "pca" or len(x) < 4:
        points = pca(x, 2)
    else:
        with warnings.catch_warnings():  # umap warns at import that TensorFlow is absent
            warnings.simplefilter("ignore", ImportWarning)
            import umap  # lazily: slow to import (numba)

        # UMAP on the top principal components: the same neighbourhoods, much faster
        reduced = pca(x, min(50, len(x) - 1))
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed,
                            n_jobs=1, init="spectral" if len(x) > 10 else "random")
        points = reducer.fit_transform(reduced)

    points = normalize(np.asarray(points, np.float64)).astype(np.float32)  # (sum of T+1, 2)
    offsets = np.cumsum([0] + lengths)
    return {r: points[offsets[i]:offsets[i + 1]] for i, r in enumerate(run_ids)}
