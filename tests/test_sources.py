"""Readers on hand-written label files that carry what real MMSA files contain."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cotforge.config import SourceConfig
from cotforge.sources import SourceError
from cotforge.steps.read import ReadStep

HEADER = "video_id,clip_id,text,label,label_T,label_A,label_V,annotation,mode\n"


def touch(root: Path, rel: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0")


def read(root: Path, dataset: str = "mosi", **kw) -> list:
    step = ReadStep(SourceConfig(dataset=dataset, root=root, **kw))
    step.check()
    return list(step.run())


def test_mosi_quoting_newlines_bom_and_ids(tmp_path: Path) -> None:
    body = (
        '03bSnISJMiM,1,"A LOT OF SAD PARTS",-1.2,,,,Negative,train\n'
        '03bSnISJMiM,11,"WELL, HE SAID ""WOW""",2.4,,,,Positive,valid\n'
        '-3g5yACwYnA,2,"TWO\nLINES",0,,,,Neutral,test\n'
        "81406,3.0,NUMERIC VIDEO ID,0.6667,,,,Positive,train\n"
    )
    (tmp_path / "label.csv").write_text("\ufeff" + HEADER + body, encoding="utf-8")
    for rel in ["Raw/03bSnISJMiM/1.mp4", "Raw/03bSnISJMiM/11.mp4", "Raw/-3g5yACwYnA/2.mp4", "Raw/81406/3.mp4"]:
        touch(tmp_path, rel)
    refs = read(tmp_path)
    assert [r.error for r in refs] == [None] * 4
    assert [r.key for r in refs] == ["mosi/03bSnISJMiM/1", "mosi/03bSnISJMiM/11", "mosi/-3g5yACwYnA/2", "mosi/81406/3"]
    assert refs[1].text == 'WELL, HE SAID "WOW"'
    assert refs[2].text == "TWO\nLINES"
    assert [r.line for r in refs] == [2, 3, 4, 6]
    assert [r.split for r in refs] == ["train", "valid", "test", "train"]
    assert refs[0].label == -1.2 and refs[0].label_T is None and refs[0].language == "en"


def test_sims_zero_padded_ids_chinese_and_unimodal_labels(tmp_path: Path) -> None:
    (tmp_path / "label.csv").write_text(
        HEADER + "video_0001,0001,你这是嫁入豪门啊！,0.8,1.0,0.6,0.8,Positive,train\n", encoding="utf-8"
    )
    touch(tmp_path, "Raw/video_0001/0001.mp4")
    (ref,) = read(tmp_path, "sims")
    assert ref.key == "sims/video_0001/0001" and ref.text == "你这是嫁入豪门啊！" and ref.language == "zh"
    assert (ref.label_T, ref.label_A, ref.label_V) == (1.0, 0.6, 0.8)


def test_clip_id_that_lost_its_zero_padding_still_finds_the_file(tmp_path: Path) -> None:
    (tmp_path / "label.csv").write_text(HEADER + "video_0002,2,好,0.2,,,,Positive,train\n", encoding="utf-8")
    touch(tmp_path, "Raw/video_0002/0002.mp4")
    (ref,) = read(tmp_path, "sims")
    assert ref.error is None and ref.clip_id == "0002" and ref.media_path.endswith("0002.mp4")


def test_simsv2_reads_meta_csv(tmp_path: Path) -> None:
    (tmp_path / "meta.csv").write_text(HEADER + "aqgy3_0001,00000,不错,0.4,,,,Positive,test\n", encoding="utf-8")
    touch(tmp_path, "Raw/aqgy3_0001/00000.mp4")
    (ref,) = read(tmp_path, "simsv2")
    assert ref.key == "simsv2/aqgy3_0001/00000"


def test_bad_rows_become_failed_records_not_drops(tmp_path: Path) -> None:
    body = (
        "v1,1,ok,1.0,,,,Positive,train\n"
        "v1,2,bad label,abc,,,,Positive,train\n"
        "v1,3,out of range,3.5,,,,Positive,train\n"
        "v1,4,no media,1.0,,,,Positive,train\n"
        "v1,1,duplicate,1.0,,,,Positive,train\n"
        "v1,5,bad split,1.0,,,,Positive,validation\n"
        "v1,6,empty label,,,,,Positive,train\n"
    )
    (tmp_path / "label.csv").write_text(HEADER + body, encoding="utf-8")
    for i in (1, 2, 3, 5, 6):
        touch(tmp_path, f"Raw/v1/{i}.mp4")
    refs = read(tmp_path)
    assert len(refs) == 7
    errors = [r.error for r in refs]
    assert errors[0] is None
    assert errors[1] == "label is not a number: 'abc'"
    assert errors[2] == "label out of range [-3, 3] for mosi: 3.5"
    assert errors[3].startswith("media file missing: ") and errors[3].endswith("Raw/v1/4.mp4")
    assert errors[4] == "duplicate key: mosi/v1/1 (first seen at line 2)"
    assert refs[4].key == "mosi/v1/1#dup2"
    assert errors[5] == "split (mode) is not train/valid/test: 'validation'"
    assert errors[6] == "label is empty"
    assert len({r.key for r in refs}) == 7


def test_sims_range_is_minus_one_to_one(tmp_path: Path) -> None:
    (tmp_path / "label.csv").write_text(HEADER + "video_0001,0001,好,1.2,,,,Positive,train\n", encoding="utf-8")
    touch(tmp_path, "Raw/video_0001/0001.mp4")
    (ref,) = read(tmp_path, "sims")
    assert ref.error == "label out of range [-1, 1] for sims: 1.2"


def test_split_filter_and_limit(tmp_path: Path) -> None:
    rows = "".join(f"v,{i},t,0.5,,,,Positive,{'train' if i % 2 else 'test'}\n" for i in range(1, 11))
    (tmp_path / "label.csv").write_text(HEADER + rows, encoding="utf-8")
    for i in range(1, 11):
        touch(tmp_path, f"Raw/v/{i}.mp4")
    assert {r.split for r in read(tmp_path, splits=["test"])} == {"test"}
    assert len(read(tmp_path, splits=["train"], limit=3)) == 3


def test_missing_column_stops_at_start_naming_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "label.csv").write_text("video_id,clip_id,text,label\nv,1,t,0\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"label\.csv, line 1: missing required column\(s\) mode"):
        read(tmp_path)


def test_bad_encoding_names_the_line(tmp_path: Path) -> None:
    text = HEADER + "v,1,ok,0,,,,Neutral,train\n"
    (tmp_path / "label.csv").write_bytes(text.encode() + "v,2,你好,0,,,,Neutral,train\n".encode("gbk"))
    with pytest.raises(SourceError, match=r"line 3: not valid utf-8-sig text.*iconv"):
        read(tmp_path)
    (ref1, ref2) = read(tmp_path, encoding="gbk")
    assert ref2.text == "你好" and ref2.error.startswith("media file missing")


def test_unterminated_quote_is_a_file_error(tmp_path: Path) -> None:
    (tmp_path / "label.csv").write_text(HEADER + 'v,1,"never closed,0,,,,Neutral,train\n', encoding="utf-8")
    with pytest.raises(SourceError, match="malformed CSV"):
        read(tmp_path)


def test_mosei_time_ranges_from_columns(tmp_path: Path) -> None:
    header = HEADER.strip() + ",start,end\n"
    body = "vidA,1,first,1.0,,,,Positive,train,-0.4576,2.5\nvidA,2,second,-1.0,,,,Negative,train,3,3\n"
    (tmp_path / "label.csv").write_text(header + body, encoding="utf-8")
    touch(tmp_path, "Raw/Videos/Full/Combined/vidA.mp4")
    ok, empty = read(tmp_path, "mosei")
    assert (ok.start, ok.end, ok.error) == (0.0, 2.5, None)
    assert ok.media_path.endswith("Raw/Videos/Full/Combined/vidA.mp4")
    assert empty.error == "empty time range: [3, 3] s"


def test_mosei_time_ranges_from_cmu_transcripts(tmp_path: Path) -> None:
    (tmp_path / "label.csv").write_text(HEADER + "vidB,2,,0.3333,,,,Positive,train\nvidB,9,x,0,,,,Neutral,test\n", encoding="utf-8")
    touch(tmp_path, "Raw/Videos/Full/Combined/vidB.mp4")
    transcript = tmp_path / "Raw/Transcript/Segmented/Combined/vidB.txt"
    transcript.parent.mkdir(parents=True)
    transcript.write_text("vidB___1___0.47___6.51___hello there\nvidB___2___7.0___9.5___it was great\n", encoding="utf-8")
    ok, missing = read(tmp_path, "mosei", segments="transcripts")
    assert (ok.start, ok.end, ok.text) == (7.0, 9.5, "it was great")
    assert missing.error.startswith("segment not in transcript")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_manifest_formats(tmp_path: Path, suffix: str) -> None:
    touch(tmp_path, "clips/a.mp4")
    rows = [
        {"path": "clips/a.mp4", "text": "good", "label": 1.5, "split": "train"},
        {"path": "clips/a.mp4", "text": "range", "label": -0.5, "split": "test", "start": 1.0, "end": 2.0},
        {"path": "clips/missing.mp4", "text": "x", "label": 0.0, "split": "valid"},
    ]
    path = tmp_path / f"list{suffix}"
    if suffix == ".csv":
        cols = ["path", "text", "label", "split", "start", "end"]
        path.write_text(",".join(cols) + "\n" + "".join(",".join(str(r.get(c, "")) for c in cols) + "\n" for r in rows))
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        columns = ["path", "text", "label", "split", "start", "end"]
        pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows]), path)
    refs = read(path, "manifest", name="mycorpus")
    assert [r.key for r in refs] == ["mycorpus/a/0", "mycorpus/a/1-2", "mycorpus/missing/0"]
    assert refs[1].start == 1.0 and refs[1].end == 2.0
    assert refs[2].error.startswith("media file missing")


def test_manifest_without_label_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("path,text\na.mp4,x\n")
    with pytest.raises(SourceError, match="missing required column"):
        read(path, "manifest")
