"""Judges, pluggable by config (`eval.judges.<name>`): each decides, for (prompt, reply) pairs, whether the reply
is a refusal. A refusal suite names its judge, so harmful suites can use a harm classifier while benign ones keep
the refusal rules.

- `rules`: the string-rule refusal judge (evaluation/refusal.py, agreement with humans measured on XSTest).
- `classifier`: any Hugging Face sequence-classification model (a Llama-Guard-style safety classifier exported as
  one, a toxicity or refusal classifier), its labels mapped to `refusal` / `compliance` by `label_map`; for a
  harm classifier map "unsafe" to compliance and "safe" to refusal, and use it on harmful suites.
- `reward`: a trained reward or cost model; a score above `threshold` means `above_threshold` (a cost model
  trained with safe-rlhf's sign loss: above 0 = unsafe compliance).
- `probe`: the learned judge of evaluation/probe.py (linear probes on SmolLM2's hidden states, fitted at first use
  on the project's labelled replies plus XSTest's and cached), the only kind that also reads whether a reply gives
  harmful content and whether a benign reply attempts the task.
The models see the conversation in their own chat template when they have one, else "prompt\\n\\nreply".

A judge's `axes` say what it reads: every judge reads `refusal`; a judge that also reads `harmful_content` and
`helpful` has `harmful` and `helpful` methods (evaluation/runner.py reports the rates each axis supports).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from omegaconf import DictConfig

from alignlab.errors import ModelError
from alignlab.evaluation.probe import ProbeJudge
from alignlab.evaluation.refusal import is_refusal, rules_for


class Judge(Protocol):
    axes: tuple[str, ...]

    def refused(self, prompts: list[str], replies: list[str]) -> list[bool]: ...


class RuleJudge:
    """The string-rule judge, with the model-specific rule files its config names (`model_rules`)."""

    axes = ("refusal",)

    def __init__(self, spec: DictConfig) -> None:
        self.rules = rules_for(list(spec.get("model_rules", ["smollm2"])))

    def refused(self, prompts: list[str], replies: list[str]) -> list[bool]:
        return [is_refusal(r, p, self.rules) for p, r in zip(prompts, replies, strict=True)]


class SequenceScorer:
    """A sequence-classification model applied to (prompt, reply) conversations, batched."""

    def __init__(self, path: str, batch_size: int = 16, max_length: int = 512) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        except Exception as exc:
            raise ModelError(f"Model error: cannot load a sequence-classification model from '{path}': {exc}") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.path, self.batch_size, self.max_length = path, batch_size, max_length

    def text(self, prompt: str | list[dict[str, str]], reply: str) -> str:
        """The conversation as the model reads it; `prompt` is a user message or a list of chat messages."""
        turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        conv = [*turns, {"role": "assistant", "content": reply}]
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(conv, tokenize=False)
        return "\n\n".join(m["content"] for m in conv)

    @torch.no_grad()
    def logits(self, prompts: list, replies: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(prompts), self.batch_size):
            batch = zip(prompts[i : i + self.batch_size], replies[i : i + self.batch_size])
            texts = [self.text(p, r) for p, r in batch]
            enc = self.tokenizer(
                texts,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=not self.tokenizer.chat_template,
            )
            out.append(self.model(**enc.to(self.model.device)).logits.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.num_labels)

    def scores(self, prompts: list, replies: list[str]) -> list[float]:
        """One scalar per reply: the reward (a model with one output)."""
        logits = self.logits(prompts, replies)
        if logits.shape[-1] != 1:
            raise ModelError(f"Model error: '{self.path}' has {logits.shape[-1]} outputs; a reward model has one.")
        return logits[:, 0].tolist()


class ClassifierJudge:
    axes = ("refusal",)

    def __init__(self, spec: DictConfig) -> None:
        self.scorer = SequenceScorer(spec.path, spec.batch_size, spec.max_length)
        labels = {str(v) for v in self.scorer.model.config.id2label.values()}
        unknown = sorted(set(spec.label_map) - labels)
        unmapped = sorted(labels - set(spec.label_map))
        if unknown or unmapped:
            problems = ([f"not its labels: {unknown}"] if unknown else []) + (
                [f"not mapped: {unmapped}"] if unmapped else []
            )
            raise ModelError(
                f"Model error: the judge's label_map does not match '{spec.path}' (labels {sorted(labels)}): "
                + "; ".join(problems)
            )
        self.label_map = dict(spec.label_map)

    def refused(self, prompts: list[str], replies: list[str]) -> list[bool]:
        id2label = self.scorer.model.config.id2label
        top = self.scorer.logits(prompts, replies).argmax(-1).tolist()
        return [self.label_map[str(id2label[i])] == "refusal" for i in top]


class RewardJudge:
    axes = ("refusal",)

    def __init__(self, spec: DictConfig) -> None:
        self.scorer = SequenceScorer(spec.path, spec.batch_size, spec.max_length)
        self.threshold, self.above = spec.threshold, spec.above_threshold

    def refused(self, prompts: list[str], replies: list[str]) -> list[bool]:
        return [(s > self.threshold) == (self.above == "refusal") for s in self.scorer.scores(prompts, replies)]


def probe_judge(spec: DictConfig, benchmarks_dir: Path | None = None) -> ProbeJudge:
    """The probe judge fitted on `spec.labels` (None: the packaged label sets) and XSTest's human labels from
    `benchmarks_dir` where present (None: $ALIGNLAB_BENCHMARKS or ../shared/benchmarks); its refusal verdict is
    united with the rules of `spec.model_rules`."""
    return ProbeJudge.load_or_fit(
        label_files=None if spec.labels is None else [Path(p) for p in spec.labels],
        xstest=None if benchmarks_dir is None else benchmarks_dir / "xstest",
        rules=rules_for(list(spec.model_rules)),
    )


def build_judge(spec: DictConfig, benchmarks_dir: Path | None = None) -> Judge:
    if spec.kind == "probe":
        return probe_judge(spec, benchmarks_dir)
    return {"rules": RuleJudge, "classifier": ClassifierJudge, "reward": RewardJudge}[spec.kind](spec)
