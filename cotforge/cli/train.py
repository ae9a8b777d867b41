"""`cotforge train sft|grpo` and `cotforge eval`: thin, they parse options and call cotforge.train.

Options left out do not override the YAML given with --config; --set overrides any config field
(TRL's and cotforge's alike). Heavy imports (torch, TRL) happen inside the commands, so the rest of
the CLI starts fast and works without the [train] extra.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.logging import RichHandler
from rich.table import Table

from cotforge.cli.common import err, fail, out

app = typer.Typer(
    name="train",
    help="Train a student on the exported shards: SFT cold start, then Hint-GRPO. Needs torch and the train extra (README, Training).",
    no_args_is_help=True,
)

ShardsOption = Annotated[Optional[Path], typer.Option("--shards", help="RUN/shards (or RUN): the exported corpus.")]
ModelOption = Annotated[Optional[str], typer.Option("--model", help="Student: model id or checkpoint folder.")]
OutOption = Annotated[Optional[Path], typer.Option("--out", help="Checkpoint folder to write (output_dir).")]
ConfigOption = Annotated[Optional[Path], typer.Option("--config", help="Training config YAML (examples/train/*.yaml).")]
LoraOption = Annotated[Optional[bool], typer.Option("--lora/--full", help="LoRA adapter on the language model, or all weights.")]
TextOnlyOption = Annotated[
    Optional[bool], typer.Option("--text-only/--omni", help="Transcript only, for any causal LM; or the Omni thinker with audio and frames.")
]
SetOption = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override any training config field: --set learning_rate=1e-5 (YAML values).")
]
MaxStepsOption = Annotated[Optional[int], typer.Option("--max-steps", help="Stop after N optimizer steps.")]


def _logging() -> None:
    # transformers 5 renames gradient_checkpointing (TRL's default) and warns on every call: noise for a user.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    handler = RichHandler(console=err, show_path=False, markup=False)
    for name in ("cotforge", "transformers", "trl"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO if name == "cotforge" else logging.WARNING)
        if not logger.handlers:
            logger.addHandler(handler)


def _train_errors() -> tuple[type[Exception], ...]:
    """The errors that mean "the run cannot be set up as asked": one line, no traceback. Light imports
    only, so that `cotforge eval` against an endpoint works without the [train] extra."""
    from cotforge.train import ConfigError, TrainExtraMissing, TRLMismatch
    from cotforge.train.data import CorpusError
    from cotforge.train.models import StudentError

    return TrainExtraMissing, ConfigError, CorpusError, StudentError, TRLMismatch


def _require() -> None:
    from cotforge.train import TrainExtraMissing, require_train_extra

    try:
        require_train_extra()
    except TrainExtraMissing as exc:
        fail(str(exc))


def _train(stage: str, shards: Optional[Path], out_dir: Optional[Path], config: Optional[Path], sets: Optional[list[str]],
           **fields: object) -> Path:
    """Load the stage's config (YAML, then the options given, then --set) and train; errors in one line."""
    _require()
    _logging()
    from cotforge.train.config import HintGRPOConfig, SFTTrainConfig, load_train_config
    from cotforge.train.grpo import run_grpo
    from cotforge.train.sft import run_sft

    kind, runner = (SFTTrainConfig, run_sft) if stage == "sft" else (HintGRPOConfig, run_grpo)
    try:
        cfg = load_train_config(kind, config, sets or [], shards=str(shards) if shards else None,
                                output_dir=str(out_dir) if out_dir else None, **fields)
        return runner(cfg)
    except _train_errors() as exc:
        fail(str(exc))


@app.command("sft")
def sft(
    shards: ShardsOption = None,
    model: ModelOption = None,
    out_dir: OutOption = None,
    config: ConfigOption = None,
    lora: LoraOption = None,
    text_only: TextOnlyOption = None,
    max_steps: MaxStepsOption = None,
    sets: SetOption = None,
) -> None:
    """SFT cold start on the shards' DC targets (TRL SFTTrainer; loss on the assistant turn only)."""
    saved = _train("sft", shards, out_dir, config, sets, model_name_or_path=model, lora=lora, text_only=text_only,
                   max_steps=max_steps)
    out.print(f"SFT checkpoint: {saved} (reload with from_pretrained; next: cotforge train grpo --model {saved})")


@app.command("grpo")
def grpo(
    shards: ShardsOption = None,
    model: ModelOption = None,
    out_dir: OutOption = None,
    config: ConfigOption = None,
    hint: Annotated[Optional[bool], typer.Option("--hint/--no-hint", help="Hint-GRPO (default) or plain GRPO.")] = None,
    num_generations: Annotated[Optional[int], typer.Option("--num-generations", help="Rollouts per prompt (G).")] = None,
    lora: LoraOption = None,
    text_only: TextOnlyOption = None,
    max_steps: MaxStepsOption = None,
    sets: SetOption = None,
) -> None:
    """Hint-GRPO (or plain GRPO) with DC rewards; the Omni student gets its audio and frames in the loss too."""
    saved = _train("grpo", shards, out_dir, config, sets, model_name_or_path=model, hint=hint,
                   num_generations=num_generations, lora=lora, text_only=text_only, max_steps=max_steps)
    out.print(f"GRPO checkpoint: {saved} (evaluate: cotforge eval --model {saved} --run RUN --split test)")


@app.command("tiny")
def tiny(
    shards: Annotated[Path, typer.Option("--shards", help="RUN/shards: its texts and targets train the tokenizer.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the student into.")],
    text_only: Annotated[bool, typer.Option("--text-only/--omni", help="A small Qwen2 LM instead of the Omni thinker.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a random tiny student (a 0.24 M-parameter Qwen2.5-Omni thinker) for smoke runs; nothing is downloaded."""
    _require()
    from cotforge.train.tiny import write_tiny_student

    try:
        saved = write_tiny_student(shards, out_dir, text_only, seed)
    except _train_errors() as exc:
        fail(str(exc))
    out.print(f"random tiny {'text' if text_only else 'Omni'} student in {saved} (it knows nothing until trained)")


def eval_command(
    run: Annotated[Path, typer.Option("--run", help="Run directory: its unfiltered split (RUN/eval/<split>, else its bundles).")],
    model: Annotated[Optional[str], typer.Option("--model", help="Checkpoint to generate with locally (transformers).")] = None,
    split: Annotated[str, typer.Option("--split", help="valid or test.")] = "test",
    teacher_url: Annotated[Optional[str], typer.Option("--teacher-url", help="OpenAI-compatible endpoint instead of --model.")] = None,
    served_model: Annotated[Optional[str], typer.Option("--served-model", help="Model name the endpoint serves.")] = None,
    endpoint_format: Annotated[
        str, typer.Option("--endpoint-format", help="student: student prompt, tagged answer (a served student); teacher: the "
                          "teacher's DC JSON request (zero-shot teacher baseline).")
    ] = "student",
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for predictions.parquet, metrics.json and plots.")] = Path("eval-out"),
    batch_size: Annotated[int, typer.Option(min=1, help="Clips per generate() call (local).")] = 8,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Answer token budget.")] = 768,
    sample: Annotated[bool, typer.Option("--sample/--greedy", help="Sample instead of greedy decoding (local).")] = False,
    unparsed: Annotated[str, typer.Option(help="How an unparsed answer is scored: worst (far end from gold) or zero.")] = "worst",
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight (endpoint).")] = 16,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Evaluate the first N clips only.")] = None,
) -> None:
    """Metrics of a student (or the teacher) on the unfiltered split: MMSA table, unparsed share, predictions, plots."""
    if endpoint_format not in ("student", "teacher"):
        fail(f"--endpoint-format must be student or teacher, not {endpoint_format!r}")
    if unparsed not in ("worst", "zero"):
        fail(f"--unparsed must be worst or zero, not {unparsed!r}")
    if model is not None:
        _require()
    _logging()
    from cotforge.teacher.client import TeacherUnavailable
    from cotforge.train.evaluate import run_eval

    try:
        result = run_eval(run, split, out_dir, model=model, url=teacher_url, served_model=served_model,
                          fmt=endpoint_format, batch_size=batch_size, max_new_tokens=max_new_tokens, limit=limit,
                          unparsed=unparsed, concurrency=concurrency, do_sample=sample)
    except (*_train_errors(), TeacherUnavailable) as exc:
        fail(str(exc))
    out.print(f"{split}: {result.rows} clips, {result.unparsed} unparsed ({result.unparsed_share:.1%}; they count as errors, scored as {unparsed})")
    table = Table(title="MMSA metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}")
    out.print(table)
    if result.errors:
        out.print("errors: " + ", ".join(f"{kind} {n}" for kind, n in sorted(result.errors.items(), key=lambda kv: -kv[1])))
    out.print(f"predictions: {result.files['predictions']}  metrics: {result.files['metrics']}  plots: {out_dir}/scatter.png, confusion.png")
