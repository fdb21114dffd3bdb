"""Retention's per-event cost at 1k and 100k tags: wall time and Redis commands per evaluated push.

In a private redis-server it fills one repository's tag index per size with that many tags (half of them
versions; ten protected ones, ``latest`` included, among the newest at every size), lets the planner build
its sets once (a sweep, timed), then measures ``RetentionPlanner.evaluate`` for a stream of new pushes that
each push a tag out of a count window (alternately a new highest version and a new branch tag), so every
event finds a deletion at the boundary.
Each event is indexed first (not timed: that is the webhook's work), then judged (timed).
``CONFIG RESETSTAT`` / ``INFO commandstats`` around the judgement count every Redis command it caused, those
run inside Lua scripts included, and the microseconds Redis spent in them. The sizes take turns event by
event, so other load on the machine affects them alike. The full plan (``GET .../retention``, and the
sweep) is timed too, for contrast: it is O(n).

It checks the numbers mean what they say: every 97th event's decisions are compared with the full plan,
every event must plan a deletion, and each repository really has the stated number of tags.

    .venv/bin/python bench/retention_bench.py [--sizes 1000,100000] [--events 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: the repo root holds consumer/ and tests/
    sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis  # noqa: E402

from consumer.envelope import ChangeKind  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from tests.support.retention import REPO, Rig, change, digest_of, make_rig, policy_set  # noqa: E402

POLICIES: dict[str, dict[str, Any]] = {
    "dry_run": {"dry_run": True, "keep": [{"last_pushed": 10}, {"semver_latest": 5}, {"tags": ["release-*"]}],
                "protected": ["stable", "prod-*"]},
    "enforced": {"dry_run": False, "keep": [{"last_pushed": 10}, {"semver_latest": 5}, {"tags": ["release-*"]}],
                 "protected": ["stable", "prod-*"], "max_deletions_per_run": 20},
}
POPULATE_BATCH = 64


@dataclass
class Result:
    tags: int
    mode: str
    events: int
    mean_us: float
    p50_us: float
    p99_us: float
    redis_us_mean: float
    commands_mean: float
    commands_max: int
    deletions_planned: int
    sweep_ms: float
    full_plan_ms: float


def tag_name(i: int, size: int) -> str:
    """Half versions (1.x.y), a release-* tag in a thousand, the rest branch builds; the newest few odd ones
    protected (prod-*), so that protected tags sit above the window edges, the same number at every size."""
    if i % 2 == 0:
        return f"1.{i // 2000}.{i // 2 % 1000}"
    if i > size - 20:
        return f"prod-{i}"
    if i % 1000 == 1:
        return f"release-{i}"
    return f"build-{i}"


async def populate(rig: Rig, size: int) -> None:
    names = [tag_name(i, size) for i in range(size - 2)] + ["stable", "latest"]
    for start in range(0, len(names), POPULATE_BATCH):
        batch = names[start : start + POPULATE_BATCH]
        await asyncio.gather(*(
            rig.index.apply(change(ChangeKind.TAG_PUSH, at_s=start + i, tag=tag, digest=digest_of(f"{size}:{tag}")))
            for i, tag in enumerate(batch)
        ))
    live = await rig.redis.zcard(rig.keys.repo(REPO).tags)
    if live != size:
        raise SystemExit(f"populated {live} tags, wanted {size}")


async def server_work(redis: Redis) -> tuple[int, int]:
    """Commands run and microseconds Redis spent in them since the last CONFIG RESETSTAT (INFO/CONFIG excluded)."""
    stats = await redis.info("commandstats")
    mine = [v for k, v in stats.items() if not k.startswith(("cmdstat_info", "cmdstat_config"))]
    return sum(int(v["calls"]) for v in mine), sum(int(v["usec"]) for v in mine)


@dataclass
class Sample:
    """One repository under measurement."""

    rig: Rig
    size: int
    sweep_ms: float
    durations: list[float]
    server_us: list[int]
    commands: list[int]
    planned: int = 0


async def prepare(redis: Redis, size: int, mode: str) -> Sample:
    rig = make_rig(redis, policy_set(POLICIES[mode]), tag_deletes=False, prefix=f"bench{size}")
    await populate(rig, size)
    started = time.perf_counter()
    await rig.planner.sweep_repository(REPO)  # builds the derived sets once, as the sweep after start-up does
    return Sample(rig, size, (time.perf_counter() - started) * 1000, [], [], [])


async def judge_one(redis: Redis, sample: Sample, k: int) -> None:
    """Index one new push (not timed), then time retention's judgement of it."""
    clock = float(sample.size + 10 + k)
    tag = f"2.0.{k}" if k % 2 == 0 else f"feature-{k}"
    pushed = change(ChangeKind.TAG_PUSH, at_s=clock, tag=tag, digest=digest_of(f"new:{tag}"))
    await sample.rig.index.apply(pushed)
    sample.rig.clock.at_s = clock
    await redis.config_resetstat()
    started = time.perf_counter()
    decisions = await sample.rig.planner.evaluate(pushed)
    sample.durations.append((time.perf_counter() - started) * 1e6)
    commands, usec = await server_work(redis)
    sample.commands.append(commands)
    sample.server_us.append(usec)
    sample.planned += sum(1 for d in decisions if d.deletion is not None)
    if k % 97 == 0:  # the per-event decisions are the full plan's, also at this size
        plan = {d.tag: d for d in (await sample.rig.planner.plan(REPO)).tags}  # type: ignore[union-attr]
        if any(plan[d.tag] != d for d in decisions):
            raise SystemExit(f"{sample.size} tags, event {k}: per-event decisions differ from the full plan")


async def measure(redis: Redis, sizes: list[int], mode: str, events: int) -> list[Result]:
    """All sizes in one Redis, their events interleaved, so that other load on the machine hits them alike."""
    await redis.flushall()
    samples = [await prepare(redis, size, mode) for size in sizes]
    for k in range(events):
        for sample in samples:
            await judge_one(redis, sample, k)
    results = []
    for sample in samples:
        if sample.planned < events:
            raise SystemExit(f"only {sample.planned} deletions planned for {events} events: boundary not exercised")
        started = time.perf_counter()
        await sample.rig.planner.plan(REPO)
        full_plan_ms = (time.perf_counter() - started) * 1000
        quantiles = statistics.quantiles(sample.durations, n=100)
        results.append(Result(
            sample.size, mode, events, statistics.fmean(sample.durations), statistics.median(sample.durations),
            quantiles[98], statistics.fmean(sample.server_us), statistics.fmean(sample.commands),
            max(sample.commands), sample.planned, sample.sweep_ms, full_plan_ms,
        ))
    return results


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        cpu = next((line.partition(":")[2].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "consumer"], capture_output=True, text=True).stdout
    return {
        "nproc": str(os.cpu_count()), "cpu": cpu, "kernel": platform.release(), "python": platform.python_version(),
        "redis_py": metadata.version("redis"), "hiredis": metadata.version("hiredis"),
        "commit": commit + (" + uncommitted changes in consumer/" if dirty.strip() else ""),
    }


async def main(args: argparse.Namespace) -> tuple[dict[str, str], list[Result]]:
    # SIGTERM cancels the run, which unwinds the with-blocks: the redis-server started here is stopped by pid.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    results = []
    with tempfile.TemporaryDirectory(prefix="retention-bench-") as tmp, RedisServer(Path(tmp)) as server:
        async with Redis.from_url(server.url) as redis:
            info = machine() | {"redis_server": str((await redis.info("server"))["redis_version"])}
            print(" ".join(f"{k}={v}" for k, v in info.items()))
            for mode in args.modes:
                for result in await measure(redis, args.sizes, mode, args.events):
                    results.append(result)
                    print(f"{result.tags:>7} tags {mode:>8}: {result.mean_us:6.0f} us mean, {result.p50_us:6.0f} p50, "
                          f"{result.p99_us:6.0f} p99; Redis {result.redis_us_mean:4.0f} us, "
                          f"{result.commands_mean:4.1f} commands/event (max {result.commands_max}); "
                          f"sweep {result.sweep_ms:.0f} ms, full plan {result.full_plan_ms:.0f} ms", flush=True)
    return info, results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 100_000])
    parser.add_argument("--modes", type=lambda s: s.split(","), default=list(POLICIES))
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--json", default=None)
    arguments = parser.parse_args()
    machine_info, measured = asyncio.run(main(arguments))
    if arguments.json:
        report = {"machine": machine_info, "results": [asdict(r) for r in measured]}
        Path(arguments.json).write_text(json.dumps(report, indent=2))
