"""Run every atheris harness in turn, for a fixed time or number of inputs, and report what each did.

    python3 fuzz/run_all.py --seconds 60                 # one minute per harness, niced, one at a time
    python3 fuzz/run_all.py --runs 20000 --only device   # a bounded number of inputs
    python3 fuzz/run_all.py --seconds 600 --json results.json

Each harness keeps a growing corpus in ``<workdir>/<name>/`` (``fuzz/corpus/`` by default, ignored by git),
seeded from the harness's ``seeds()``; crash inputs go to ``<workdir>/artifacts/``. The figures printed are
libFuzzer's own: inputs executed (``stat::number_of_executed_units``), and the last ``cov:`` (edges covered) and
``ft:`` (features) it reported. Harnesses run sequentially: one fuzzing process at a time.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
HARNESSES = ("messages", "keys", "config", "uapi", "device")
_PROGRESS = re.compile(r"^#(\d+)\s+\S+\s+cov: (\d+) ft: (\d+)(?: corp: (\d+))?")
_EXECUTED = re.compile(r"stat::number_of_executed_units: (\d+)")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


@dataclass
class Result:
    harness: str
    seconds: float
    inputs: int = 0
    cov: int = 0
    ft: int = 0
    corpus: int = 0
    exit_code: int = 0
    crashes: list[str] = field(default_factory=list)
    log: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.crashes


def write_seeds(name: str, corpus: Path) -> int:
    """Put the harness's seed inputs into its corpus directory (named by content, so re-runs add nothing)."""
    spec = importlib.util.spec_from_file_location(f"fuzz_{name}", HERE / f"fuzz_{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    corpus.mkdir(parents=True, exist_ok=True)
    seeds: list[bytes] = module.seeds()
    for seed in seeds:
        (corpus / ("seed-" + hashlib.sha1(seed).hexdigest())).write_bytes(seed)
    return len(seeds)


def parse_log(text: str, result: Result) -> None:
    for line in text.splitlines():
        progress = _PROGRESS.match(line)
        if progress:
            result.inputs = max(result.inputs, int(progress.group(1)))
            result.cov, result.ft = int(progress.group(2)), int(progress.group(3))
            if progress.group(4):
                result.corpus = int(progress.group(4))
        executed = _EXECUTED.search(line)
        if executed:
            result.inputs = int(executed.group(1))
        artifact = _ARTIFACT.search(line)
        if artifact and "crash-" in artifact.group(1):
            result.crashes.append(artifact.group(1))


def run(name: str, *, seconds: float | None, runs: int | None, workdir: Path, nice: int, extra: list[str]) -> Result:
    corpus = workdir / name
    artifacts = workdir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    write_seeds(name, corpus)
    command = [sys.executable, str(HERE / f"fuzz_{name}.py"), "-print_final_stats=1",
               f"-artifact_prefix={artifacts}/{name}-"]
    if seconds is not None:
        command.append(f"-max_total_time={int(seconds)}")
    if runs is not None:
        command.append(f"-runs={runs}")
    command += [*extra, str(corpus)]
    if nice:
        command = ["nice", "-n", str(nice), *command]
    log_path = workdir / f"{name}.log"
    start = time.monotonic()
    with open(log_path, "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    result = Result(name, round(time.monotonic() - start, 1), exit_code=code, log=str(log_path))
    parse_log(log_path.read_text(errors="replace"), result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, help="fuzzing time per harness")
    parser.add_argument("--runs", type=int, help="inputs per harness")
    parser.add_argument("--only", nargs="+", choices=HARNESSES, help="run only these harnesses")
    parser.add_argument("--workdir", type=Path, default=HERE / "corpus", help="corpora, logs and crash inputs")
    parser.add_argument("--nice", type=int, default=19, help="niceness of the fuzzing processes (0: none)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("libfuzzer_args", nargs="*", help="passed on to libFuzzer (after --)")
    args = parser.parse_args(argv)
    if args.seconds is None and args.runs is None:
        parser.error("give --seconds and/or --runs")
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    print(f"{'harness':<10} {'seconds':>8} {'inputs':>11} {'exec/s':>8} {'cov':>6} {'ft':>7} {'corpus':>7}  crashes",
          flush=True)
    for name in args.only or HARNESSES:
        result = run(name, seconds=args.seconds, runs=args.runs, workdir=args.workdir.resolve(), nice=args.nice,
                     extra=args.libfuzzer_args)
        results.append(result)
        rate = result.inputs / result.seconds if result.seconds else 0.0
        crashes = ", ".join(result.crashes) if result.crashes else ("none" if result.ok else f"exit {result.exit_code}")
        print(f"{name:<10} {result.seconds:>8.1f} {result.inputs:>11,} {rate:>8.0f} {result.cov:>6} {result.ft:>7} "
              f"{result.corpus:>7}  {crashes}", flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
