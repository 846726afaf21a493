"""Shared fixtures. Nothing in the test suite may download: the hub is switched off."""

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

from tests.synthetic_bundle import make_bundle  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_bundle_ro(tmp_path_factory):
    """A valid synthetic bundle shared by tests that only read it."""
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture
def synthetic_bundle(tmp_path, synthetic_bundle_ro):
    """A private copy that a test may corrupt."""
    dst = tmp_path / "bundle"
    shutil.copytree(synthetic_bundle_ro, dst)
    return dst
