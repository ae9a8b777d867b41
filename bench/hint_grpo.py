"""Hint-GRPO vs plain GRPO: the same tiny SFT'd policy, data, seed and steps, side by side in one run.

The policy is cotforge.train.tiny's probe: SFT'd to answer every clip "positive" unless a hint says
"negative" (then either, about half the time), so on the probe clips half the prompts are hard: every
rollout misses them, their group's rewards are all equal and, in plain GRPO, their advantage is zero.
It stands in for an instruction-following student that reads a hint; a model this small reads no
English, so the SFT data teaches it to.

Printed, per trainer: the mean `frac_reward_zero_std` over the steps (TRL's metric: the share of
groups with no reward variance, i.e. zero advantage), the share of prompts whose group contributed a
non-zero advantage, and the mean step time (each run's first step, the warm-up, left out); then the
ratios Hint-GRPO / GRPO. The two trainers run alternately (GRPO, Hint, Hint, GRPO, ...) so that a
load change on the machine hits both.

Usage: python bench/hint_grpo.py [--steps 8] [--generations 8] [--repeat 1] [--policy DIR] [--workdir DIR]
Needs the [train] extra.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from transformers import PrinterCallback

from cotforge.train.config import HintGRPOConfig, load_train_config
from cotforge.train.grpo import build_grpo_trainer
from cotforge.train.tiny import PROBE_CLIPS, train_probe_policy, write_probe_shards
from cotforge.types import MOSI_SCALE


def run(policy: Path, shards: Path, out: Path, hint: bool, args: argparse.Namespace) -> dict[str, list[float]]:
    cfg = load_train_config(HintGRPOConfig, None, [
        f"num_generations={args.generations}", f"per_device_train_batch_size={args.generations * len(PROBE_CLIPS)}",
        "max_completion_length=64", f"temperature={args.temperature}", "learning_rate=1e-4", f"seed={args.seed}",
        "report_to=none", "save_strategy=no", "logging_steps=1", "gradient_checkpointing=false", "disable_tqdm=true",
    ], output_dir=str(out), shards=str(shards), model_name_or_path=str(policy), text_only=True, hint=hint,
        max_steps=args.steps)
    trainer, *_ = build_grpo_trainer(cfg)
    trainer.remove_callback(PrinterCallback)  # the table below is the output; TRL's per-step dicts would bury it
    trainer.train()
    names = ("frac_reward_zero_std", "frac_prompts_nonzero_advantage", "step_time", "reward",
             "hint/frac_groups_all_wrong", "hint/frac_groups_still_wrong_after_hint", "hint/frac_reward_zero_std_before")
    return {name: [entry[name] for entry in trainer.state.log_history if name in entry] for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run (one generation each)")
    parser.add_argument("--generations", type=int, default=8, help="rollouts per prompt (G)")
    parser.add_argument("--repeat", type=int, default=1, help="pairs of runs, in alternating order")
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one suits a model this small)")
    parser.add_argument("--policy", type=Path, help="a saved probe policy (train_probe_policy) to reuse")
    parser.add_argument("--workdir", type=Path, help="where runs are written (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        policy = args.policy or train_probe_policy(work / "policy", MOSI_SCALE, seed=args.seed)
        shards = write_probe_shards(work / "run", MOSI_SCALE)
        results: dict[bool, dict[str, list[float]]] = {False: {}, True: {}}
        for pair in range(args.repeat):
            for hint in ((False, True) if pair % 2 == 0 else (True, False)):
                got = run(policy, shards, work / f"{'hint' if hint else 'grpo'}-{pair}", hint, args)
                got["step_time"] = got["step_time"][1:]  # the first step carries the warm-up
                for name, values in got.items():
                    results[hint].setdefault(name, []).extend(values)

    def mean(hint: bool, name: str) -> float | None:
        values = results[hint].get(name) or []
        return statistics.fmean(values) if values else None

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    hard = sum(1 for *_, is_hard in PROBE_CLIPS if is_hard)
    print(f"probe: {len(PROBE_CLIPS)} prompts ({hard} hard) x G={args.generations}, {args.steps} steps x {args.repeat} run(s) each, "
          f"temperature {args.temperature}, seed {args.seed}")
    print(f"{'':44}{'GRPO':>10}{'Hint-GRPO':>12}{'ratio':>10}")
    rows = [("mean frac_reward_zero_std", "frac_reward_zero_std"),
            ("share of prompts with non-zero advantage", "frac_prompts_nonzero_advantage"),
            ("step time, s (warm-up step left out)", "step_time"),
            ("mean reward", "reward")]
    for label, name in rows:
        plain, hinted = mean(False, name), mean(True, name)
        ratio = fmt(hinted / plain) if plain else "-"
        print(f"{label:44}{fmt(plain):>10}{fmt(hinted):>12}{ratio:>10}")
    for name in ("hint/frac_groups_all_wrong", "hint/frac_reward_zero_std_before", "hint/frac_groups_still_wrong_after_hint"):
        print(f"{name:44}{'':>10}{fmt(mean(True, name)):>12}")
    plain_t, hint_t = mean(False, "step_time"), mean(True, "step_time")
    if plain_t and hint_t:
        print(f"step time ratio (Hint-GRPO / GRPO): {hint_t / plain_t:.2f}")


if __name__ == "__main__":
    main()
