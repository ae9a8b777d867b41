"""`--shard i/N` and `cotforge merge`: N shard runs merged are the one run; what is not one corpus is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cotforge.cli import app
from cotforge.config import ExecConfig
from cotforge.executors.local import run_bundle, run_pipeline
from cotforge.sim.server import SimConfig, SimProcess
from cotforge.steps.merge import MergeError, merge_runs
from cotforge.steps.read import shard_of
from cotforge.store.run import RunError
from scale_helpers import TERMINAL, corpus, eval_keys, stage_stats, states
from test_pipeline import FAST, pipeline


@pytest.fixture(scope="module")
def demo(demo_factory):
    return demo_factory("mosi", clips=12, corrupt=1, min_seconds=1.0, max_seconds=2.0, seed=7)


@pytest.fixture(scope="module")
def runs(demo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One whole run and its three shards, on a copy of the dataset (a test changes its label file later)."""
    base = tmp_path_factory.mktemp("shards")
    root = base / "data"
    shutil.copytree(demo.root, root)
    made = {"whole": base / "whole", **{f"s{i}": base / f"s{i}" for i in range(3)}}
    with SimProcess(SimConfig(port=0, seed=9, **FAST)) as sim:
        run_pipeline(pipeline(root, made["whole"], sim.url), made["whole"], quiet=True)
        for i in range(3):
            cfg = pipeline(root, made[f"s{i}"], sim.url, exec={"shard": f"{i}/3"})
            run_pipeline(cfg, made[f"s{i}"], quiet=True)
        # a shard run made with another config (the re-asking changed)
        made["other"] = base / "other"
        run_pipeline(pipeline(root, made["other"], sim.url, exec={"shard": "2/3"}, reask={"samples": 1}), made["other"], quiet=True)
    made["root"] = root
    return made


def test_shard_spec_is_checked() -> None:
    assert ExecConfig(shard="1/3").shard_index() == (1, 3) and ExecConfig().shard_index() == (0, 1)
    for bad, why in (("3/3", "0 to N-1"), ("1", "expected i/N"), ("0/0", "at least 1"), ("a/b", "expected i/N")):
        with pytest.raises(ValueError, match=why):
            ExecConfig(shard=bad)


def test_shards_split_the_source_by_key_hash(runs: dict[str, Path]) -> None:
    assert sum(states(runs["whole"]).values()) == 12
    seen: set[str] = set()
    for i in range(3):
        keys = set(_keys(runs[f"s{i}"]))
        assert keys and all(shard_of(k, 3) == i for k in keys)
        assert not keys & seen
        seen |= keys
    assert seen == set(_keys(runs["whole"]))


def _keys(run: Path) -> list[str]:
    from cotforge.store.ledger import Ledger

    with Ledger(run / "ledger.sqlite", read_only=True) as ledger:
        return [k for (k,) in ledger.db.execute("SELECT key FROM clips")]


def test_three_shards_merged_equal_one_run(runs: dict[str, Path], tmp_path: Path) -> None:
    merged = tmp_path / "merged"
    listing = {i: sorted(p.name for p in runs[f"s{i}"].iterdir()) for i in range(3)}
    result = CliRunner().invoke(app, ["merge", *(str(runs[f"s{i}"]) for i in (2, 0, 1)), "--out", str(merged)])
    assert result.exit_code == 0, result.output
    assert {i: sorted(p.name for p in runs[f"s{i}"].iterdir()) for i in range(3)} == listing, "shard folders only read"
    whole = corpus(runs["whole"])
    assert whole and corpus(merged) == whole  # same keys, splits, rationales, scores
    assert eval_keys(merged) == eval_keys(runs["whole"])
    assert states(merged) == states(runs["whole"]) and set(states(merged)) <= set(TERMINAL)
    manifest = json.loads((merged / "manifest.json").read_text())
    reference = json.loads((runs["whole"] / "manifest.json").read_text())
    for field in ("config_hash", "counts", "prompt_versions", "teacher_models"):
        assert manifest[field] == reference[field], field
    assert manifest["shards"]["rows"] == reference["shards"]["rows"]
    assert [m["shard"] for m in manifest["merged_from"]] == ["0/3", "1/3", "2/3"]
    # the merged run paid what the shards paid, which is what the whole run paid
    assert manifest["teacher_stats"]["requests"] == reference["teacher_stats"]["requests"] > 0
    assert stage_stats(merged, "merge")["clips"] == 12
    # an ordinary run folder: export again rewrites nothing, status reads it
    again = CliRunner().invoke(app, ["export", "--run", str(merged)])
    assert again.exit_code == 0 and "unchanged" in again.output, again.output
    assert CliRunner().invoke(app, ["status", "--run", str(merged)]).exit_code == 0
    # and a run on it resumes: nothing left to decode or ask, nothing paid again
    with SimProcess(SimConfig(port=0, seed=9, **FAST)) as sim:
        again = run_pipeline(pipeline(runs["root"], merged, sim.url), merged, quiet=True)
    assert again.bundle["bundled"] == 0 and again.synth["requests"] == 0 and corpus(merged) == whole


def test_merging_other_configs_or_incomplete_sets_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    shards = [runs[f"s{i}"] for i in range(3)]
    with pytest.raises(MergeError, match="another config.*reask"):
        merge_runs([shards[0], shards[1], runs["other"]], tmp_path / "a")
    with pytest.raises(MergeError, match="shard 2/3 missing"):
        merge_runs(shards[:2], tmp_path / "b")
    with pytest.raises(MergeError, match="not a shard"):
        merge_runs([runs["whole"], *shards], tmp_path / "c")
    with pytest.raises(MergeError, match="both hold shard 1/3"):
        merge_runs([*shards, runs["s1"]], tmp_path / "d")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "x").write_text("")
    with pytest.raises(MergeError, match="not empty"):
        merge_runs(shards, tmp_path / "e")
    assert not any((tmp_path / name).exists() for name in "abcd")
    cli = CliRunner().invoke(app, ["merge", str(shards[0]), str(runs["other"]), "--out", str(tmp_path / "f")])
    assert cli.exit_code == 2 and "another config" in cli.output


def test_the_union_must_cover_the_source(runs: dict[str, Path], tmp_path: Path) -> None:
    label = runs["root"] / "label.csv"
    original = label.read_text(encoding="utf-8")
    lines = original.splitlines()
    header, first = lines[0].split(","), lines[1].split(",")
    first[header.index("clip_id")] = "999"  # a new row with an existing clip's media: nobody read it
    try:
        label.write_text(original.rstrip("\n") + "\n" + ",".join(first) + "\n", encoding="utf-8")
        with pytest.raises(MergeError, match="1 clips of the source are in none of the runs"):
            merge_runs([runs[f"s{i}"] for i in range(3)], tmp_path / "a")
        assert not (tmp_path / "a").exists()
        merge_runs([runs[f"s{i}"] for i in range(3)], tmp_path / "b", check_source=False)
        assert corpus(tmp_path / "b") == corpus(runs["whole"])
    finally:
        label.write_text(original, encoding="utf-8")


def test_a_folder_holds_one_shard(runs: dict[str, Path], tmp_path: Path) -> None:
    """Shards and whole runs never mix in one folder, whichever command comes second."""
    data = runs["root"]
    base = pipeline(data, tmp_path / "x", "http://127.0.0.1:9/v1", exec={"shard": "0/3"})
    with pytest.raises(RunError, match="holds a whole run"):
        run_bundle(base.bundle_config(), runs["whole"], quiet=True)
    with pytest.raises(RunError, match="holds shard 0/3, not 1/3"):
        run_bundle(base.model_copy(update={"exec": ExecConfig(shard="1/3", bundle_part_rows=4)}), runs["s0"], quiet=True)
    with pytest.raises(RunError, match="give --shard 0/3"):
        run_bundle(base.model_copy(update={"exec": ExecConfig(bundle_part_rows=4)}), runs["s0"], quiet=True)
    # the same shard again resumes: nothing left to do
    assert run_bundle(base, runs["s0"], quiet=True)["bundled"] == 0


def test_the_command_line_takes_shard_and_executor(runs: dict[str, Path], tmp_path: Path) -> None:
    data, run = runs["root"], tmp_path / "run"
    bad = CliRunner().invoke(app, ["bundle", "--root", str(data), "--run", str(run), "--shard", "3/3"])
    assert bad.exit_code == 2 and "i counts from 0" in bad.output
    bad = CliRunner().invoke(app, ["bundle", "--root", str(data), "--run", str(run), "--executor", "spark"])
    assert bad.exit_code == 2 and "exec.executor" in bad.output
    done = CliRunner().invoke(app, ["bundle", "--root", str(data), "--run", str(run), "--shard", "1/3", "--quiet",
                                    "--max-frames", "2", "--size", "64"])
    assert done.exit_code == 0, done.output
    keys = _keys(run)
    assert keys and all(shard_of(k, 3) == 1 for k in keys) and sorted(keys) == sorted(_keys(runs["s1"]))
