"""CPU and peak memory of a command's whole process tree (shared by the benchmarks beside this file).

`getrusage(RUSAGE_CHILDREN)` misses workers started through multiprocessing's forkserver (their parent
is the forkserver, not the command), so the tree is measured instead:
  * in a cgroup v1 of its own when this process may create one (root on Linux): `cpuacct.usage` is the
    exact CPU of every process that ever ran in it, and `memory.max_usage_in_bytes` its peak memory
    (page cache of the files it read and wrote included);
  * otherwise by polling /proc: each pid's last CPU times (a pid that exits between two polls loses
    at most one interval).
Memory is polled either way: the largest sum over the tree of proportional set sizes (PSS: a page
shared by k processes counts 1/k in each, so the sum is the tree's own memory), and of resident
sets (RSS: shared library pages counted in every process), and the sum of each process's own peak
(VmHWM), which cannot be below the true peak.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Usage:
    cpu: float  # seconds, every process of the tree
    wall: float
    peak_pss: int  # bytes, the largest sum of proportional set sizes seen while polling (shared pages split)
    peak_rss: int  # bytes, the largest sum of resident sets seen (shared library pages counted in each process)
    peak_hwm: int  # bytes, the sum of each process's own peak resident set (>= the true peak)
    peak_cgroup: int | None  # bytes, the cgroup's peak (page cache included), when measured in one
    method: str
    started: float = 0.0  # time.time() at the start
    series: list[tuple[float, float]] = field(default_factory=list)  # (time.time(), CPU seconds so far)
    stdout: str = ""
    root_series: list[tuple[float, float]] = field(default_factory=list)  # the same for the command's own process

    def cpu_at(self, when: float) -> float:
        """CPU seconds spent by `when` (the last sample before it)."""
        return max((cpu for t, cpu in self.series if t <= when), default=0.0)

    def root_cpu_at(self, when: float) -> float:
        """CPU seconds of the command's own process (all its threads, not its children) by `when`: what an
        event loop in it may use is one core, whatever the tree has."""
        return max((cpu for t, cpu in self.root_series if t <= when), default=0.0)


def _cgroup_usable() -> bool:
    return (CGROUP / "cpuacct" / "tasks").exists() and (CGROUP / "memory" / "tasks").exists() and os.access(
        CGROUP / "cpuacct", os.W_OK
    )


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _tree(root: int) -> list[int]:
    children = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _kib(text: str, name: str) -> int | None:
    return next((int(line.split()[1]) * 1024 for line in text.splitlines() if line.startswith(name)), None)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 onwards), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def _stat_cpu(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime, every thread


def process_cpu(pid: int) -> float | None:
    """CPU seconds of one process (user + system, every thread, not its children), or None when it is gone."""
    fields = _stat(pid)
    return None if fields is None else _stat_cpu(fields)


def _sample(pid: int) -> tuple[float, int, int, int] | None:
    """(CPU seconds, resident, proportional and peak resident bytes) of one process, or None when it is gone."""
    fields = _stat(pid)
    if fields is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    cpu = _stat_cpu(fields)
    rss = int(fields[21]) * PAGE
    return cpu, rss, _kib(rollup, "Pss:") or rss, _kib(status, "VmHWM:") or rss


class _Poller(threading.Thread):
    """Samples the tree every `interval`: CPU (the cgroup's counter when there is one) and, if asked, memory."""

    def __init__(self, root: int, interval: float, memory: bool, cpu_file: Path | None) -> None:
        super().__init__(daemon=True)
        self.root, self.interval, self.memory, self.cpu_file = root, interval, memory, cpu_file
        self.stop = threading.Event()
        self.cpu: dict[int, float] = {}
        self.hwm: dict[int, int] = {}
        self.peak_rss = self.peak_pss = 0
        self.series: list[tuple[float, float]] = []
        self.root_series: list[tuple[float, float]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)

    def sample(self) -> None:
        now = time.time()
        root = process_cpu(self.root)
        if root is not None:
            self.root_series.append((now, root))
        if self.cpu_file is not None and not self.memory:
            self.series.append((now, int(self.cpu_file.read_text()) / 1e9))
            return
        rss = pss = 0
        for pid in _tree(self.root):
            seen = _sample(pid)
            if seen is None:
                continue
            self.cpu[pid], self.hwm[pid] = seen[0], max(self.hwm.get(pid, 0), seen[3])
            rss, pss = rss + seen[1], pss + seen[2]
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        cpu = int(self.cpu_file.read_text()) / 1e9 if self.cpu_file is not None else sum(self.cpu.values())
        self.series.append((now, cpu))


def measure(
    cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None, interval: float = 0.02, memory: bool = True
) -> Usage:
    """Run `cmd` to completion (it must exit 0) and measure its whole process tree.

    It runs in `cwd`, by default the folder of the cotforge this process imported: `python -m` puts
    the working folder first on the path, and another checkout there would be measured instead.

    `series` holds (time.time(), CPU seconds so far) every `interval`; without `memory` the poller
    reads only the cgroup's CPU counter (where there is one), so it takes next to no CPU itself.
    """
    group = f"cotforge-bench-{uuid.uuid4().hex[:12]}" if _cgroup_usable() else None
    dirs = [CGROUP / kind / group for kind in ("cpuacct", "memory")] if group else []
    for folder in dirs:
        folder.mkdir()

    def enter() -> None:  # runs in the child before it execs: everything it starts stays in the group
        for folder in dirs:
            (folder / "tasks").write_text(str(os.getpid()))

    began, started = time.perf_counter(), time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd or package_root(), preexec_fn=enter if dirs else None,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    poller = _Poller(proc.pid, interval, memory, dirs[0] / "cpuacct.usage" if dirs else None)
    poller.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - began
    poller.stop.set()
    poller.join()
    try:
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{err[-3000:]}")
        hwm = sum(poller.hwm.values())
        if dirs:
            cpu = int((dirs[0] / "cpuacct.usage").read_text()) / 1e9
            peak = int((dirs[1] / "memory.max_usage_in_bytes").read_text())
            method = "cgroup v1"
        else:
            cpu, peak, method = sum(poller.cpu.values()), None, "/proc polling"
        poller.series.append((started + wall, cpu))
        return Usage(cpu, wall, poller.peak_pss, poller.peak_rss, hwm, peak, method, started, poller.series, out,
                     poller.root_series)
    finally:
        for folder in dirs:
            _remove_group(folder)


def _remove_group(folder: Path) -> None:
    for _ in range(100):  # the last processes of the tree may take a moment to leave
        try:
            folder.rmdir()
            return
        except OSError:
            time.sleep(0.05)


def package_root() -> Path:
    """The folder holding the cotforge this process imported (a checkout, or site-packages)."""
    import cotforge

    return Path(cotforge.__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    """This environment, with the cotforge this process imported first on the path of every child."""
    root = str(package_root())
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """median [min-max] of repeated measurements."""
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"
