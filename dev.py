"""Set up the project's virtualenv, then run the demo, the tests or the benchmarks.

    python3 dev.py demo [ARGS...]    # chordcdn demo
    python3 dev.py test [ARGS...]    # pytest
    python3 dev.py fuzz [ARGS...]    # the fuzz tests with the long (nightly) Hypothesis profile
    python3 dev.py bench             # tools/bench, with the peers (kademlia; nginx and wrk from Debian)

Needs only Python 3.11+ with pip: it creates .venv beside this file and installs the
project into it, again whenever pyproject.toml changes. As root it also installs the
Debian packages the tests need (iproute2, for the multi-host test) when missing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"


def ensure_env(extras: str) -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    stamp = VENV / ".installed"
    if stamp.exists() and stamp.read_text() == wanted:
        return
    if not PYTHON.exists():
        print(f"creating {VENV}", file=sys.stderr)
        venv.create(VENV, with_pip=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[{extras}]"], check=True, cwd=ROOT)
    stamp.write_text(wanted)


TEST_COMMANDS = {"ip": "iproute2"}  # command the tests run -> the Debian package that has it


def ensure_debian_packages(commands: dict[str, str]) -> None:
    """apt-get install the packages whose commands are missing (only as root, where
    apt-get exists; elsewhere the tests that need them skip and say why)."""
    missing = sorted({package for command, package in commands.items() if shutil.which(command) is None})
    if not missing or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    print(f"installing {', '.join(missing)} for the tests", file=sys.stderr)
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=environment)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=False, env=environment)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test", "fuzz", "bench"):
        sys.exit(__doc__)
    command, rest = sys.argv[1], sys.argv[2:]
    os.chdir(ROOT)
    if command == "bench":
        ensure_env("test,bench")
        for bench in ("bench_hops", "bench_rpc", "bench_store", "bench_small", "bench_parsers", "bench_edge", "bench_offload"):
            subprocess.run([str(PYTHON), "-m", f"tools.bench.{bench}", *rest], check=True)
        return
    ensure_env("test")
    if command == "demo":
        os.execv(BIN / "chordcdn", [str(BIN / "chordcdn"), "demo", *rest])
    if command == "fuzz":
        os.environ["CHORDCDN_FUZZ_PROFILE"] = "nightly"
        os.execv(PYTHON, [str(PYTHON), "-m", "pytest", "tests/test_fuzz_wire.py", "tests/test_fuzz_edge.py", *rest])
    ensure_debian_packages(TEST_COMMANDS)
    os.execv(PYTHON, [str(PYTHON), "-m", "pytest", *rest])


if __name__ == "__main__":
    main()
