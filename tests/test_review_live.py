"""The whole review round against a real Label Studio started by `cotforge review serve`.

One server for the module (a first start migrates an empty database, ~30 s on 2 cores). Its
virtualenv comes from $COTFORGE_LABEL_STUDIO_VENV (CI builds it once with `review serve
--install-only`), else it is built on first use (1-2 min). Reviewers are played through the API with
the result lists the editor submits; the page itself is checked in headless Chromium.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from review_helpers import copy_run, demo_run, ui_result
from typer.testing import CliRunner

from cotforge.cli import app
from cotforge.dc import parse_student
from cotforge.review.client import Target, connect, find_project
from cotforge.review.labeling import rationale_texts

pytestmark = pytest.mark.slow
pytest.importorskip("label_studio_sdk", reason="the review tests need the [review] extra: pip install -e '.[review]'")

START_TIMEOUT_S = 420  # a venv build (when CI did not make one) plus a first start


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass
class Live:
    url: str
    token: str
    data: Path
    serve_log: Path
    outputs: list[str] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        return {"LABEL_STUDIO_URL": self.url, "LABEL_STUDIO_API_KEY": self.token, **extra}

    def cli(self, *args: str, code: int = 0, env: dict[str, str] | None = None) -> str:
        result = CliRunner().invoke(app, ["review", *args], env=self.env() if env is None else env)
        self.outputs.append(result.output)
        assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.output}\n{result.exception!r}"
        return result.output

    def client(self):
        return connect(Target(self.url, self.token))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("label-studio")
    data, port = root / "ls", _free_port()
    serve_log = root / "serve.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
    with serve_log.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cotforge.cli", "review", "serve", "--port", str(port), "--data", str(data)],
                                stdout=log, stderr=subprocess.STDOUT, env=env,
                                # Ctrl-C must reach it even under a background job, which inherits SIGINT ignored
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (data / "server.json").is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"`cotforge review serve` did not come up:\n{serve_log.read_text()[-3000:]}")
        time.sleep(0.5)
    assert httpx.get(f"{url}/health").status_code == 200
    state = json.loads((data / "server.json").read_text())
    yield Live(url, (data / ".token").read_text().strip(), data, serve_log)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C does
    assert proc.wait(60) == 0, serve_log.read_text()[-2000:]
    assert "Label Studio stopped." in serve_log.read_text()
    with pytest.raises(ProcessLookupError):
        os.kill(state["pid"], 0)
    assert not (data / "server.json").exists()


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of a demo run's shards in which one row's source clip is gone."""
    shards = copy_run(demo_run(tmp_path_factory), tmp_path_factory.mktemp("review-live-run"))
    part = next((shards / "valid").glob("part-*.parquet"))
    table = pq.read_table(part)
    table = table.set_column(table.schema.get_field_index("source_path"), "source_path", pa.array(["/nowhere/gone.mp4"] * table.num_rows))
    pq.write_table(table, part, compression="zstd")
    return shards


@pytest.fixture(scope="module")
def originals(shards: Path) -> dict[str, str]:
    return _digests(shards.parent)


@dataclass
class Pushed:
    shards: Path
    output: str
    project_id: int
    tasks: dict[str, int]  # row id -> task id
    rows: dict[str, dict]


@pytest.fixture(scope="module")
def pushed(live: Live, shards: Path, originals: dict[str, str]) -> Pushed:
    output = live.cli("push", "--shards", str(shards), "--project", "round 1", "--include-rejected", "--data", str(live.data), "-q")
    client = live.client()
    project = find_project(client, "round 1", Target(live.url, live.token))
    tasks = {t.data["row_id"]: t.id for t in client.tasks.list(project=project.id, fields="task_only", include="id,data")}
    rows = {row["id"]: row for row in pq.read_table(shards).to_pylist() + pq.read_table(shards.parent / "shards-rejected").to_pylist()}
    return Pushed(shards, output, project.id, tasks, rows)


def test_wrong_token_and_missing_project_are_clear_errors(live: Live, shards: Path, tmp_path: Path) -> None:
    bad = "0123456789abcdef0123456789abcdef01234567"
    output = live.cli("push", "--shards", str(shards), "--project", "x", "--data", str(live.data), code=2,
                      env=live.env(LABEL_STUDIO_API_KEY=bad))
    assert "refused the API token (401; token from LABEL_STUDIO_API_KEY)" in output and bad not in output
    output = live.cli("pull", "--project", "no such project", "--out", str(tmp_path / "p"), code=2)
    assert "no project titled 'no such project'" in output and not (tmp_path / "p").exists()


def test_push_makes_one_task_per_row_with_playable_media_and_repush_adds_none(live: Live, pushed: Pushed) -> None:
    gone = {r["id"] for r in pushed.rows.values() if r["source_path"] == "/nowhere/gone.mp4"}
    assert len(gone) == 1 and len(pushed.tasks) == len(pushed.rows) - 1 and not gone & set(pushed.tasks)
    assert "left out    1: media file missing" in pushed.output and "/nowhere/gone.mp4" in pushed.output
    output = live.cli("push", "--shards", str(pushed.shards), "--project", "round 1", "--include-rejected",
                      "--data", str(live.data), "-q")
    assert _row(output, "already in the project") == str(len(pushed.tasks)) and _row(output, "tasks imported") == "0"
    client = live.client()
    assert client.projects.get(id=pushed.project_id).task_number == len(pushed.tasks)
    clip = next(iter(client.tasks.list(project=pushed.project_id, fields="task_only", include="id,data"))).data["video"]
    reply = httpx.get(f"{live.url}{clip}", headers={"Authorization": f"Token {live.token}", "Range": "bytes=0-99"})
    assert reply.status_code == 206 and reply.headers["content-type"] == "video/mp4"


def test_risk_sample_stores_why_each_row_was_picked(live: Live, pushed: Pushed) -> None:
    output = live.cli("push", "--shards", str(pushed.shards), "--project", "risk", "--sample", "3", "--strategy", "risk",
                      "--show-gold", "--data", str(live.data), "-q")
    assert _row(output, "picked (risk)") == "3" and _row(output, "tasks imported") == "2"  # stratified over train and valid; valid's clip is gone
    client = live.client()
    project = find_project(client, "risk", Target(live.url, live.token))
    data = [t.data for t in client.tasks.list(project=project.id, fields="task_only", include="id,data")]
    assert {d["split"] for d in data} == {"train"}  # the test split is held out of the shards (RUN/eval)
    assert all(d["pick_reason"] and "gold_score" in d for d in data)
    output = live.cli("push", "--shards", str(pushed.shards), "--project", "risk", "--hide-gold", "--data", str(live.data), code=2)
    assert "shows the gold score" in output


def _row(table: str, label: str) -> str:
    """A value from a rich two-column summary table."""
    line = next(line for line in table.splitlines() if label in line)
    return line.replace("┃", "│").split("│")[-2].strip()


def test_task_page_plays_the_clip_with_sound_and_shows_the_rationale(live: Live, pushed: Pushed, tmp_path: Path) -> None:
    from review_browser import CHROMIUM, Chromium

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium")
    row_id = sorted(pushed.tasks)[0]
    disc, cal = rationale_texts(pushed.rows[row_id]["target"])
    password = (live.data / ".password").read_text().strip()
    shot = Path(os.environ.get("COTFORGE_REVIEW_SCREENSHOT") or tmp_path / "review-task.png")
    with Chromium() as browser:
        page = browser.page()
        page.goto(f"{live.url}/user/login/")
        page.wait_for("document.readyState === 'complete' && !!document.querySelector('input[name=email]')", what="the login form")
        page.evaluate(f"""(() => {{
            document.querySelector('input[name=email]').value = 'reviewer@cotforge.local';
            document.querySelector('input[name=password]').value = {json.dumps(password)};
            document.querySelector('form').submit(); }})()""")
        page.wait_for("location.pathname !== '/user/login/' && document.readyState === 'complete'", what="the login")
        page.goto(f"{live.url}/projects/{pushed.project_id}/data?task={pushed.tasks[row_id]}")
        page.wait_for("(() => { const v = document.querySelector('video'); return v && v.readyState >= 1 && v.duration > 0; })()",
                      timeout=90, what="the video's metadata")
        media = page.evaluate("""(async () => {
            const v = document.querySelector('video');
            v.muted = false;
            await v.play();
            await new Promise(r => setTimeout(r, 1500));
            v.pause();
            return {src: v.currentSrc, readyState: v.readyState, duration: v.duration, error: v.error && v.error.code,
                    width: v.videoWidth, audioTracks: v.captureStream().getAudioTracks().length,
                    audioBytes: v.webkitAudioDecodedByteCount, played: v.currentTime};
        })()""", await_promise=True)
        page.wait_for(f"document.body.innerText.includes({json.dumps(disc.splitlines()[1][:60])})", what="the rationale text")
        text = page.evaluate("document.body.innerText")
        page.screenshot(shot)
    print(f"\nreview page screenshot: {shot}\nvideo: {media}")
    assert "/data/local-files/?d=clips/" in media["src"] and media["error"] is None
    assert media["readyState"] >= 1 and media["duration"] > 0 and media["width"] > 0 and media["played"] > 0
    assert media["audioTracks"] >= 1 and media["audioBytes"] > 0
    assert disc.splitlines()[0][:60] in text and cal[:60] in text
    assert shot.stat().st_size > 20_000


@dataclass
class Reviewed:
    names: dict[str, str]
    apply_output: str
    pulled: Path
    out: Path
    report: Path


@pytest.fixture(scope="module")
def reviewed(live: Live, pushed: Pushed, tmp_path_factory: pytest.TempPathFactory) -> Reviewed:
    """Reviewers at work (through the API, with what the editor submits), then pull, apply, report."""
    client = live.client()
    second = client.users.create(username="second", email="second@cotforge.local", password="second-pass-1")
    ids = sorted(i for i in pushed.tasks if not i.endswith("#r"))
    accept, edit, reject, skip, twice, out_of_range, empty = ids[:7]
    rows, task = pushed.rows, pushed.tasks
    disc, cal = rationale_texts(rows[edit]["target"])

    def annotate(row_id: str, result: list, **kw) -> None:
        client.annotations.create(id=task[row_id], result=result, lead_time=9.5, **kw)

    annotate(accept, ui_result(rows[accept], "accept", rating=5))
    weaker = {"positive": 0.7, "negative": -0.7, "neutral": 0.0}[rows[edit]["teacher_polarity"]]
    annotate(edit, ui_result(rows[edit], "edit", rating=3, disc=disc.replace("Visual: ", "Visual: (muted face) "),
                             cal="Reviewer: weaker than the teacher said.", score=weaker))
    annotate(reject, ui_result(rows[reject], "reject", rating=1, comment="transcript does not match the audio"))
    annotate(skip, [], was_cancelled=True)
    annotate(twice, ui_result(rows[twice], "accept", rating=4))
    time.sleep(1.1)  # a later update time for the second reviewer
    annotate(twice, ui_result(rows[twice], "reject", rating=2), completed_by=second.id)
    annotate(out_of_range, ui_result(rows[out_of_range], "accept", score=7.5))
    annotate(empty, ui_result(rows[empty], "edit", disc="", cal=""))
    stray = {**rows[accept], "id": "mosi/not-in-these-shards/0#0"}
    from cotforge.review.labeling import task as make_task

    made = client.projects.import_tasks(id=pushed.project_id, request=[make_task(stray, "/x.mp4", "by hand", False)], return_task_ids=True)
    client.annotations.create(id=made.task_ids[0], result=ui_result(stray, "accept"))

    root = tmp_path_factory.mktemp("review-round")
    live.cli("pull", "--project", "round 1", "--out", str(root / "pulled"))
    applied = live.cli("apply", "--shards", str(pushed.shards), "--reviews", str(root / "pulled"), "--out", str(root / "reviewed"), "-q")
    live.cli("report", "--reviews", str(root / "pulled"), "--shards", str(pushed.shards), "--out", str(root / "report"))
    names = {"accept": accept, "edit": edit, "reject": reject, "skip": skip, "twice": twice, "range": out_of_range, "empty": empty}
    return Reviewed(names, applied, root / "pulled", root / "reviewed", root / "report")


def test_round_trip_into_a_reviewed_copy_row_by_row(live: Live, pushed: Pushed, reviewed: Reviewed, originals: dict[str, str]) -> None:
    n = reviewed.names
    out = {row["id"]: row for row in pq.read_table(reviewed.out / "shards").to_pylist()}
    accepted = {i: r for i, r in pushed.rows.items() if not i.endswith("#r")}
    assert set(out) == set(accepted)
    for row_id, row in out.items():
        review = row["review"]
        if row_id == n["accept"]:
            assert (review["verdict"], review["rating"], review["edited"]) == ("accept", 5, False)
            assert review["reviewer"] == "reviewer@cotforge.local" and review["reviewed_at"] and review["task_id"] == pushed.tasks[row_id]
        elif row_id == n["edit"]:
            assert review["verdict"] == "edit" and review["edited"] and review["teacher_target"] == accepted[row_id]["target"]
            parsed = parse_student(row["target"])
            assert parsed.format_ok and parsed.cues.visual.startswith("(muted face) ")
            assert parsed.calibration == "Reviewer: weaker than the teacher said." and parsed.score == review["score"]
        elif row_id == n["reject"]:
            assert review["verdict"] == "reject" and review["comment"] == "transcript does not match the audio"
            assert row["target"] == accepted[row_id]["target"]
        elif row_id == n["twice"]:
            assert review["verdict"] == "reject" and review["reviewer"] == "second@cotforge.local"
            assert [a["verdict"] for a in review["annotations"]] == ["accept", "reject"]
        else:  # skipped, invalid (score out of range, empty edit), unpushed (media gone) or not annotated
            assert review is None, row_id
        if row_id != n["edit"]:
            assert row["target"] == accepted[row_id]["target"]
    assert _digests(pushed.shards.parent) == originals  # the originals are byte-identical
    counts = json.loads((reviewed.out / "manifest.json").read_text())["review"]["counts"]
    assert counts["problems"] == {"score out of range": 1, "edit with empty text": 1, "row id not in the shards": 1}
    assert counts["cancelled"] == 1 and counts["rows_with_several_annotations"] == 1 and counts["edited"] == 1
    assert "not applied: 3" in reviewed.apply_output and "score 7.5 is outside [-3, 3]" in reviewed.apply_output
    assert "mosi/not-in-these-shards/0#0" in reviewed.apply_output


def test_report_has_verdicts_agreement_and_a_plot(reviewed: Reviewed) -> None:
    text = (reviewed.report / "review_report.md").read_text()
    assert "Tasks annotated by two or more reviewers: 1 (1 pairs)" in text
    assert "verdict agreement: 0%" in text and "| all |" in text
    assert (reviewed.report / "review.png").read_bytes()[:4] == b"\x89PNG"


def test_the_token_never_appears_in_outputs_files_or_task_data(live: Live, pushed: Pushed, reviewed: Reviewed) -> None:
    token = live.token.encode()
    assert live.outputs and not any(live.token in text for text in live.outputs)
    assert token not in live.serve_log.read_bytes() and token not in (live.data / "server.log").read_bytes()
    for folder in (reviewed.pulled, reviewed.out, reviewed.report, live.data / "media"):
        for path in folder.rglob("*"):
            assert not path.is_file() or token not in path.read_bytes(), path
    assert b'"row_id"' in (reviewed.pulled / "export.json").read_bytes()  # the task data was looked at, above


def test_benchmark_runs_against_the_same_server(live: Live, tmp_path: Path) -> None:
    """bench/review.py still runs (few rows; its numbers are not checked here, never timed in tests)."""
    bench = Path(__file__).resolve().parent.parent / "bench" / "review.py"
    done = subprocess.run([sys.executable, str(bench), "--rows", "120", "--repeat", "1", "--workdir", str(tmp_path),
                           "--url", live.url, "--media-root", str(live.data / "media")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "LABEL_STUDIO_API_KEY": live.token})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "push + pull / raw import + export" in done.stdout and live.token not in done.stdout + done.stderr
