"""`--executor ray` on a two-node Ray cluster on 127.0.0.1: the same corpus as the local executor, a lost node
changes nothing, and the teacher's endpoints are spread over and survive losing one.

The cluster is what a user starts: `ray start --head` and a second `ray start --address` with 1 CPU and a
resource of its own, each a process group of this module's, stopped by its pid (never `ray stop`, which
would stop every Ray process on the machine). Every Ray process has RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which
keeps it on 127.0.0.1 (without it Ray registers every node under the machine's outward address); the second
node goes through tests/ray_node.py, because `ray start --address` refuses to add a node under that variable.
A test checks that no node registers, and no socket of theirs uses, any other address than loopback. The
cluster has a token of its own (RAY_AUTH_MODE=token), so no other Ray on the machine can join it.
"""

from __future__ import annotations

import os
import secrets

# read when Ray is imported, here and by every process it starts: loopback only, and the token of this
# module's cluster (this process and the `cotforge run` processes it starts are its drivers)
os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                   "RAY_USAGE_STATS_ENABLED": "0"})

import ipaddress  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

ray = pytest.importorskip("ray")

from cotforge.config import PipelineConfig  # noqa: E402
from cotforge.executors.local import run_pipeline  # noqa: E402
from cotforge.sim.server import SimConfig, SimProcess  # noqa: E402
from cotforge.store.ledger import Ledger  # noqa: E402
from scale_helpers import TERMINAL, corpus, sim_requests, stage_stats, states, teacher_failures  # noqa: E402
from test_pipeline import pipeline  # noqa: E402

pytestmark = pytest.mark.slow

CLIPS = 20
SIM = {"seed": 11, "latency_ms": 150, "capacity": 2}
NODE = ["--num-cpus", "1", "--object-store-memory", str(100 * 2**20), "--disable-usage-stats"]
# a killed node is declared dead in ~2 s, not ~15 s
HEALTH = json.dumps({"health_check_period_ms": 500, "health_check_failure_threshold": 4})
RAY = str(Path(sys.executable).with_name("ray"))


class TwoNodes:
    """`ray start --head` and a second `ray start --address` on 127.0.0.1, each a process group of this
    module's (`--block` keeps `ray start` in the foreground as the group's leader); the second can be
    killed and replaced."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = dict(os.environ)
        self.address = f"127.0.0.1:{_free_port()}"
        self.head = self._start("head", [RAY, "start", "--head", "--block", "--port", self.address.split(":")[1],
                                         "--node-ip-address", "127.0.0.1", "--include-dashboard", "false",
                                         "--temp-dir", str(tmp / "ray"), f"--system-config={HEALTH}", *NODE])
        self.second = self._start_second()

    def _start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - the child holds it
        return subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _start_second(self) -> subprocess.Popen:
        return self._start("second", [sys.executable, str(Path(__file__).with_name("ray_node.py")), "start", "--block",
                                      "--address", self.address, "--resources", json.dumps({"second": 1}), *NODE])

    def wait(self, alive: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while len([n for n in ray.nodes() if n["Alive"]]) != alive:
            for process in (self.head, self.second):
                assert process.poll() is None or process is self.second, (self.tmp / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"the cluster never had {alive} nodes alive"
            time.sleep(0.2)

    def kill_second(self) -> None:
        _kill_group(self.second)

    def replace_second(self) -> None:
        _kill_group(self.second)  # a test that failed before its kill leaves it running
        self.second = self._start_second()
        self.wait(2)

    def second_busy(self) -> list[str]:
        """Tasks the second node's workers are running now (a Ray worker's title is ray::<task>, ray::IDLE between tasks)."""
        titles = []
        for pid in _tree(self.second.pid):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            except OSError:
                continue
            if title.startswith("ray::") and title != "ray::IDLE" and not title.endswith("Agent"):
                titles.append(title)
        return titles

    def pids(self) -> set[int]:
        return _tree(self.head.pid) | _tree(self.second.pid)

    def stop(self) -> None:
        for process in (self.second, self.head):
            _kill_group(process)


def _kill_group(process: subprocess.Popen) -> None:
    """Every process of the node at once (raylet, workers, agents): a node lost, not a node leaving."""
    for pid in _tree(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(30)


def _tree(pid: int) -> set[int]:
    """A node's processes: its `ray start`'s process group and every descendant (Ray gives each worker a
    process group of its own)."""
    group = _group(pid)
    return {pid} | group | _descendants({pid} | group)


def _group(pgid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _descendants(roots: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _socket_addresses(pids: set[int]) -> set[tuple[str, str]]:
    """(local, remote) IP addresses of every TCP socket the processes hold."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                found.add((_ip(fields[1].split(":")[0], width), _ip(fields[2].split(":")[0], width)))
    return found


def _ip(hex_addr: str, width: int) -> str:
    raw = bytes.fromhex(hex_addr)
    # /proc/net/tcp* store each 32-bit word in host (little-endian) order
    addr = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))[:width])
    return str(addr.ipv4_mapped if addr.version == 6 and addr.ipv4_mapped else addr)  # gRPC's dual-stack sockets


def _loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_loopback


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    nodes = TwoNodes(tmp_path_factory.mktemp("cluster"))
    pids: set[int] = set()
    try:
        ray.init(address=nodes.address, logging_level="WARNING", log_to_driver=False)
        nodes.wait(2)
        yield nodes
    finally:
        ray.shutdown()
        pids = nodes.pids()
        nodes.stop()
    time.sleep(0.5)
    left = [pid for pid in pids if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)]
    assert not left, f"Ray processes left running: {left}"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@pytest.fixture(scope="module")
def demo(demo_factory):
    return demo_factory("mosi", clips=CLIPS, corrupt=1, min_seconds=1.0, max_seconds=2.5, seed=13)


@pytest.fixture(scope="module")
def sims():
    with SimProcess(SimConfig(port=0, **SIM)) as a, SimProcess(SimConfig(port=0, **SIM)) as b:
        yield a, b


@pytest.fixture(scope="module")
def reference(demo, sims, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local executor's run of the same input against the same (deterministic) simulator."""
    run = tmp_path_factory.mktemp("local") / "run"
    run_pipeline(config(demo.root, run, [sims[0].url]), run, quiet=True)
    assert corpus(run)
    return run


def config(root: Path, run: Path, urls: list[str], **sections) -> PipelineConfig:
    teacher = {"concurrency": 2, "media_workers": 1, "timeout_s": 20, "endpoints": urls, **sections.pop("teacher", {})}
    exec_ = {"workers": 1, "bundle_part_rows": 2, **sections.pop("exec", {})}
    return pipeline(root, run, urls[0], exec=exec_, teacher=teacher, **sections)


def cli_run(cfg: PipelineConfig, run: Path, address: str, tmp_path: Path, wait: bool = True):
    path = tmp_path / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(cfg.public_dump(), allow_unicode=True), encoding="utf-8")
    command = [sys.executable, "-m", "cotforge.cli", "run", str(path), "--run", str(run), "--executor", "ray",
               "--ray-address", address, "--quiet"]
    if wait:
        return subprocess.run(command, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def nodes_that(run: Path, prefix: str) -> set[str]:
    return {name.split("/", 1)[1] for name, n in stage_stats(run, "cluster").items() if name.startswith(prefix + "/") and n}


def test_two_node_run_equals_the_local_one(cluster: TwoNodes, demo, sims, reference: Path, tmp_path: Path) -> None:
    nodes = ray.nodes()
    assert len([n for n in nodes if n["Alive"]]) == 2
    assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}, "a Ray node registered a non-loopback address"
    before = [sim_requests(sim.root) for sim in sims]
    run = tmp_path / "run"
    began = time.monotonic()
    done = cli_run(config(demo.root, run, [sim.url for sim in sims]), run, cluster.address, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    wall = time.monotonic() - began

    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert nodes_that(run, "decode_nodes") == alive, "decode tasks ran on both nodes"
    assert nodes_that(run, "mux_nodes") == alive, "request media was muxed on both nodes"
    sockets = _socket_addresses(cluster.pids())
    assert ("127.0.0.1", "127.0.0.1") in sockets, "the check sees the cluster's connections"
    bad = {(here, there) for here, there in sockets if not (_loopback(here) and (_loopback(there) or there in ("0.0.0.0", "::")))}
    assert not bad, f"Ray sockets bound to or talking to a non-loopback address: {bad}"

    assert corpus(run) == corpus(reference), "same keys, splits and rationales as the local executor"
    counts = states(run)
    assert counts == states(reference) and set(counts) <= set(TERMINAL) and sum(counts.values()) == CLIPS
    with Ledger(run / "ledger.sqlite", read_only=True) as ledger:
        requests = ledger.db.execute("SELECT SUM(requests) FROM clips").fetchone()[0]
    sent = [sim_requests(sim.root) - b for sim, b in zip(sims, before, strict=True)]
    assert sum(sent) == requests == stage_stats(run, "teacher")["requests"] > 0, "ledger, stats and servers agree"

    # resumed on the cluster (this process is a driver too): nothing is paid twice, nothing rewritten
    from cotforge.executors.ray import RayExecutor

    again = RayExecutor(config(demo.root, run, [sim.url for sim in sims], exec={"executor": "ray"}).model_copy(update={"run": run}),
                        "run", quiet=True).pipeline()
    assert [sim_requests(sim.root) - b for sim, b in zip(sims, before, strict=True)] == sent
    assert again.synth["requests"] == 0 and again.bundle["bundled"] == 0 and not again.export["rewritten"]
    assert all(n > 0 for n in sent), f"both endpoints got requests: {sent}"
    print(f"two-node run: {wall:.1f} s for {CLIPS} clips; requests per endpoint {sent}")


def test_losing_a_node_mid_run_changes_nothing(cluster: TwoNodes, demo, sims, reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    process = cli_run(config(demo.root, run, [sim.url for sim in sims]), run, cluster.address, tmp_path, wait=False)
    try:
        deadline = time.monotonic() + 120
        # kill the second node while it decodes, or while it muxes once the teacher is going (not a warm-up task)
        while not ((busy := cluster.second_busy()) and (any("MapBatches" in t for t in busy) or _judged(run) > 0)):
            assert process.poll() is None, process.stdout.read()[-4000:]
            assert time.monotonic() < deadline, "the second node never got a task"
            time.sleep(0.02)
        cluster.kill_second()
        killed_at = _judged(run)
        output, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
        cluster.replace_second()
    assert process.returncode == 0, output[-4000:]
    assert killed_at < CLIPS, "the node was killed mid-run"
    counts = states(run)
    assert set(counts) <= set(TERMINAL) and sum(counts.values()) == CLIPS, counts
    assert counts == states(reference) and not teacher_failures(run)
    assert corpus(run) == corpus(reference), "nothing lost or duplicated"
    print(f"second node killed running {busy} with {killed_at} of {CLIPS} clips judged; cluster stats {stage_stats(run, 'cluster')}")


def _judged(run: Path) -> int:
    if not (run / "ledger.sqlite").exists():
        return 0
    try:
        with Ledger(run / "ledger.sqlite", read_only=True) as ledger:
            return ledger.db.execute("SELECT COUNT(*) FROM clips WHERE judged_at IS NOT NULL").fetchone()[0]
    except Exception:  # noqa: BLE001 - the run is creating it
        return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_endpoint_down_at_start_and_one_killed_mid_run(cluster: TwoNodes, demo, reference: Path, tmp_path: Path) -> None:
    """Three endpoints; one never answers, one goes down for good at its 4th request: the third finishes."""
    down = f"http://127.0.0.1:{_free_port()}/v1"
    log = tmp_path / "killed.jsonl"  # a server that refuses connections answers no /sim/stats: its log counts
    killed_cfg = SimConfig(port=0, **SIM, outage_at=4, outage_mode="refuse", log_path=log)
    with SimProcess(killed_cfg) as killed, SimProcess(SimConfig(port=0, **SIM)) as live:
        run = tmp_path / "run"
        cfg = config(demo.root, run, [down, killed.url, live.url],
                     teacher={"outage_grace_s": 2.0, "breaker_failures": 2, "backoff_s": 0.05})
        done = cli_run(cfg, run, cluster.address, tmp_path)
        served = [sum(json.loads(line)["status"] == 200 for line in log.read_text().splitlines()), sim_requests(live.root)]
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert 1 <= served[0] <= 3 and served[1] > 0, served  # the killed one answered until it went down
    counts = states(run)
    assert set(counts) <= set(TERMINAL) and sum(counts.values()) == CLIPS and not teacher_failures(run)
    assert corpus(run) == corpus(reference)
    # the run says so, on the terminal and in stats.json: taken out at preflight, and down mid-run
    assert f"endpoint {down} taken out at preflight" in output, output[-4000:]
    assert f"endpoint {killed.url}" in output, output[-4000:]
    assert stage_stats(run, "client").get("events", 0) >= 2, stage_stats(run, "client")

