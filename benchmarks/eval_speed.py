"""Seconds per suite of an evaluation, and BBQ scored two ways: each answer as a whole sequence, or from one pass
over its context (`likelihood.score_choices`, what the evaluator uses).

Loads a model as an eval stage does (the experiment's `model` group, bf16 generation by default), times every
suite of the experiment's `eval` group on it in turn, then scores the BBQ sample both ways, back to back in the
same process (so a busy or slow machine slows both alike), and prints both tables: the seconds, and how far the
two scorings' mean token log-likelihoods and picks differ (in fp32 they agree; in bf16 rounding moves a few
near-tied picks either way).

    .venv/bin/python benchmarks/eval_speed.py                                    # safety-bias-smollm, SmolLM2 bf16
    .venv/bin/python benchmarks/eval_speed.py model.generation_dtype=float32     # any override of the experiment
    .venv/bin/python benchmarks/eval_speed.py --model /path/to/run/dpo/model     # a trained model
"""

from __future__ import annotations

import argparse
import time

from alignlab.config import compose_config, validate
from alignlab.evaluation import bias
from alignlab.evaluation.likelihood import score, score_choices
from alignlab.evaluation.runner import Evaluator
from alignlab.models import cache_root, load_model, load_tokenizer, resolve_model_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="safety-bias-smollm")
    p.add_argument("--model", help="a model folder (default: the experiment's starting model)")
    p.add_argument("overrides", nargs="*", help="config overrides, as on alignlab's command line")
    args = p.parse_args()
    cfg = validate(compose_config([f"experiment={args.experiment}", *args.overrides]))
    path = args.model or resolve_model_path(cfg.model, cache_root(cfg))
    tokenizer, model = load_tokenizer(path, cfg.model), load_model(path, cfg.model, for_generation=True)
    print(f"model {path} ({cfg.model.generation_dtype}), experiment {args.experiment}\n")
    print("| suite | kind | rows | seconds |\n| --- | --- | ---: | ---: |")
    total, bbq = 0.0, None
    for name in [n for n, spec in cfg.eval.suites.items() if spec is not None]:
        evaluator = Evaluator(cfg.eval, None, cfg.seed, only=[name], log=lambda _: None)  # one suite, read untimed
        if not evaluator.suites:
            print(f"| {name} | skipped: its files are not in {cfg.eval.benchmarks_dir} | | |")
            continue
        suite = evaluator.suites[0]
        start = time.perf_counter()
        evaluator(model, tokenizer)
        seconds = time.perf_counter() - start
        total += seconds
        bbq = suite if suite.kind == "bbq" else bbq
        print(f"| {name} | {suite.kind} | {len(suite.prompts or suite.rows)} | {seconds:.1f} |")
    print(f"| all | | | {total:.1f} |\n")

    if bbq is None:
        print("no BBQ suite in this evaluation (or its files are absent): nothing to compare")
        return
    contexts, answers = [bias.bbq_prompt(i) for i in bbq.rows], [list(i.answers) for i in bbq.rows]
    start = time.perf_counter()
    whole = score(
        model,
        tokenizer,
        [c for c in contexts for _ in range(3)],
        [a for a3 in answers for a in a3],
        cfg.eval.score_batch_size,
    )
    t_whole = time.perf_counter() - start
    start = time.perf_counter()
    shared = score_choices(model, tokenizer, contexts, answers, cfg.eval.score_batch_size)
    t_shared = time.perf_counter() - start
    diffs = [abs(whole[3 * i + k].mean - s[k].mean) for i, s in enumerate(shared) for k in range(3)]
    picks_whole = [max(range(3), key=lambda k, i=i: whole[3 * i + k].mean) for i in range(len(shared))]
    picks_shared = [max(range(3), key=lambda k, s=s: s[k].mean) for s in shared]
    differ = sum(a != b for a, b in zip(picks_whole, picks_shared))
    print("| BBQ scoring | seconds | max abs diff of mean log-likelihood | picks that differ |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| each answer whole | {t_whole:.1f} | | |")
    print(f"| one pass over the context | {t_shared:.1f} | {max(diffs):.5f} | {differ} of {len(shared)} |")
    print(f"\none pass over the context: {t_whole / t_shared:.2f}x faster")


if __name__ == "__main__":
    main()
