"""Hint-GRPO: re-roll, once, each group of rollouts that missed the gold polarity, with a directional hint.

Under a sparse verifiable reward, whole GRPO groups often get identical rewards; their advantages
are zero and the step learns nothing from them. Hint-GRPO (MSA-Thinker, arXiv 2604.00013) finds
the groups whose every rollout misses the gold polarity (the anchor the polarity reward checks)
and generates them again with the gold polarity named in the prompt (`prompts/student_hint.j2`),
so the group holds successes to learn from. Only those groups are re-rolled, so the extra cost is
one more generation for a share of the batch.

The override is the smallest that works in TRL 1.16 (notes: rl.md §4): `_generate` calls TRL's
generation, scores the rollouts with the trainer's own reward functions, re-generates the
triggered groups and splices them in row by row; `_generate_and_score_completions` keeps the
dataset rows (gold labels) for it and, with `hint_merge="join"`, re-normalises the hinted groups'
advantages against the pooled rewards. HintGRPOConfig documents the knobs and their defaults.

The re-roll is a collective under several processes (a group can span GPUs, and generation
gathers), so Hint-GRPO refuses world_size > 1 rather than deadlock or mis-assign groups.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from trl.trainer.utils import nanstd

from cotforge.train import ConfigError
from cotforge.train.media_grpo import MediaGRPOTrainer
from cotforge.train.prompts import render_hint
from cotforge.train.rewards import misses_polarity
from cotforge.types import Scale

NONZERO = 1e-6
"""An advantage below this is rounding noise of a zero-variance group."""


def with_hint(prompt: list[dict[str, Any]], hint: str) -> list[dict[str, Any]]:
    """The prompt with the hint appended to its last user turn (a copy; media blocks are shared)."""
    messages = copy.copy(prompt)
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message["role"] != "user":
            continue
        content = message["content"]
        if isinstance(content, str):
            content = f"{content}\n{hint}"
        else:
            content = [*content, {"type": "text", "text": f"\n{hint}"}]
        messages[index] = {**message, "content": content}
        return messages
    raise ValueError("a prompt without a user turn cannot take a hint")


class HintGRPOTrainer(MediaGRPOTrainer):
    """GRPOTrainer (with audio/video in the loss) that re-rolls all-wrong groups with a hint.

    `args` is a HintGRPOConfig; `scale` is the run's label scale (gold polarity = Scale.polarity).
    With `args.hint=False` it is plain GRPO, which is how bench/hint_grpo.py compares the two.
    """

    def __init__(self, *args: Any, scale: Scale, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scale = scale
        if self.args.hint and self.accelerator.num_processes > 1:
            raise ConfigError(
                f"Hint-GRPO re-rolls groups with a second generation, which is a collective across processes; it runs "
                f"on one process only (world_size is {self.accelerator.num_processes}). Run on one GPU, or train plain "
                "GRPO with --no-hint."
            )
        if self.args.hint and self.args.hint_merge == "join" and (
            self.scale_rewards == "batch" or self.multi_objective_aggregation != "sum_then_normalize"
        ):
            raise ConfigError("hint_merge=join pools group rewards: it needs scale_rewards group or none and sum_then_normalize")
        self._rows: list[dict[str, Any]] | None = None
        self._joined: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    # --- TRL hooks ---------------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._rows, self._joined = inputs, {}
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._rows = None
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        for g, (original, hinted) in self._joined.items():
            output["advantages"][g * group : (g + 1) * group] = self._pooled_advantages(original, hinted)
        self._joined = {}
        contributed = output["advantages"].view(-1, group).abs().gt(NONZERO).any(dim=1)
        self._metrics[mode]["frac_prompts_nonzero_advantage"].append(contributed.float().mean().item())
        return output

    def _generate(self, prompts: list) -> tuple:
        result = super()._generate(prompts)
        if not (self.args.hint and self.model.training and self._rows is not None):
            return result
        prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images = result
        rows, size = self._rows, self.num_generations
        if len(rows) != len(prompts) or len(prompts) % size:
            raise RuntimeError(f"{len(prompts)} rollouts for {len(rows)} rows in groups of {size}: TRL's batch layout changed")
        groups = len(prompts) // size
        rewards = self._weighted_rewards(rows, prompts, completions, completion_ids)
        wrong = self._all_wrong(rows, completions)
        triggered = self._triggered(wrong, rewards)
        metrics = self._metrics["train"]
        metrics["hint/frac_groups_all_wrong"].append(sum(wrong) / groups)
        metrics["hint/frac_groups_hinted"].append(len(triggered) / groups)
        metrics["hint/frac_reward_zero_std_before"].append(self._zero_std(rewards).float().mean().item())
        if triggered:
            picked = [g * size + k for g in triggered for k in range(size)]
            hinted = [with_hint(prompts[i], render_hint(self.scale.polarity(rows[i]["label"]), rows[i].get("language") or "en"))
                      for i in picked]
            h_prompt_ids, h_completion_ids, h_tool_mask, h_completions, h_logprobs, *_ = super()._generate(hinted)
            for j, i in enumerate(picked):
                if self.args.hint_prompt_ids == "hinted":
                    prompt_ids[i] = h_prompt_ids[j]
                completion_ids[i], completions[i] = h_completion_ids[j], h_completions[j]
                if logprobs is not None:
                    logprobs[i] = h_logprobs[j]
                if tool_mask is not None:
                    tool_mask[i] = h_tool_mask[j]
            if self.args.hint_merge == "join":
                h_rewards = self._weighted_rewards([rows[i] for i in picked], hinted, h_completions, h_completion_ids)
                for n, g in enumerate(triggered):
                    self._joined[g] = (rewards[g * size : (g + 1) * size], h_rewards[n * size : (n + 1) * size])
        metrics["hint/frac_groups_still_wrong_after_hint"].append(sum(self._all_wrong(rows, completions)) / groups)
        return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images

    # --- scoring -----------------------------------------------------------------------------------

    def _weighted_rewards(self, rows: list[dict[str, Any]], prompts: list, completions: list, completion_ids: list) -> torch.Tensor:
        """The rollouts' rewards as TRL will sum them (same functions, same weights)."""
        per_func = self._calculate_rewards(rows, prompts, completions, completion_ids)
        return (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)

    def _all_wrong(self, rows: list[dict[str, Any]], completions: list) -> list[bool]:
        """Per group: does every rollout miss the gold polarity (earn no polarity reward)?"""
        size = self.num_generations
        misses = [misses_polarity(c, row["label"], self.scale, self.args.reward_require_format) for c, row in zip(completions, rows, strict=True)]
        return [all(misses[g * size : (g + 1) * size]) for g in range(len(misses) // size)]

    def _zero_std(self, rewards: torch.Tensor) -> torch.Tensor:
        std = nanstd(rewards.view(-1, self.num_generations), dim=1)
        return torch.isclose(std, torch.zeros_like(std))

    def _triggered(self, wrong: list[bool], rewards: torch.Tensor) -> list[int]:
        if self.args.hint_trigger == "all_wrong":
            return [g for g, all_wrong in enumerate(wrong) if all_wrong]
        means = rewards.view(-1, self.num_generations).nanmean(dim=1)
        flat = self._zero_std(rewards)
        return [g for g in range(len(wrong)) if flat[g] and means[g] < self.args.hint_reward_below]

    def _pooled_advantages(self, original: torch.Tensor, hinted: torch.Tensor) -> torch.Tensor:
        """Hinted rewards against the baseline of both groups together (hint_merge=join)."""
        pooled = torch.cat([original, hinted])
        advantages = hinted - pooled.nanmean()
        if self.scale_rewards != "none":
            advantages = advantages / (nanstd(pooled) + 1e-4)
        return torch.nan_to_num(advantages, nan=0.0)
