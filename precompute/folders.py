"""Checks on folder arguments, made before anything heavy loads (no torch here), so a
mistyped path is a one-line error in a fraction of a second."""

from __future__ import annotations

from pathlib import Path


def pipeline_folder_problem(folder, flag: str | None = None) -> str | None:
    """None when `folder` is a diffusers pipeline folder (it has model_index.json), else
    the one-line error: "[FLAG ]FOLDER: not a pipeline folder (no model_index.json)" (a
    flag that ends in "=", as in "--student one-step=", is joined without a space)."""
    if (Path(folder) / "model_index.json").is_file():
        return None
    name = f"{flag}{'' if flag.endswith('=') else ' '}{folder}" if flag else str(folder)
    return f"{name}: not a pipeline folder (no model_index.json)"
