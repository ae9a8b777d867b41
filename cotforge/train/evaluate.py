"""`cotforge eval`: a student (or the teacher, as a zero-shot baseline) on the unfiltered split.

Outputs come from a local checkpoint (transformers `generate`, batched, greedy by default) or
from an OpenAI-compatible endpoint (vLLM serving the student, or the teacher), through the
teacher client. Each output is parsed with the parser of its format (`dc.parse_student` for the
student's tagged text, `dc.parse_teacher` for the teacher's JSON). An output that does not parse
is an error: it is kept, counted, and scored by the `unparsed` policy, never dropped, since
dropping the hard clips would flatter every metric.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cotforge.dc import parse_student, parse_teacher
from cotforge.metrics import msa_metrics
from cotforge.train import ConfigError
from cotforge.train.data import Corpus, MediaSpec, decode_media, prompt_messages
from cotforge.types import Polarity, Scale

log = logging.getLogger(__name__)

EndpointFormat = Literal["student", "teacher"]
Unparsed = Literal["worst", "zero"]
POLARITIES = [p.value for p in Polarity]
PREDICTIONS_SCHEMA = pa.schema([
    ("key", pa.string()), ("label", pa.float64()), ("label_polarity", pa.string()), ("output", pa.string()),
    ("format_ok", pa.bool_()), ("polarity", pa.string()), ("score", pa.float64()), ("error", pa.string()),
    ("scored_as", pa.float64()),
])


@dataclass
class Parsed:
    ok: bool
    polarity: str | None
    score: float | None
    error: str | None


def parse_output(text: str, fmt: EndpointFormat) -> Parsed:
    """An output read by the parser of its format; only a fully readable answer counts as parsed."""
    if fmt == "teacher":
        result = parse_teacher(text)
        if result.rationale is None:
            return Parsed(False, None, None, result.error)
        r = result.rationale
        return Parsed(True, r.discrimination.polarity.value, r.calibration.score, None)
    parse = parse_student(text)
    score = parse.score if parse.score is not None and math.isfinite(parse.score) else None
    return Parsed(parse.format_ok, parse.polarity.value if parse.polarity else None, score,
                  parse.error.value if parse.error else None)


def scored_value(parsed: Parsed, gold: float, scale: Scale, unparsed: Unparsed) -> float:
    """What a prediction counts as in the metrics.

    `worst`: an unparsed output scores the far end of the scale from gold, so it is wrong on
    every accuracy and costs the most MAE. `zero`: it scores 0, the convention of several papers,
    which can count as right (Has0_acc_2 calls 0 non-negative), so it is not the default.
    """
    if parsed.ok and parsed.score is not None:
        return float(parsed.score)
    if unparsed == "zero":
        return 0.0
    return scale.low if gold >= (scale.low + scale.high) / 2 else scale.high


@dataclass
class EvalResult:
    metrics: dict[str, float]
    rows: int
    unparsed: int
    errors: dict[str, int] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def unparsed_share(self) -> float:
        return self.unparsed / self.rows if self.rows else 0.0


def score_outputs(corpus: Corpus, outputs: list[str], fmt: EndpointFormat, unparsed: Unparsed,
                  call_errors: list[str | None] | None = None) -> tuple[pa.Table, EvalResult]:
    """Predictions table and metrics of outputs aligned with the corpus rows."""
    keys, labels = list(corpus.dataset["key"]), list(corpus.dataset["label"])
    if len(outputs) != len(keys):
        raise ValueError(f"{len(outputs)} outputs for {len(keys)} clips")
    records, errors = [], {}
    for i, (key, gold, text) in enumerate(zip(keys, labels, outputs, strict=True)):
        parsed = parse_output(text, fmt)
        error = (call_errors[i] if call_errors else None) or parsed.error
        if error:
            kind = error.split(":", 1)[0]
            errors[kind] = errors.get(kind, 0) + 1
        records.append({
            "key": key, "label": gold, "label_polarity": corpus.scale.polarity(gold).value, "output": text,
            "format_ok": parsed.ok, "polarity": parsed.polarity, "score": parsed.score, "error": error,
            "scored_as": scored_value(parsed, gold, corpus.scale, unparsed),
        })
    table = pa.Table.from_pylist(records, schema=PREDICTIONS_SCHEMA)
    metrics = msa_metrics(corpus.scale, table.column("scored_as").to_pylist(), labels)
    bad = sum(1 for r in records if not r["format_ok"])
    metrics["unparsed_share"] = round(bad / len(records), 4)
    return table, EvalResult(metrics, len(records), bad, errors)


# --- local generation -----------------------------------------------------------------------------


def generate_local(model: Any, processing_class: Any, omni: bool, corpus: Corpus, spec: MediaSpec,
                   batch_size: int = 8, max_new_tokens: int = 768, do_sample: bool = False,
                   rows: list[int] | None = None) -> list[str]:
    """Outputs of a transformers model for the corpus rows (all, or `rows`), batched with left padding."""
    import torch

    from cotforge.train.collate import concat_media, encode_conversation, media_fields, pad_rows

    tokenizer = processing_class.tokenizer if omni else processing_class
    indices = list(range(len(corpus))) if rows is None else rows
    device = next(model.parameters()).device
    outputs: list[str] = []
    model.eval()
    for start in range(0, len(indices), batch_size):
        batch = corpus.dataset.select(indices[start : start + batch_size]).to_list()
        if omni:
            encoded = [encode_conversation(processing_class, prompt_messages(row, corpus.scale, decode_media(row, spec)),
                                           generation_prompt=True) for row in batch]
        else:
            encoded = [dict(tokenizer.apply_chat_template(prompt_messages(row, corpus.scale, None), add_generation_prompt=True,
                                                          tokenize=True, return_dict=True, return_tensors="pt"))
                       for row in batch]
        inputs = {
            "input_ids": pad_rows([e["input_ids"][0] for e in encoded], tokenizer.pad_token_id, "left"),
            "attention_mask": pad_rows([e["attention_mask"][0] for e in encoded], 0, "left"),
            **concat_media([media_fields(e) for e in encoded]),
        }
        inputs = {key: value.to(device) for key, value in inputs.items()}
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                       pad_token_id=tokenizer.pad_token_id)
        outputs.extend(tokenizer.batch_decode(generated[:, inputs["input_ids"].size(1):], skip_special_tokens=True))
    return outputs


# --- endpoint -------------------------------------------------------------------------------------


def student_body(row: dict[str, Any], scale: Scale, cfg: Any) -> dict[str, Any]:
    """A chat request for a served student: its system prompt, the clip as one MP4 with audio, the transcript.

    The media part has the teacher request's shape (placeholders that `materialize` fills), so a
    vLLM server started for the teacher takes it as is.
    """
    from cotforge.teacher.request import MEDIA_PLACEHOLDER
    from cotforge.train.prompts import render_user, system_prompt

    body: dict[str, Any] = {
        "model": cfg.model,
        "messages": [
            {"role": "system", "content": system_prompt(scale)},
            {"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": f"{MEDIA_PLACEHOLDER}video"}, "uuid": f"{row.get('media_hash')}:video_audio"},
                {"type": "text", "text": render_user(row["text"] or "", row.get("language") or "en")},
            ]},
        ],
        "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens, "n": 1,
    }
    if cfg.seed is not None:
        body["seed"] = cfg.seed
    if cfg.mm_kwargs == "request":
        body["mm_processor_kwargs"] = {"use_audio_in_video": True}
        body["media_io_kwargs"] = {"video": {"fps": round(float(row["frame_fps"] or 2.0), 4)}}
    return body


async def _ask_endpoint(corpus: Corpus, cfg: Any, fmt: EndpointFormat) -> tuple[list[str], list[str | None]]:
    from cotforge.teacher.client import TeacherCallError, TeacherClient
    from cotforge.teacher.headers import simulator_headers
    from cotforge.teacher.request import ClipMedia, build_request, materialize

    outputs: list[str] = [""] * len(corpus)
    errors: list[str | None] = [None] * len(corpus)
    gate = asyncio.Semaphore(cfg.concurrency)

    async def one(index: int, client: TeacherClient) -> None:
        async with gate:  # a clip's media are read only when its request is about to go out
            row = corpus.dataset[index]
            if fmt == "teacher":
                request = build_request(row, cfg, corpus.scale)
                body, headers = request.body, request.headers
            else:
                body = student_body(row, corpus.scale, cfg)
                # only a server that serves the simulator gets the gold label
                headers = (simulator_headers(row["key"], row["label"], corpus.scale, row.get("language") or "en")
                           if cfg.simulated else {})
            media = ClipMedia(frames=list(row["frames"] or []), frame_fps=float(row["frame_fps"] or 2.0),
                              audio_flac=row["audio"] or b"")
            filled = await asyncio.to_thread(materialize, body, media, cfg.video_codec)
            try:
                response = await client.ask(filled, headers)
            except TeacherCallError as exc:
                errors[index] = f"endpoint error: {exc}"
                return
        outputs[index] = response.contents[0] if response.contents else ""

    async with TeacherClient(cfg) as client:
        await client.preflight()
        await asyncio.gather(*(one(i, client) for i in range(len(corpus))))
    return outputs, errors


def ask_endpoint(corpus: Corpus, url: str, served_model: str, fmt: EndpointFormat, concurrency: int = 16,
                 max_tokens: int = 1024, temperature: float = 0.0) -> tuple[list[str], list[str | None]]:
    """Outputs of an OpenAI-compatible server for every clip (a failed call is an empty, errored output).

    The teacher format sends the teacher's own DC request (JSON schema and all); the student format
    sends the student's prompt and expects tagged text. A server whose model is named sim/... is
    `cotforge teacher-sim`, and gets the gold label in headers, as in a pipeline run.
    """
    from cotforge.config import TeacherConfig

    cfg = TeacherConfig(
        url=url, model=served_model, concurrency=concurrency, max_tokens=max_tokens, temperature=temperature,
        simulated=served_model.startswith("sim/"), structured="response_format" if fmt == "teacher" else "none",
        max_retries=3,
    )
    return asyncio.run(_ask_endpoint(corpus, cfg, fmt))


# --- outputs --------------------------------------------------------------------------------------


def write_results(out: Path, table: pa.Table, result: EvalResult, scale: Scale, meta: dict[str, Any]) -> EvalResult:
    """predictions.parquet, metrics.json, scatter.png and confusion.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "predictions.parquet")
    payload = {**meta, "rows": result.rows, "unparsed": result.unparsed, "errors": result.errors, "metrics": result.metrics}
    (out / "metrics.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=True) + "\n")
    result.files = {"predictions": out / "predictions.parquet", "metrics": out / "metrics.json",
                    **_plots(out, table, scale)}
    return result


def _plots(out: Path, table: pa.Table, scale: Scale) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gold = np.array(table.column("label").to_pylist(), dtype=float)
    ok = np.array(table.column("format_ok").to_pylist(), dtype=bool)
    pred = np.array(table.column("scored_as").to_pylist(), dtype=float)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(gold[ok], pred[ok], s=14, alpha=0.7, color="tab:blue", label=f"parsed ({ok.sum()})")
    if (~ok).any():
        ax.scatter(gold[~ok], pred[~ok], s=14, alpha=0.7, marker="x", color="tab:red", label=f"unparsed, as scored ({(~ok).sum()})")
    pad = (scale.high - scale.low) * 0.04
    ax.plot([scale.low, scale.high], [scale.low, scale.high], "k--", lw=1)
    ax.set(xlabel="gold label", ylabel="predicted score", title="gold vs prediction",
           xlim=(scale.low - pad, scale.high + pad), ylim=(scale.low - pad, scale.high + pad))
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "scatter.png", dpi=110)
    plt.close(fig)

    columns = [*POLARITIES, "unparsed"]
    matrix = np.zeros((3, 4), dtype=int)
    for gold_p, said, parsed in zip(table.column("label_polarity").to_pylist(), table.column("polarity").to_pylist(), ok):
        matrix[POLARITIES.index(gold_p), POLARITIES.index(said) if parsed and said in POLARITIES else 3] += 1
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.imshow(matrix, cmap="Blues")
    for i in range(3):
        for j in range(4):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set(xticks=range(4), yticks=range(3), xticklabels=columns, yticklabels=POLARITIES,
           xlabel="predicted polarity", ylabel="gold", title="polarity confusion")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=110)
    plt.close(fig)
    return {"scatter": out / "scatter.png", "confusion": out / "confusion.png"}


def run_eval(run: Path, split: str, out: Path, *, model: str | None = None, url: str | None = None,
             served_model: str | None = None, fmt: EndpointFormat = "student", batch_size: int = 8,
             max_new_tokens: int = 768, limit: int | None = None, unparsed: Unparsed = "worst",
             concurrency: int = 16, do_sample: bool = False) -> EvalResult:
    """Evaluate a checkpoint (`model`) or an endpoint (`url` + `served_model`) on RUN's unfiltered split."""
    from cotforge.train.data import open_eval_split

    if (model is None) == (url is None):
        raise ConfigError("give either --model CKPT (local generation) or --teacher-url URL with --served-model M")
    corpus = open_eval_split(run, split, limit)
    log.info("eval on %d %s clips of %s", len(corpus), split, corpus.source)
    if url is not None:
        if not served_model:
            raise ConfigError("--teacher-url needs --served-model (the model name the server serves)")
        outputs, call_errors = ask_endpoint(corpus, url, served_model, fmt, concurrency, max_new_tokens)
        meta = {"endpoint": url, "served_model": served_model, "format": fmt}
    else:
        outputs, call_errors = _local_outputs(model, corpus, batch_size, max_new_tokens, do_sample), None
        fmt = "student"
        meta = {"model": str(model), "format": fmt, "greedy": not do_sample}
    table, result = score_outputs(corpus, outputs, fmt, unparsed, call_errors)
    meta.update({"run": str(run), "split": split, "source": str(corpus.source), "unparsed_policy": unparsed,
                 "scale": corpus.scale.as_dict()})
    return write_results(out, table, result, corpus.scale, meta)


def _local_outputs(model_dir: str, corpus: Corpus, batch_size: int, max_new_tokens: int, do_sample: bool) -> list[str]:
    from cotforge.train import require_train_extra
    from cotforge.train.data import audio_chunk_seconds
    from cotforge.train.models import OMNI_MODEL_TYPES, load_student, model_type
    from cotforge.train.processor import fit_chunk_length

    require_train_extra()
    omni = model_type(model_dir) in OMNI_MODEL_TYPES
    student = load_student(model_dir, text_only=not omni)
    spec = MediaSpec(**{**MediaSpec().as_dict(), **student.meta.get("media", {})})
    if omni:
        chunk = max(student.meta.get("audio_chunk_seconds") or 0, audio_chunk_seconds(corpus.max_audio_seconds()))
        fit_chunk_length(student.processing_class.feature_extractor, chunk)
        log.info("audio: Whisper chunk_length %d s for this split (longest clip %.2f s)", chunk, corpus.max_audio_seconds())
    return generate_local(student.model, student.processing_class, omni, corpus, spec, batch_size, max_new_tokens, do_sample)
