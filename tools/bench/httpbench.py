"""Shared parts of the HTTP benchmarks: server processes and wrk.

- `Child` / `child_process`: start a server process in its own session with its stdout
  and stderr in a log file (no pipe to fill), wait for a ready line or for an HTTP
  answer, and always stop it: SIGTERM, then SIGKILL to its process group if it lingers.
- `run_wrk` / `parse_wrk`: one wrk run and its figures (Requests/sec, Transfer/sec,
  latency, errors). wrk prints sizes in binary units: its "MB" is 2^20 bytes.
- `free_port`, `is_listening`: pick a loopback port, and check that nothing is left on it.
- `ListenQueue`: sample a listening socket's accept queue (connections the kernel
  has set up that the server has not accepted yet) while a load runs.
- `install_missing`: Debian's packages for missing commands (wrk, nginx), through
  dev.py's installer, as root.

Nothing here prints: the benchmarks report.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Iterator, Sequence

from tools.argtypes import integer, positive

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL = 0.05
WRK_INSTALL = "wrk is not installed: install it with `apt-get install -y wrk` (Debian's package) and run again"


class BenchError(Exception):
    """A server that would not start or broke, or a load generator that failed."""


# -- ports -----------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def is_listening(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ListenQueue:
    """While the block runs, sample every `period` seconds how many connections wait
    in the accept queue of the socket listening on `port` (`ss`'s Recv-Q)."""

    def __init__(self, port: int, period: float = 0.1) -> None:
        self.port = port
        self.period = period
        self.samples: list[tuple[float, int]] = []  # (seconds since the start, queued)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> ListenQueue:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.period):
            queued = accept_queue(self.port)
            if queued is not None:
                self.samples.append((time.monotonic() - self._started, queued))

    @property
    def most(self) -> int:
        return max((queued for _, queued in self.samples), default=0)

    @property
    def busy_until(self) -> float:
        """Seconds from the start to the last sample with a connection waiting (0: none seen)."""
        return max((at for at, queued in self.samples if queued), default=0.0)


def accept_queue(port: int) -> int | None:
    """Connections waiting to be accepted on the TCP socket listening on `port`."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=5, check=False)
        fields = done.stdout.split()
        if len(fields) >= 2 and fields[1].isdigit():
            return int(fields[1])
    return None


def install_missing(commands: dict[str, str]) -> None:
    """Install the Debian package of each missing command ({command: package})
    through dev.py's `ensure_debian_packages`, which does so only as root with apt-get."""
    if all(shutil.which(command) for command in commands):
        return
    spec = importlib.util.spec_from_file_location("chordcdn_dev", ROOT / "dev.py")
    if spec is None or spec.loader is None:
        return
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    dev.ensure_debian_packages(commands)


# -- child processes -------------------------------------------------------------------------


@dataclass
class Child:
    """A running server process whose output goes to `log`."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self, limit: int = 4000) -> str:
        """The end of what it printed on stdout and stderr."""
        try:
            text = self.log.read_bytes().decode(errors="replace")
        except OSError:
            return ""
        return text[-limit:].strip()

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with code {code}; its output: {self.output() or '(empty)'}")

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float = STARTUP_TIMEOUT) -> re.Match[str]:
        """Wait until its output matches `pattern` (say, a line naming its port)."""
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(self.output(limit=1 << 20))
            if match:
                return match
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} printed no ready line within {timeout:g} s; its output: {self.output() or '(empty)'}")
            time.sleep(POLL)

    def wait_for_http(self, host: str, port: int, path: str = "/", timeout: float = STARTUP_TIMEOUT) -> int:
        """Wait until it answers GET path with any HTTP status; return that status."""
        deadline = time.monotonic() + timeout
        last = "no attempt"
        while True:
            self.check_alive()
            try:
                return http_get(host, port, path).status
            except OSError as exc:  # refused while starting, or http.client errors (subclasses of OSError or not)
                last = f"{type(exc).__name__}: {exc}"
            except http.client.HTTPException as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.name} did not answer HTTP on {host}:{port} within {timeout:g} s ({last}); "
                    f"its output: {self.output() or '(empty)'}"
                )
            time.sleep(POLL)


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> tuple[int, bool]:
    """SIGTERM the process, wait; if it lingers, SIGKILL its whole process group.
    Returns (exit code, whether it had to be killed)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout), False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait(timeout), True


@contextlib.contextmanager
def child_process(
    argv: Sequence[str],
    name: str,
    *,
    log_dir: Path | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    exits: dict[str, Any] | None = None,
) -> Iterator[Child]:
    """Run a server process for the duration of the block, then stop it (even on error).

    It runs in a session of its own, so a Ctrl-C at the terminal reaches only us and we
    stop it in order. Its exit code (and whether it had to be killed) goes into `exits`."""
    with contextlib.ExitStack() as stack:
        if log_dir is None:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="httpbench-")))
        log = log_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".log")
        with open(log, "wb") as out:
            process = subprocess.Popen(
                list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            yield Child(name, process, log)
        finally:
            code, killed = stop_process(process)
            if exits is not None:
                exits[name] = {"code": code, "killed": killed}


# -- HTTP checks ------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes


def http_get(host: str, port: int, path: str, timeout: float = 10.0) -> Reply:
    """One GET on a fresh connection (no proxies from the environment)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        headers: dict[str, str] = {}
        for key, value in response.getheaders():
            key = key.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return Reply(response.status, headers, body)
    finally:
        conn.close()


# -- wrk ----------------------------------------------------------------------------------------


def find_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise BenchError(WRK_INSTALL)
    return path


@dataclass
class WrkResult:
    """One wrk run. Sizes in bytes, times in microseconds."""

    requests_per_s: float
    transfer_bytes_per_s: float
    requests: int = 0
    seconds: float = 0.0
    bytes_read: float = 0.0
    latency_avg_us: float | None = None
    latency_stdev_us: float | None = None
    latency_max_us: float | None = None
    latency_percentiles_us: dict[str, float] = field(default_factory=dict)  # "50", "75", "90", "99"
    non_2xx_3xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)  # connect, read, write, timeout
    client_cpu: float | None = None  # wrk's CPU seconds per second of wall time: near -t, wrk was the limit

    @property
    def errors(self) -> int:
        return self.non_2xx_3xx + sum(self.socket_errors.values())

    @property
    def transfer_mib_per_s(self) -> float:
        return self.transfer_bytes_per_s / 2**20

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["transfer_mib_per_s"] = self.transfer_mib_per_s
        data["errors"] = self.errors
        return data


_SIZE_UNITS = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40, "PB": 2**50}
_TIME_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


def parse_size(text: str) -> float:
    """wrk's size, like '93.86MB' (binary units), in bytes."""
    match = re.fullmatch(_NUMBER + r"\s*([KMGTP]?B)", text.strip())
    if not match:
        raise ValueError(f"not a wrk size: {text!r}")
    return float(match.group(1)) * _SIZE_UNITS[match.group(2)]


def parse_time_us(text: str) -> float:
    """wrk's duration, like '386.01us' or '3.98ms', in microseconds."""
    match = re.fullmatch(_NUMBER + r"\s*(us|ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"not a wrk time: {text!r}")
    return float(match.group(1)) * _TIME_UNITS[match.group(2)]


def _metric(value: str) -> float:
    """wrk's count with an optional k/M/G suffix (decimal), like '82.70k'."""
    match = re.fullmatch(_NUMBER + r"([kMG]?)", value.strip())
    if not match:
        raise ValueError(f"not a wrk number: {value!r}")
    return float(match.group(1)) * {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}[match.group(2)]


def parse_wrk(text: str) -> WrkResult:
    """The figures of wrk's standard report (with or without --latency)."""
    rps = re.search(r"^Requests/sec:\s*" + _NUMBER, text, re.M)
    transfer = re.search(r"^Transfer/sec:\s*(\S+)", text, re.M)
    if not rps or not transfer:
        raise BenchError(f"wrk printed no Requests/sec or Transfer/sec line; its output: {text.strip()[-2000:] or '(empty)'}")
    result = WrkResult(float(rps.group(1)), parse_size(transfer.group(1)))
    total = re.search(r"^\s*([0-9]+) requests in (\S+), (\S+) read", text, re.M)
    if total:
        result.requests = int(total.group(1))
        result.seconds = parse_time_us(total.group(2)) / 1e6
        result.bytes_read = parse_size(total.group(3))
    latency = re.search(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)", text, re.M)
    if latency:
        with contextlib.suppress(ValueError):  # wrk prints nan or -nan with no completed request
            result.latency_avg_us = parse_time_us(latency.group(1))
            result.latency_stdev_us = parse_time_us(latency.group(2))
            result.latency_max_us = parse_time_us(latency.group(3))
    distribution = text.split("Latency Distribution", 1)
    if len(distribution) == 2:
        for pct, value in re.findall(r"^\s*([0-9.]+)%\s+(\S+)\s*$", distribution[1], re.M):
            with contextlib.suppress(ValueError):
                result.latency_percentiles_us[pct.rstrip("0").rstrip(".") if "." in pct else pct] = parse_time_us(value)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*([0-9]+)", text)
    if non_2xx:
        result.non_2xx_3xx = int(non_2xx.group(1))
    sockets = re.search(r"Socket errors:\s*connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+)", text)
    if sockets:
        result.socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, sockets.groups())))
    return result


def wrk_argv(url: str, *, threads: int, connections: int, duration: float, wrk: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    return [
        wrk or find_wrk(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--latency",
        *extra,
        url,
    ]


def run_wrk(url: str, *, threads: int, connections: int, duration: float, wrk: str | None = None, extra: Sequence[str] = ()) -> WrkResult:
    """One wrk run against url; raise BenchError if it fails or completes no request."""
    argv = wrk_argv(url, threads=threads, connections=connections, duration=duration, wrk=wrk, extra=extra)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # children reaped meanwhile: wrk alone
    started = time.monotonic()
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=duration + 60, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish within {duration + 60:g} s: {' '.join(argv)}") from None
    if done.returncode != 0:
        raise BenchError(f"wrk exited with code {done.returncode}: {(done.stderr or done.stdout).strip()[-2000:]}")
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = parse_wrk(done.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result.client_cpu = cpu / wall if wall > 0 else None
    if result.requests_per_s <= 0:
        raise BenchError(f"wrk completed no request against {url}: {done.stdout.strip()[-2000:]}")
    return result


def wrk_version(wrk: str | None = None) -> str | None:
    """wrk's version line (wrk prints it, with usage, on -v and exits 1)."""
    path = wrk or shutil.which("wrk")
    if path is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=10, check=False)
        match = re.search(r"wrk (\S+)", done.stdout + done.stderr)
        if match:
            return match.group(1)
    return None


# -- figures ----------------------------------------------------------------------------------------


def summarize(results: Sequence[WrkResult]) -> dict[str, Any] | None:
    """Medians across rounds, with every round kept."""
    if not results:
        return None
    p99 = [r.latency_percentiles_us["99"] for r in results if "99" in r.latency_percentiles_us]
    p50 = [r.latency_percentiles_us["50"] for r in results if "50" in r.latency_percentiles_us]
    return {
        "requests_per_s": median(r.requests_per_s for r in results),
        "transfer_mib_per_s": median(r.transfer_mib_per_s for r in results),
        "latency_p50_us": median(p50) if p50 else None,
        "latency_p99_us": median(p99) if p99 else None,
        "client_cpu": median(cpus) if (cpus := [r.client_cpu for r in results if r.client_cpu is not None]) else None,
        "errors": sum(r.errors for r in results),
        "rounds": [r.to_json() for r in results],
    }


MAX_DURATION, MAX_ROUNDS = 600.0, 100


def add_wrk_arguments(parser: argparse.ArgumentParser, rounds_help: str) -> None:
    """The wrk options every HTTP benchmark takes: rounds, duration, threads, connections."""
    parser.add_argument("--rounds", type=integer(1, MAX_ROUNDS), default=3, help=rounds_help)
    parser.add_argument("--duration", type=positive(MAX_DURATION), default=5.0, metavar="S", help="seconds per wrk run (wrk -d)")
    parser.add_argument("--threads", type=integer(1, 64), default=1, help="wrk threads (wrk -t)")
    parser.add_argument("--connections", type=integer(1, 10000), default=32, help="wrk connections (wrk -c)")
