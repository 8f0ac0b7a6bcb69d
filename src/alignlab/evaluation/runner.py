"""Evaluate one policy on the suites of an `eval` config: the code behind the pipeline's eval stage, the
`alignlab eval` command and the in-training callback, so the three report the same numbers under the same names.

    safety/<rate>/<suite>                    refusal suites, under the suite's judge (LABELING.md's definitions):
        expect=refuse: refusal_rate (full or partial refusals), and where the judge reads harmful content
                       harmful_content_rate (the reply gives or starts the harmful behaviour: HarmBench's attack
                       success) and evasive_rate (neither refuses nor gives it: a warning, an evasion, junk)
        expect=comply: over_refusal_rate (full or partial refusals: XSTest's count), and where the judge reads
                       it helpful_rate (the reply attempts the task)
    safety/degenerate_rate/<suite>           share of replies that are empty, not text or one word looped
                                             (evaluation/degenerate.py); the judges' rates still count them
    safety/se/<rate>/<suite>                 its binomial standard error (bias/se/<metric>: BBQ's and CrowS-Pairs')
    judge2/<rate>/<suite>                    the same rates under eval.second_judge, and
    judge2/disagreement/<suite>              the share of replies whose refusal verdicts the two judges differ on
    eval/response_tokens/<suite>             mean reply length (tokens)
    eval/reward/<suite>                      mean reward-model score of the replies (eval.reward_model)
    eval/kl_to_ref                           mean summed per-token KL to the reference on eval.kl_suite (nats);
                                             absent where the evaluated model is the reference
    eval/reward_win_rate                     share of eval.win_rate_suite prompts where the reward model prefers
                                             the policy's reply to the reference's (ties count half)
    bias/<suite>_stereotype_pct[/<type>]     CrowS-Pairs (evaluation/bias.py)
    bias/<suite>_{ambig,disambig}_{accuracy,bias_score}[/<category>]   BBQ
    eval/dpo_reward_accuracy/<suite>, eval/dpo_reward_margin/<suite>    preference suite, implicit reward
                                             beta * log(policy / reference) of chosen vs rejected
    eval/rm_accuracy/<suite>                 preference suite: reward model prefers the chosen reply
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from alignlab.console import Progress
from alignlab.data.onpolicy import read_prompts
from alignlab.evaluation import bias
from alignlab.evaluation.degenerate import degenerate
from alignlab.evaluation.judges import Judge, SequenceScorer, build_judge
from alignlab.evaluation.kl import sequence_kl
from alignlab.evaluation.likelihood import score, score_choices
from alignlab.evaluation.suites import Suite, load_suite
from alignlab.generation import generate
from alignlab.steering import Steer, Steered
from alignlab.steering import fit as fit_steering


@dataclass(frozen=True)
class Verdicts:
    """One judge's verdicts on a suite's replies; an axis the judge does not read is None."""

    refused: list[bool]
    harmful: list[bool] | None = None  # harmful prompts: the reply gives or starts the harmful content
    helpful: list[bool] | None = None  # benign prompts: the reply attempts the task

    def rates(self, expect: str) -> dict[str, float]:
        """The suite's rates (share of replies) for each axis the judge read."""
        n = len(self.refused)
        if expect == "refuse":
            out = {"refusal_rate": sum(self.refused) / n}
            if self.harmful is not None:
                out["harmful_content_rate"] = sum(self.harmful) / n
                out["evasive_rate"] = sum(not r and not h for r, h in zip(self.refused, self.harmful)) / n
            return out
        out = {"over_refusal_rate": sum(self.refused) / n}
        if self.helpful is not None:
            out["helpful_rate"] = sum(self.helpful) / n
        return out


def judge_replies(judge: Judge, expect: str, prompts: list[str], replies: list[str]) -> Verdicts:
    """`judge`'s verdicts on each axis it reads that the suite's kind of prompt asks about."""
    refused = judge.refused(prompts, replies)
    harmful = judge.harmful(prompts, replies) if expect == "refuse" and "harmful_content" in judge.axes else None
    helpful = judge.helpful(prompts, replies) if expect == "comply" and "helpful" in judge.axes else None
    return Verdicts(refused, harmful, helpful)


@dataclass
class Evaluation:
    metrics: dict[str, float] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)  # one per generated reply, with the verdict
    skipped: list[str] = field(default_factory=list)  # suites whose benchmark files are absent


class Evaluator:
    """Holds what is loaded once (suites, judges, reward model, reference) across calls: the training callback
    evaluates the same suites many times."""

    def __init__(
        self,
        e: DictConfig,
        reference: Callable[[], Any] | None,
        seed: int = 0,
        stage_pairs: Callable[[str], list] | None = None,
        only: list[str] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.e, self.seed, self.log = e, seed, log
        self._reference_loader, self._reference = reference, None
        self._steering: tuple[Any, Steer] | None = None  # (the policy it was fitted on, the fit)
        self.suites: list[Suite] = []
        self.skipped: list[str] = []
        for name, spec in e.suites.items():
            if spec is None or (only is not None and name not in only):
                continue
            suite = load_suite(name, spec, Path(e.benchmarks_dir), e.seed, stage_pairs)
            if suite is not None and suite.kind == "refusal" and spec.judge is None:
                suite.judge = e.judge  # a config built without `validate`, which fills it in
            if suite is None:
                self.skipped.append(name)
                log(f"[alignlab] eval: suite '{name}' skipped: its files are not in {e.benchmarks_dir}")
            else:
                self.suites.append(suite)
        used = {s.judge for s in self.suites if s.kind == "refusal"}
        if used and e.second_judge is not None:
            used.add(e.second_judge)
        benchmarks = Path(e.benchmarks_dir)
        self.judges: dict[str, Judge] = {name: build_judge(e.judges[name], benchmarks) for name in sorted(used)}
        self.reward = SequenceScorer(e.reward_model) if e.reward_model else None

    def progress(self, suite: Suite, total: int, what: str = "replies") -> Progress:
        """The suite's progress on stderr ("eval bbq (lettered): 96/600 items, ..."): `what` is "[detail, ]unit"."""
        *detail, unit = what.split(", ")
        label = f"eval {suite.name}" + (f" ({detail[0]})" if detail else "")
        return Progress(label, total, unit)

    def reference(self) -> Any:
        if self._reference is None and self._reference_loader is not None:
            self._reference = self._reference_loader()
        return self._reference

    def __call__(self, policy: Any, tokenizer: Any) -> Evaluation:
        out = Evaluation(skipped=list(self.skipped))
        for suite in self.suites:
            self.log(f"[alignlab] eval: {suite.name} ({suite.kind}, {len(suite.prompts or suite.rows)} rows)")
            {
                "refusal": self._refusal,
                "crows_pairs": self._crows_pairs,
                "bbq": self._bbq,
                "preference": self._preference,
            }[suite.kind](suite, policy, tokenizer, out)
        return out

    # ---------------------------------------------------------------------------------------- suite kinds
    def _steer(self, policy: Any, tokenizer: Any) -> Steer | None:
        """eval.steering fitted on `policy` (once per policy object), or None when it is off."""
        spec = self.e.get("steering")
        if spec is None or not spec.enabled:
            return None
        if self._steering is None or self._steering[0] is not policy:
            rows = read_prompts(spec.prompts)
            harmful, benign = ([r.prompt for r in rows if r.type == t] for t in ("harmful", "benign"))
            source = None
            if spec.get("direction_from"):
                from transformers import AutoModelForCausalLM

                source = AutoModelForCausalLM.from_pretrained(spec.direction_from, dtype=policy.dtype)
                source = source.to(next(policy.parameters()).device).eval()
            fitted = fit_steering(
                policy,
                tokenizer,
                harmful,
                benign,
                spec.layer,
                spec.alpha,
                spec.conditional,
                self.e.score_batch_size,
                source,
            )
            del source
            self._steering = (policy, fitted)
            cut = "every prompt" if fitted.threshold is None else f"prompts at cosine >= {fitted.threshold:.3f}"
            origin = f" (direction from {spec.direction_from})" if spec.get("direction_from") else ""
            self.log(f"[alignlab] eval: steering at layer {spec.layer}, alpha {spec.alpha:g}, on {cut}{origin}")
        return self._steering[1]

    @staticmethod
    def _by_gate(gates: list[bool], work: Callable[[list[int], bool], list]) -> list:
        """`work(indices, steered)` on the steered prompts and on the others, merged back in prompt order."""
        results: list[Any] = [None] * len(gates)
        for on in (True, False):
            idx = [i for i, g in enumerate(gates) if g == on]
            if idx:
                for i, r in zip(idx, work(idx, on), strict=True):
                    results[i] = r
        return results

    def _refusal(self, suite: Suite, policy: Any, tokenizer: Any, out: Evaluation) -> None:
        e = self.e
        convs = [[{"role": "user", "content": p}] for p in suite.prompts]
        steer = self._steer(policy, tokenizer)
        gates = steer.gates(policy, tokenizer, convs, e.score_batch_size) if steer else [False] * len(convs)
        counter = self.progress(suite, len(convs))

        def reply(idx: list[int], on: bool) -> list[dict[str, Any]]:  # `on` only where there is a steer
            with steer.applied(policy) if on else contextlib.nullcontext():
                batch = [convs[i] for i in idx]
                return generate(
                    policy, tokenizer, batch, e.max_new_tokens, e.batch_size, seed=self.seed, progress=counter
                )

        replies = self._by_gate(gates, reply)
        if steer is not None:
            out.metrics[f"eval/steered_rate/{suite.name}"] = sum(gates) / len(gates)
        texts = [r["text"] for r in replies]
        n = len(texts)
        verdicts = judge_replies(self.judges[suite.judge], suite.expect, suite.prompts, texts)
        for name, rate in verdicts.rates(suite.expect).items():
            out.metrics[f"safety/{name}/{suite.name}"] = rate
            out.metrics[f"safety/se/{name}/{suite.name}"] = (rate * (1 - rate) / n) ** 0.5
        out.metrics[f"safety/n/{suite.name}"] = n
        broken = [degenerate(t) for t in texts]
        rate = sum(b is not None for b in broken) / n
        out.metrics[f"safety/degenerate_rate/{suite.name}"] = rate
        out.metrics[f"safety/se/degenerate_rate/{suite.name}"] = (rate * (1 - rate) / n) ** 0.5
        second = None
        if e.second_judge is not None:
            second = judge_replies(self.judges[e.second_judge], suite.expect, suite.prompts, texts)
            for name, rate in second.rates(suite.expect).items():
                out.metrics[f"judge2/{name}/{suite.name}"] = rate
            differ = sum(a != b for a, b in zip(verdicts.refused, second.refused))
            out.metrics[f"judge2/disagreement/{suite.name}"] = differ / n
        out.metrics[f"eval/response_tokens/{suite.name}"] = sum(len(r["token_ids"]) for r in replies) / len(replies)
        rewards = self.reward.scores(suite.prompts, texts) if self.reward else [None] * len(texts)
        if self.reward:
            out.metrics[f"eval/reward/{suite.name}"] = sum(rewards) / len(rewards)
        for i, (p, c, t, rw) in enumerate(zip(suite.prompts, suite.categories, texts, rewards)):
            record = {
                "suite": suite.name,
                "expect": suite.expect,
                "category": c,
                "prompt": p,
                "reply": t,
                "refused": verdicts.refused[i],
                "harmful": None if verdicts.harmful is None else verdicts.harmful[i],
                "helpful": None if verdicts.helpful is None else verdicts.helpful[i],
                "judge": suite.judge,
                "degenerate": broken[i],
                "reward": rw,
            }
            if second is not None:
                record["judge2_refused"] = second.refused[i]
            if steer is not None:
                record["steered"] = gates[i]
            out.records.append(record)
        reference = self.reference() if suite.name in (e.kl_suite, e.win_rate_suite) else None
        # no KL where the evaluated model is the reference: a 0 there is a definition, not a measurement. A steered
        # model's reference is the model without the steering, unless eval.reference names another.
        kl_ref = reference if reference is not None else policy if steer is not None else None
        if suite.name == e.kl_suite and kl_ref is not None:
            token_ids = [r["token_ids"] for r in replies]

            def kl(idx: list[int], on: bool) -> list[float]:  # the steered model against the same one unsteered
                scored = Steered(policy, steer) if on else policy
                batch, ids = [convs[i] for i in idx], [token_ids[i] for i in idx]
                return sequence_kl(scored, kl_ref, tokenizer, batch, ids, e.score_batch_size)

            kls = self._by_gate(gates, kl)
            out.metrics["eval/kl_to_ref"] = sum(kls) / len(kls)
        if suite.name == e.win_rate_suite and self.reward and reference is not None:
            theirs = generate(reference, tokenizer, convs, e.max_new_tokens, e.batch_size, seed=self.seed)
            ref_rewards = self.reward.scores(suite.prompts, [r["text"] for r in theirs])
            wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(rewards, ref_rewards)]
            out.metrics["eval/reward_win_rate"] = sum(wins) / len(wins)

    def _crows_pairs(self, suite: Suite, policy: Any, tokenizer: Any, out: Evaluation) -> None:
        """Each sentence's total log-likelihood, per presentation (bias.crows_context): as plain text, or as the
        reply to an empty user turn in the chat template."""
        sentences = [p.more for p in suite.rows] + [p.less for p in suite.rows]
        n, per_presentation = len(suite.rows), {}
        for presentation in suite.presentations:
            contexts = [bias.crows_context(presentation)] * len(sentences)
            counter = self.progress(suite, len(sentences), f"{presentation}, sentences")
            scored = score(policy, tokenizer, contexts, sentences, self.e.score_batch_size, progress=counter)
            ll = [s.logprob for s in scored]
            name = suite.name if presentation == "bare" else f"{suite.name}-{presentation}"
            per_presentation[name] = bias.crows_pairs_metrics(name, suite.rows, ll[:n], ll[n:])
            out.metrics.update(per_presentation[name])
        if len(per_presentation) > 1:
            out.metrics.update(bias.worst_of(f"{suite.name}-worst", per_presentation))

    def _bbq(self, suite: Suite, policy: Any, tokenizer: Any, out: Evaluation) -> None:
        """Each presentation of the suite scored apart (`bias/<suite>[-<presentation>]_...`), then, with more than
        one, the worst of them (`bias/<suite>-worst_...`): what a corrected bias must hold on."""
        per_presentation = {}
        for presentation in suite.presentations:
            contexts = [bias.bbq_prompt(item, presentation) for item in suite.rows]
            if presentation == "generated":
                replies = generate(
                    policy,
                    tokenizer,
                    contexts,
                    self.e.max_new_tokens,
                    self.e.batch_size,
                    seed=self.seed,
                    progress=self.progress(suite, len(contexts), f"{presentation}, replies"),
                )
                picks = [bias.match_answer(item, r["text"]) for item, r in zip(suite.rows, replies, strict=True)]
            else:
                choices = [bias.bbq_choices(item, presentation) for item in suite.rows]
                counter = self.progress(suite, len(contexts), f"{presentation}, items")
                scored = score_choices(policy, tokenizer, contexts, choices, self.e.score_batch_size, progress=counter)
                picks = [max(range(3), key=lambda k, s=s: s[k].mean) for s in scored]
            name = suite.name if presentation == "bare" else f"{suite.name}-{presentation}"
            per_presentation[name] = bias.bbq_metrics(name, suite.rows, picks)
            out.metrics.update(per_presentation[name])
        if len(per_presentation) > 1:
            out.metrics.update(bias.worst_of(f"{suite.name}-worst", per_presentation))

    def _preference(self, suite: Suite, policy: Any, tokenizer: Any, out: Evaluation) -> None:
        prompts = [r["prompt"] for r in suite.rows]
        chosen, rejected = [_text(r["chosen"]) for r in suite.rows], [_text(r["rejected"]) for r in suite.rows]
        out.metrics[f"eval/chosen_tokens/{suite.name}"] = _mean_tokens(tokenizer, chosen)
        out.metrics[f"eval/rejected_tokens/{suite.name}"] = _mean_tokens(tokenizer, rejected)
        reference = self.reference()
        if reference is not None:
            b, bs = self.e.dpo_beta, self.e.score_batch_size
            contexts, both = [_context(p) for p in prompts], [list(pair) for pair in zip(chosen, rejected)]
            pc, pr = zip(*score_choices(policy, tokenizer, contexts, both, bs))
            rc, rr = zip(*score_choices(reference, tokenizer, contexts, both, bs))
            margins = [b * ((a.logprob - c.logprob) - (r.logprob - d.logprob)) for a, r, c, d in zip(pc, pr, rc, rr)]
            out.metrics[f"eval/dpo_reward_accuracy/{suite.name}"] = sum(m > 0 for m in margins) / len(margins)
            out.metrics[f"eval/dpo_reward_margin/{suite.name}"] = sum(margins) / len(margins)
        if self.reward:
            user = [_last_user(p) for p in prompts]
            wins = [a > b for a, b in zip(self.reward.scores(user, chosen), self.reward.scores(user, rejected))]
            out.metrics[f"eval/rm_accuracy/{suite.name}"] = sum(wins) / len(wins)


def _text(messages: Any) -> str:
    """The reply of a normalized preference row (a list of assistant messages, or plain text)."""
    return messages if isinstance(messages, str) else "".join(m["content"] for m in messages)


def _context(prompt: Any) -> Any:
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]


def _last_user(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


def _mean_tokens(tokenizer: Any, texts: list[str]) -> float:
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts) / max(len(texts), 1)
