"""Does `torch.compile` speed up alignlab's generation loop on this CPU? 64 prompts, 48 new tokens, batch 64:
the eager model twice, then `torch.compile(model, dynamic=True)` twice (the first call includes compiling), with
the replies compared token for token against the eager ones.

    .venv/bin/python benchmarks/generation_compile.py --dtype float32
    .venv/bin/python benchmarks/generation_compile.py --dtype bfloat16
"""

from __future__ import annotations

import argparse
import time

import torch

from alignlab.config import compose_config, validate
from alignlab.generation import generate
from alignlab.models import cache_root, load_model, load_tokenizer, resolve_model_path


def timed(label: str, model: torch.nn.Module, tokenizer: object, prompts: list) -> list[dict]:
    start = time.perf_counter()
    replies = generate(model, tokenizer, prompts, 48, 64)
    print(f"| {label} | {time.perf_counter() - start:.1f} |", flush=True)
    return replies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = p.parse_args()
    cfg = validate(compose_config([]))
    path = resolve_model_path(cfg.model, cache_root(cfg))
    tokenizer = load_tokenizer(path, cfg.model)
    model = load_model(path, cfg.model).eval().to(getattr(torch, args.dtype))
    prompts = [[{"role": "user", "content": f"Topic {i}: how do volcanoes form, and why there?"}] for i in range(64)]
    print(f"| {args.dtype}, 64 prompts x 48 tokens | seconds |\n| --- | ---: |")
    timed("eager", model, tokenizer, prompts)
    eager = timed("eager, again", model, tokenizer, prompts)
    compiled = torch.compile(model, dynamic=True)
    timed("compiled, first call (compiling included)", compiled, tokenizer, prompts)
    out = timed("compiled, again", compiled, tokenizer, prompts)
    same = sum(a["token_ids"] == b["token_ids"] for a, b in zip(eager, out, strict=True))
    print(f"\nreplies identical to eager: {same} of {len(out)}")


if __name__ == "__main__":
    main()
