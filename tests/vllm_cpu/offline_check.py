"""Run cotforge's offline teacher (vllm.LLM in-process) over materialized request bodies.

Runs in the vLLM virtualenv with the cotforge checkout on PYTHONPATH (tests/test_vllm_cpu.py starts
it); the bodies come from the test, built and materialized by cotforge in its own environment.

  usage: python offline_check.py MODEL_DIR BODIES.json OUT.json [MEDIA_DIR]
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from cotforge.config import TeacherConfig
from cotforge.teacher.offline import OfflineTeacher

# The same engine settings as the test's servers (test_vllm_cpu.COMMON_FLAGS).
ENGINE = {
    "max_model_len": 4096,
    "max_num_seqs": 4,
    "max_num_batched_tokens": 8192,
    "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
    "skip_mm_profiling": True,
    "enforce_eager": True,
}


async def main(model: Path, bodies: list[dict], media_dir: Path | None) -> list[dict]:
    cfg = TeacherConfig(model=str(model), backend="vllm-offline", concurrency=4, media_dir=media_dir)
    async with OfflineTeacher(cfg, ENGINE) as teacher:
        await teacher.preflight()
        responses = await asyncio.gather(*(teacher.ask(body) for body in bodies), return_exceptions=True)
        stats = {"requests": teacher.stats["requests"], "succeeded": teacher.stats["succeeded"]}
    return [
        {"error": f"{type(r).__name__}: {r}"} if isinstance(r, BaseException) else
        {"contents": r.contents, "finish_reasons": r.finish_reasons, "prompt_tokens": r.prompt_tokens, "stats": stats}
        for r in responses
    ]


if __name__ == "__main__":
    model_dir, bodies_path, out_path = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    media = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    results = asyncio.run(main(model_dir, json.loads(bodies_path.read_text()), media))
    out_path.write_text(json.dumps(results))
