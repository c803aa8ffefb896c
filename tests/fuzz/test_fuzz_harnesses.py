"""The atheris harnesses in fuzz/: each runs clean for a bounded number of inputs, and every crash input ever
found (tests/fuzz/regressions/) replays without failing.

A regression file is named ``<harness>-<what>``; it is fed to that harness's ``TestOneInput`` in this process.
Files listed in ``KNOWN_OPEN`` are bugs found by the fuzzers in code not yet fixed: they are expected to fail
(strictly, so the entry has to go when the fix lands).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
FUZZ = ROOT / "fuzz"
REGRESSIONS = Path(__file__).resolve().parent / "regressions"

# Inputs per harness in CI: the whole file stays well under a minute on a shared 2-core machine.
RUNS = {"messages": 20_000, "keys": 20_000, "config": 10_000, "uapi": 8_000, "device": 3_000}

# Regression files for bugs found but not fixed yet: file name -> what is wrong. Empty today: the config key
# leak (config-privatekey-outside-section-leaks-key-prefix) and the double-counted drop
# (device-ratelimited-cookie-counted-twice) are both fixed.
KNOWN_OPEN: dict[str, str] = {}


def _load(name: str) -> ModuleType:
    path = FUZZ / f"fuzz_{name}.py"
    spec = importlib.util.spec_from_file_location(f"wgpy_fuzz_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(RUNS))
def test_harness_runs_clean(name: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(_load(name).seeds()):
        (corpus / f"seed-{i}").write_bytes(seed)
    proc = subprocess.run(
        [sys.executable, str(FUZZ / f"fuzz_{name}.py"), f"-runs={RUNS[name]}", "-seed=1",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    tail = proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    assert "Done" in proc.stderr and "runs in" in proc.stderr, tail
    assert not list(tmp_path.glob("crash-*")), tail


@pytest.mark.parametrize("name", sorted(RUNS))
def test_seeds_pass_in_process(name: str) -> None:
    module = _load(name)
    assert callable(module.TestOneInput)
    seeds = module.seeds()
    assert seeds
    for seed in seeds:
        module.TestOneInput(seed)


def _regressions() -> list[object]:
    params: list[object] = []
    for path in sorted(REGRESSIONS.iterdir()) if REGRESSIONS.is_dir() else []:
        if path.name.startswith("."):
            continue
        marks = []
        if path.name in KNOWN_OPEN:
            marks.append(pytest.mark.xfail(reason=KNOWN_OPEN[path.name], strict=True, raises=AssertionError))
        params.append(pytest.param(path, id=path.name, marks=marks))
    return params


@pytest.mark.parametrize("path", _regressions())
def test_regression_replays(path: Path) -> None:
    harness = path.name.split("-", 1)[0]
    assert harness in RUNS, f"regression file {path.name} does not start with a harness name"
    module = _load(harness)
    module.TestOneInput(path.read_bytes())


def test_every_harness_is_run_here() -> None:
    on_disk = {p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.py")}
    assert on_disk == set(RUNS)
