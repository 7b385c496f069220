"""Fixtures for the project's own tests.

`netns_lab` builds the real netns lab once per session (real sshd, real
paramiko). Where it cannot be built, its tests skip naming why, except in CI
(CI=true), where an unavailable lab is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from hwtests import labnetns, labvm, traffic
from hwtests.errors import HwtestsError
from hwtests.transport import LocalTransport

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str):
    """Skip locally; fail in CI, where every tier must run."""
    if IN_CI:
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def netns_lab(tmp_path_factory):
    """A netns lab with two pairs; yields the inventory path."""
    try:
        labnetns.preflight()
    except HwtestsError as exc:
        unavailable(str(exc))
    state = tmp_path_factory.mktemp("netns-lab")
    try:
        inv = labnetns.up(state, pairs=2)
    except HwtestsError as exc:
        unavailable(f"netns lab cannot be built: {exc}")
    yield inv
    labnetns.down(state)


@contextmanager
def booted_vm_lab(state: Path, kernels: list[str]) -> Iterator[Path]:
    """A VM lab of these kernels: up, its inventory path yielded, down whatever happened;
    unavailable (a skip here, a failure in CI) when it cannot be built."""
    try:
        labvm.preflight()
        inv = labvm.up(state, kernels=kernels, progress=lambda s: None)
    except HwtestsError as exc:
        unavailable(f"VM lab cannot be built: {exc}")
    try:
        yield inv
    finally:
        labvm.down(state)


@pytest.fixture(scope="module")
def lt():
    """This machine as a host (LocalTransport), for the traffic programs' own tests."""
    t = LocalTransport("local")
    yield t
    t.cleanup()


@pytest.fixture(scope="module")
def bins(lt, tmp_path_factory):
    """The traffic programs built for this machine through `lt` (a private build cache)."""
    if not shutil.which("cc") or not shutil.which("make"):
        pytest.skip("no cc/make on this machine")
    return traffic.build(lt, cache_root=tmp_path_factory.mktemp("traffic-cache"))


@pytest.fixture(scope="session")
def hwtests_bin() -> list[str]:
    exe = Path(os.sys.executable).with_name("hwtests")
    return [str(exe)] if exe.exists() else [os.sys.executable, "-m", "hwtests.cli"]


def run_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    exe = Path(os.sys.executable).with_name("hwtests")
    cmd = [str(exe)] if exe.exists() else [os.sys.executable, "-m", "hwtests.cli"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=kw.pop("timeout", 300), **kw)
