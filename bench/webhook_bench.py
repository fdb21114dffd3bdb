"""Webhook throughput: the real consumer against a bare aiohttp endpoint, same load, same run.

One run starts its own redis-server, ``python -m consumer serve`` (authentication, dedup and the index
update all on) and ``bench/baseline_app.py`` (reads the body, answers 200) on free loopback ports, then
drives ``POST /v1/events`` on each in turn with wrk and ``bench/wrk/events.lua``: one real-shaped
registry 2.8.2 event per request, every event id, tag and digest new, a minted bearer token. It prints
events/s, p50 and p99 for both and the ratio consumer/baseline, and checks that the number is honest:
no socket errors, no non-2xx, and the consumer's ``events_total{outcome="applied"}`` and the index in
Redis grew by what wrk counted. Every process it starts is stopped by pid, also on Ctrl-C and errors.

Exit status: 0 fine, 1 a check failed, 2 set-up failed, 3 the ratio is below ``--min-ratio``.
The servers are measured one after the other, never at the same time; on a small machine wrk, the
server and redis-server still share the cores, which the printed CPU columns make visible.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: the repo root holds consumer/ and tests/
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from consumer.rediskeys import RedisKeys  # noqa: E402
from tests.support.procs import (  # noqa: E402
    LOOPBACK,
    ManagedProcess,
    ProcessFailedError,
    free_port,
    run_checked,
    wait_for_port,
)
from tests.support.redis_server import RedisServer  # noqa: E402

BENCH = Path(__file__).resolve().parent
LUA_SCRIPT = BENCH / "wrk" / "events.lua"
BASELINE_APP = BENCH / "baseline_app.py"
LADDER_APP = BENCH / "ladder_app.py"
LADDER_STEPS = ("read", "auth", "validate")  # bench/ladder_app.py's partial webhooks, cheapest first
# The manifest push by tag recorded from a real registry 2.8.2 (a copy of ../shared/registry-events).
ENVELOPE = ROOT / "tests/fixtures/registry-events/distribution-2.8.2/01-push-oci-single-arch-tag/003.json"
EVENTS_PATH = "/v1/events"
KEY_PREFIX = "rc"  # the consumer's default key_prefix; the bench leaves it alone
EXIT_CHECK_FAILED, EXIT_SETUP_FAILED, EXIT_BELOW_BAR = 1, 2, 3


class BenchError(RuntimeError):
    """The bench could not produce an honest number; the message says why."""


@dataclass(frozen=True)
class WrkResult:
    """What ``events.lua``'s ``done()`` printed, latencies in microseconds."""

    requests: int
    duration_us: int
    bytes: int
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    mean_us: float
    errors: dict[str, int]

    @property
    def events_per_second(self) -> float:
        return self.requests / (self.duration_us / 1e6)

    @property
    def non_2xx(self) -> int:
        return self.errors["status"]

    @property
    def socket_errors(self) -> int:
        return sum(n for kind, n in self.errors.items() if kind != "status")


@dataclass
class Measurement:
    """One measured wrk run against one target, with the CPU each process used meanwhile."""

    target: str
    round: int
    wrk: WrkResult
    cpu_cores: dict[str, float]
    checks: list[str] = field(default_factory=list)


# --- processes -------------------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _clean_env() -> dict[str, str]:
    """This environment without any REGISTRY_CONSUMER_* (a developer's config must not leak in)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_CONSUMER_")}


def _http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_ready(url: str, process: ManagedProcess, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.running:
            raise BenchError(f"{process.name} exited with {process.returncode}\n{process.log_tail()}")
        with contextlib.suppress(OSError):
            if _http_get(url)[0] == 200:
                return
        time.sleep(0.1)
    raise BenchError(f"{url} not ready within {timeout}s\n{process.log_tail()}")


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a live process, from /proc (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat), to see what else ran meanwhile."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_busy_cores: float, timeout: float, window: float = 2.0) -> float:
    """Wait (up to ``timeout`` s) until the machine's busy cores over ``window`` s drop below
    ``max_busy_cores``, so other users of a shared machine disturb the measurement less; returns the
    last busy level seen."""
    deadline = time.monotonic() + timeout
    while True:
        before = _machine_busy_seconds()
        time.sleep(window)
        busy = (_machine_busy_seconds() - before) / window
        if busy < max_busy_cores or time.monotonic() >= deadline:
            return busy


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- load -------------------------------------------------------------------------------------------


def write_template(path: Path) -> None:
    """The real manifest-push-by-tag envelope with placeholders for what must differ per request."""
    body = json.loads(ENVELOPE.read_text())["body"]
    event = body["events"][0]
    digest = event["target"]["digest"]
    event["id"] = "@EVENT_ID@"
    event["request"]["id"] = "@REQUEST_ID@"
    event["target"]["tag"] = "@TAG@"
    event["target"]["digest"] = "@DIGEST@"
    event["target"]["url"] = event["target"]["url"].replace(digest, "@DIGEST@")
    # Compact, like the registry's Go encoder sends it.
    path.write_text(json.dumps(body, separators=(",", ":")))


def run_wrk(url: str, template: Path, token: str, run_no: int, args: argparse.Namespace,
            duration_seconds: float) -> tuple[WrkResult, float]:
    """One wrk run; returns its result and the CPU seconds wrk itself used."""
    argv = [args.wrk, "-t", str(args.threads), "-c", str(args.connections), "-d", f"{duration_seconds:g}s",
            "--timeout", "5s", "-s", str(LUA_SCRIPT), url + EVENTS_PATH, "--", str(template), token, str(run_no)]
    cpu_before = _children_cpu_seconds()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=duration_seconds + 30)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    wrk_cpu = _children_cpu_seconds() - cpu_before
    if proc.returncode != 0:
        raise BenchError(f"wrk exited {proc.returncode}: {err}\n{out}")
    for line in out.splitlines():
        if line.startswith("WRK_RESULT "):
            return WrkResult(**json.loads(line.removeprefix("WRK_RESULT "))), wrk_cpu
    raise BenchError(f"wrk printed no WRK_RESULT line:\n{out}\n{err}")


# --- the consumer's own account -------------------------------------------------------------------


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The consumer's /metrics as {(sample name, sorted labels): value}."""
    status, body = _http_get(url + "/metrics")
    if status != 200:
        raise BenchError(f"/metrics answered {status}")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def _sum(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **match: str) -> float:
    return sum(v for (n, labels), v in samples.items()
               if n == name and all(dict(labels).get(k) == want for k, want in match.items()))


@dataclass(frozen=True)
class IndexCount:
    tags: int
    manifests: int


def index_count(client: redis.Redis, repository: str) -> IndexCount:
    repo = RedisKeys(KEY_PREFIX).repo(repository)
    return IndexCount(tags=int(client.zcard(repo.tags)), manifests=int(client.zcard(repo.manifests)))


def _settle(url: str, quiet_seconds: float = 0.3, timeout: float = 10.0) -> dict[Any, float]:
    """Scrape until the applied counter stops moving (requests wrk left in flight have finished)."""
    deadline = time.monotonic() + timeout
    previous = scrape(url)
    while time.monotonic() < deadline:
        time.sleep(quiet_seconds)
        current = scrape(url)
        if current.get(_APPLIED) == previous.get(_APPLIED):
            return current
        previous = current
    return previous


_APPLIED = ("registry_consumer_events_total", (("action", "push"), ("outcome", "applied")))


def verify_consumer(result: WrkResult, before: dict[Any, float], after: dict[Any, float],
                    index_before: IndexCount, index_after: IndexCount, connections: int) -> list[str]:
    """Problems that make the consumer's number dishonest (empty when it is honest)."""
    events = "registry_consumer_events_total"
    applied = _sum(after, events, outcome="applied") - _sum(before, events, outcome="applied")
    problems = []
    # wrk stops counting at the deadline; up to one request per connection may still land after it.
    if not result.requests <= applied <= result.requests + connections:
        problems.append(f"consumer applied {applied:.0f} events, wrk counted {result.requests} answers")
    for outcome in ("duplicate", "dead_lettered", "ignored"):
        n = _sum(after, events, outcome=outcome) - _sum(before, events, outcome=outcome)
        if n:
            problems.append(f"{n:.0f} events were {outcome}")
    codes = "registry_consumer_webhook_requests_total"
    not_ok = {code: _sum(after, codes, code=code) - _sum(before, codes, code=code)
              for (name, labels), _ in after.items() if name == codes
              for code in [dict(labels)["code"]] if code != "200"}
    # wrk closes its connections at the deadline with requests in flight; the consumer counts each such
    # cut-off request as 500 (the handler saw ConnectionResetError). wrk itself saw every answer it
    # counted (its non-2xx must be 0), so up to one 500 per connection is the cut-off, anything else is not.
    cut_off = not_ok.pop("500", 0)
    if any(not_ok.values()) or cut_off > connections:
        problems.append(f"consumer answered non-200: {not_ok}, 500: {cut_off:.0f}")
    grown = index_after.tags - index_before.tags
    if grown != applied:
        problems.append(f"index grew by {grown} tags for {applied:.0f} applied events")
    if index_after.manifests - index_before.manifests != grown:
        problems.append(f"index grew by {index_after.manifests - index_before.manifests} manifests, not {grown}")
    return problems


# --- environment report ------------------------------------------------------------------------------


def machine_info(redis_client: redis.Redis, wrk: str) -> dict[str, str]:
    """Everything RESULTS.md needs to say where and on what the numbers were taken."""
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.partition(":")[2].strip()
                break
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "consumer"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return {
        "nproc": str(os.cpu_count()),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": metadata.version("aiohttp"),
        "redis_py": metadata.version("redis"),
        "hiredis": metadata.version("hiredis"),
        "pyjwt": metadata.version("PyJWT"),
        "redis_server": str(redis_client.info("server")["redis_version"]),
        "wrk": " ".join(wrk_version.split()[:2]),
        "commit": commit + (" + uncommitted changes in consumer/" if dirty else ""),
    }


# --- the run -----------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    url: str
    process: ManagedProcess


def _measure(target: Target, round_no: int, run_no: int, template: Path, token: str, args: argparse.Namespace,
             redis_client: redis.Redis, redis_pid: int | None, repository: str) -> Measurement:
    is_consumer = target.name == "consumer"
    if is_consumer:
        before, index_before = scrape(target.url), index_count(redis_client, repository)
    profiler = _start_profiler(target, round_no, args) if is_consumer and args.profile else None
    cpu = {"server": _cpu_seconds(target.process.pid), "redis": _cpu_seconds(redis_pid),
           "machine": _machine_busy_seconds()}
    try:
        result, wrk_cpu = run_wrk(target.url, template, token, run_no, args, args.duration)
    finally:
        if profiler is not None:
            _finish_profiler(profiler, args)
    seconds = result.duration_us / 1e6
    cores = {
        "server": (_cpu_seconds(target.process.pid) - cpu["server"]) / seconds,
        "redis": (_cpu_seconds(redis_pid) - cpu["redis"]) / seconds,
        "wrk": wrk_cpu / seconds,
    }
    # Everything else that kept a core busy: other users of the machine, and kernel work not charged to us.
    cores["other"] = max(0.0, (_machine_busy_seconds() - cpu["machine"]) / seconds - sum(cores.values()))
    m = Measurement(target.name, round_no, result, cores)
    if result.socket_errors or result.non_2xx:
        m.checks.append(f"wrk saw {result.non_2xx} non-2xx answers and socket errors {result.errors}")
    if not target.process.running:
        m.checks.append(f"{target.name} died:\n{target.process.log_tail()}")
    elif is_consumer:
        after = _settle(target.url)
        m.checks += verify_consumer(result, before, after, index_before, index_count(redis_client, repository),
                                    args.connections)
    return m


# --- profiling (optional) ----------------------------------------------------------------------------


@dataclass
class Profiler:
    process: subprocess.Popen[bytes]
    output: Path


def _start_profiler(target: Target, round_no: int, args: argparse.Namespace) -> Profiler:
    """py-spy samples the consumer for the measured run; collapsed stacks go to ``--profile`` DIR."""
    args.profile.mkdir(parents=True, exist_ok=True)
    output = args.profile / f"consumer-round{round_no}.txt"
    argv = [args.py_spy, "record", "--pid", str(target.process.pid), "--duration", f"{args.duration:.0f}",
            "--rate", "250", "--format", "raw", "--output", str(output)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    return Profiler(proc, output)


def _finish_profiler(profiler: Profiler, args: argparse.Namespace) -> None:
    try:
        profiler.process.wait(timeout=args.duration + 30)
    finally:
        if profiler.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(profiler.process.pid, signal.SIGKILL)
            profiler.process.wait()
    if profiler.output.is_file():
        print(f"profile: {profiler.output}", file=sys.stderr)
        print(summarise_profile(profiler.output), file=sys.stderr)


def summarise_profile(path: Path, top: int = 20, focus: str = "receive_events") -> str:
    """Inclusive and self time per function from py-spy's collapsed stacks, and what ``focus`` spends
    its time in, each as % of the samples (py-spy counts busy samples only, so 100% = the CPU it used)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    under_focus: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame(f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        names = [f.split(" ", 1)[0] for f in frames]
        if focus in names:
            at = len(names) - 1 - names[::-1].index(focus)
            child = frames[at + 1] if at + 1 < len(frames) else "(self)"
            under_focus[child] = under_focus.get(child, 0) + count
    if not total:
        return "profile: no samples"

    def table(counts: dict[str, int], title: str) -> list[str]:
        rows = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [title] + [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in rows]

    # The event loop's own frames are in every stack and say nothing.
    inclusive = {frame: n for frame, n in inclusive.items() if n < 0.95 * total}
    return "\n".join([f"profile: {total} samples", *table(inclusive, "inclusive:"), *table(own, "self:"),
                      *table(under_focus, f"inside {focus}:")])


def _frame(frame: str) -> str:
    """``func (consumer/index.py:12)`` -> ``func (consumer/index.py)``: per function, not per line."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    return f"{name} ({path.removeprefix(str(ROOT) + '/')})"


def _row(name: str, m: Measurement) -> str:
    w = m.wrk
    c = m.cpu_cores
    return (f"{name:<10} {w.events_per_second:>9.0f} {w.p50_us / 1000:>8.2f} {w.p90_us / 1000:>8.2f} "
            f"{w.p99_us / 1000:>8.2f} {w.requests:>9} {w.non_2xx + w.socket_errors:>7} "
            f"{c['server']:>7.2f} {1e6 * c['server'] / w.events_per_second:>7.0f} "
            f"{c['redis']:>6.2f} {c['wrk']:>5.2f} {c['other']:>6.2f}")


_LADDER_LABELS = {
    "read": "read: consumer app, middleware, read body, answer",
    "auth": "auth: + bearer token verified, revocation checked",
    "validate": "validate: + envelope validated and classified",
    "consumer": "consumer: + dedup and index update in Redis, listeners, metrics",
}


def report(measurements: list[Measurement], info: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """Print the table and return the summary (medians over rounds)."""
    print()
    for key, value in info.items():
        print(f"{key:>13}: {value}")
    print(f"{'load':>13}: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s after "
          f"{args.warmup:g}s warm-up, {args.rounds} round(s), targets measured one at a time")
    print()
    print(f"{'target':<10} {'events/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'requests':>9} "
          f"{'errors':>7} {'srv CPU':>7} {'us/ev':>7} {'redis':>6} {'wrk':>5} {'other':>6}")
    for m in measurements:
        print(_row(f"{m.target}" + (f"#{m.round}" if args.rounds > 1 else ""), m))
    summary: dict[str, Any] = {}
    for name in ("baseline", "consumer"):
        mine = [m for m in measurements if m.target == name]
        runs = [m.wrk for m in mine]
        summary[name] = {
            "events_per_second": statistics.median(r.events_per_second for r in runs),
            "cpu_us_per_event": statistics.median(1e6 * m.cpu_cores["server"] / m.wrk.events_per_second
                                                  for m in mine),
            "p50_ms": statistics.median(r.p50_us for r in runs) / 1000,
            "p99_ms": statistics.median(r.p99_us for r in runs) / 1000,
        }
    ratio = summary["consumer"]["events_per_second"] / summary["baseline"]["events_per_second"]
    summary["ratio"] = ratio
    steps = [name for name in LADDER_STEPS if any(m.target == name for m in measurements)]
    if steps:
        print("\nladder (bench/ladder_app.py; medians; ratio = events/s against the baseline, us/ev = server CPU):")
        for name in (*steps, "consumer"):
            mine = [m for m in measurements if m.target == name]
            eps = statistics.median(m.wrk.events_per_second for m in mine)
            cpu = statistics.median(1e6 * m.cpu_cores["server"] / m.wrk.events_per_second for m in mine)
            summary.setdefault("ladder", {})[name] = {"events_per_second": eps, "cpu_us_per_event": cpu,
                                                      "ratio": eps / summary["baseline"]["events_per_second"]}
            print(f"  {_LADDER_LABELS[name]:<58} {eps:>7.0f} events/s  {cpu:>5.0f} us/ev  "
                  f"ratio {eps / summary['baseline']['events_per_second']:.3f}")
    print()
    print(f"(CPU columns in cores of {os.cpu_count()}; us/ev = server CPU microseconds per event, the "
          "least noise-sensitive number; other = everything else busy on the machine, incl. py-spy)")
    if args.rounds > 1:
        for name in ("baseline", "consumer"):
            s = summary[name]
            print(f"median {name:<9} {s['events_per_second']:>9.0f} events/s  p50 {s['p50_ms']:.2f} ms  "
                  f"p99 {s['p99_ms']:.2f} ms  {s['cpu_us_per_event']:.0f} us CPU/event")
    verdict = "meets" if ratio >= args.min_ratio else "BELOW"
    print(f"ratio consumer/baseline (events/s): {ratio:.3f}  ({verdict} the bar of {args.min_ratio:g})")
    return summary


def run(args: argparse.Namespace, workdir: Path) -> int:
    redis_server = RedisServer(workdir / "redis")
    consumer_port, baseline_port, ladder_port = free_port(), free_port(), free_port()
    secret = secrets.token_hex(32)
    env = {
        **_clean_env(),
        "REGISTRY_CONSUMER_LISTEN": f"{LOOPBACK}:{consumer_port}",
        "REGISTRY_CONSUMER_REDIS_URL": redis_server.url,
        "REGISTRY_CONSUMER_JWT_SECRET": secret,
        "REGISTRY_CONSUMER_LOG_LEVEL": "WARNING",
    }
    consumer = ManagedProcess("consumer", [sys.executable, "-m", "consumer", "serve"], workdir / "consumer.log",
                              env=env, cwd=ROOT)
    baseline = ManagedProcess("baseline", [sys.executable, str(BASELINE_APP), "--listen",
                                           f"{LOOPBACK}:{baseline_port}"], workdir / "baseline.log",
                              env=_clean_env(), cwd=ROOT)
    ladder = ManagedProcess("ladder", [sys.executable, str(LADDER_APP), "--listen", f"{LOOPBACK}:{ladder_port}"],
                            workdir / "ladder.log", env=env, cwd=ROOT) if args.ladder else None
    redis_client: redis.Redis | None = None
    try:
        redis_server.start()
        redis_client = redis.Redis.from_url(redis_server.url)
        redis_pid = int(redis_client.info("server")["process_id"])
        consumer.start()
        baseline.start()
        wait_for_port(LOOPBACK, consumer_port, timeout=20, process=consumer)
        wait_for_port(LOOPBACK, baseline_port, timeout=20, process=baseline)
        targets = {
            "baseline": Target("baseline", f"http://{LOOPBACK}:{baseline_port}", baseline),
            "consumer": Target("consumer", f"http://{LOOPBACK}:{consumer_port}", consumer),
        }
        if ladder is not None:
            ladder.start()
            wait_for_port(LOOPBACK, ladder_port, timeout=20, process=ladder)
            _wait_ready(f"http://{LOOPBACK}:{ladder_port}/readyz", ladder)
            for step in LADDER_STEPS:
                targets[step] = Target(step, f"http://{LOOPBACK}:{ladder_port}/ladder/{step}", ladder)
        _wait_ready(targets["consumer"].url + "/readyz", consumer)
        # The public way to get a token (what an operator pastes into the registry's config).
        token = run_checked([sys.executable, "-m", "consumer", "token", "mint", "--sub", "registry",
                             "--scope", "events:write", "--ttl", "1h"], env=env).stdout.strip()
        template = workdir / "envelope.json"
        write_template(template)
        repository = json.loads(ENVELOPE.read_text())["body"]["events"][0]["target"]["repository"]
        info = machine_info(redis_client, args.wrk)
        run_no = 0
        for target in targets.values():
            run_no += 1
            print(f"warm-up {target.name} {args.warmup:g}s ...", file=sys.stderr)
            run_wrk(target.url, template, token, run_no, args, args.warmup)
        measurements = []
        for round_no in range(args.rounds):
            # Alternate the order so neither target always runs on a machine warmed by the other.
            order = ["baseline", *(LADDER_STEPS if ladder is not None else ()), "consumer"]
            if round_no % 2:
                order.reverse()
            for name in order:
                run_no += 1
                if args.quiet_wait > 0:
                    busy = wait_for_quiet(args.quiet_below, args.quiet_wait)
                    if busy >= args.quiet_below:
                        print(f"machine still busy ({busy:.2f} cores) after {args.quiet_wait:g}s; measuring anyway",
                              file=sys.stderr)
                print(f"measuring {name} {args.duration:g}s ...", file=sys.stderr)
                measurements.append(_measure(targets[name], round_no, run_no, template, token, args,
                                             redis_client, redis_pid, repository))
        summary = report(measurements, info, args)
        problems = [f"{m.target}: {p}" for m in measurements for p in m.checks]
        if args.json:
            args.json.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                                             "summary": summary, "runs": [asdict(m) for m in measurements]},
                                            indent=2))
        if problems:
            print("\nCHECKS FAILED, the numbers are not honest:", *problems, sep="\n  ")
            return EXIT_CHECK_FAILED
        index = index_count(redis_client, repository)
        print(f"checks passed: no errors, no non-2xx; the consumer applied every counted event "
              f"(index now {index.tags} tags, {index.manifests} manifests in {repository})")
        return 0 if summary["ratio"] >= args.min_ratio else EXIT_BELOW_BAR
    finally:
        if redis_client is not None:
            redis_client.close()
        for proc in (baseline, consumer, ladder):
            if proc is not None:
                proc.stop()
        redis_server.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measured run (default 15)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per target (default 3)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads, at most 2 on 2 cores (default 2)")
    parser.add_argument("--rounds", type=int, default=1, help="measured runs per target; medians reported")
    parser.add_argument("--min-ratio", type=float, default=0.5, help="the bar for consumer/baseline (0.5)")
    parser.add_argument("--quiet-below", type=float, default=0.3,
                        help="before each measured run, wait until other load is below this many cores (0.3)")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="seconds to wait for that at most, 0 = never wait (default 60)")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs) even on success")
    parser.add_argument("--profile", type=Path, default=None,
                        help="sample the consumer with py-spy during its measured runs; stacks go to this dir")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="py-spy binary")
    parser.add_argument("--ladder", action="store_true",
                        help="also measure bench/ladder_app.py's partial webhooks (read, auth, validate)")
    parser.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk", help="wrk binary")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(args.wrk).is_file():
        print(f"webhook_bench: wrk not found at {args.wrk} (apt-get install wrk; make bench does)", file=sys.stderr)
        return EXIT_SETUP_FAILED
    if not ENVELOPE.is_file():
        print(f"webhook_bench: envelope not found: {ENVELOPE}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    signal.signal(signal.SIGTERM, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    status = EXIT_SETUP_FAILED
    try:
        status = run(args, workdir)
    except (BenchError, ProcessFailedError) as exc:
        print(f"webhook_bench: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("webhook_bench: interrupted; every process stopped", file=sys.stderr)
        status = 130
    finally:
        if status == 0 and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs: {workdir}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
