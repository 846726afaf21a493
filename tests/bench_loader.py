"""Load a script from benchmarks/ as a module, for the tests that run a bench's functions
(benchmarks/ is a folder of scripts, not a package)."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_benchmark(name: str):
    """benchmarks/<name>.py, executed once as module `name`."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
