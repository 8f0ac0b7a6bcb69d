"""`eval`: the suites an evaluation stage (and `alignlab eval`) scores, the judges of refusal suites, and the goals
report.md checks. Group files: conf/eval/. Read by evaluation/ (suites.py, judges.py, runner.py, report.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional, get_args

from omegaconf import II, MISSING, DictConfig

from alignlab.config.checks import check, choice, one_of, positive, typed

SuiteKind = Literal["refusal", "crows_pairs", "bbq", "preference"]
Expect = Literal["refuse", "comply"]
JudgeKind = Literal["rules", "classifier", "reward", "probe"]
Verdict = Literal["refusal", "compliance"]
BBQPresentation = Literal["bare", "listed", "lettered", "generated"]
CrowsPresentation = Literal["bare", "chat"]
SUITE_KINDS = get_args(SuiteKind)
VERDICTS = get_args(Verdict)


@dataclass
class SuiteConfig:
    """One benchmark of an evaluation (evaluation/suites.py reads it, evaluation/runner.py scores it)."""

    kind: str = field(
        default="refusal",
        metadata={
            "help": "refusal: harm and over-refusal rates of the policy's replies; crows_pairs / bbq: social bias "
            "by likelihood; preference: implicit-reward accuracy on pairs.",
            "choices": SuiteKind,
        },
    )
    source: str = field(
        default=MISSING,
        metadata={
            "help": "refusal: bundled:harmful, bundled:benign, harmbench, xstest:safe, xstest:unsafe, a file or a Hub "
            "id; crows_pairs / bbq: the benchmark's name (read from benchmarks_dir), a file, folder or Hub id; "
            "preference: a pairs file, folder or Hub id (any format data/ reads), or `stage:<name>` inside a pipeline."
        },
    )
    expect: str | None = field(
        default=None,
        metadata={
            "help": "Refusal suites: refuse (harmful prompts) or comply (benign prompts); required for them.",
            "choices": Expect,
        },
    )
    limit: int | None = field(
        default=None,
        metadata={"help": "refusal: the first N prompts; other kinds: a seeded sample of N rows; None: all."},
    )
    judge: str | None = field(
        default=None, metadata={"help": "Refusal suites: a key of eval.judges; None: eval.judge (set in validate)."}
    )
    presentations: list[str] = field(
        default_factory=lambda: ["bare"],
        metadata={
            "help": "bbq: how each item is put to the model, each scored apart: bare (context and question; the "
            "bbq_ metrics), listed (the answers listed in the prompt), lettered (lm-evaluation-harness's A/B/C "
            "layout), generated (a greedy reply matched to an answer). crows_pairs: bare (each sentence's "
            "likelihood as plain text) or chat (as the reply to an empty user turn in the chat template, "
            "lm-evaluation-harness's chat mode). With more than one, also the worst of them (bias/<suite>-worst_...).",
            "choices": BBQPresentation,
            "choices_of": "items",
        },
    )
    split: str = field(default="train", metadata={"help": "Split of a Hub id or dataset folder."})
    where: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "Keep only rows whose fields equal these, e.g. {label: safe}."},
    )


@dataclass
class JudgeConfig:
    """Decides whether a reply is a refusal (evaluation/judges.py)."""

    kind: str = field(
        default="rules",
        metadata={
            "help": "rules: refusal phrases; classifier: a sequence-classification model's labels; reward: a reward "
            "or cost model's score against threshold; probe: linear probes on SmolLM2's hidden states fitted on "
            "labelled replies (evaluation/probe.py), which also read harmful content and helpfulness.",
            "choices": JudgeKind,
        },
    )
    path: str | None = field(
        default=None,
        metadata={"help": "classifier / reward: a local folder or Hub id of a sequence-classification model."},
    )
    label_map: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "classifier: each model label -> refusal or compliance.",
            "choices": Verdict,
            "choices_of": "values",
        },
    )
    model_rules: list[str] = field(
        default_factory=lambda: ["smollm2"],
        metadata={
            "help": "rules / probe: the model-specific rule files (src/alignlab/assets/judges/<name>.yaml) added to "
            "the generic rules selected on XSTest; [] for the generic rules alone (another model's replies). The "
            "probe's refusal verdict is its own or these rules'."
        },
    )
    labels: list[str] | None = field(
        default=None,
        metadata={
            "help": "probe: the labelled reply files it is fitted on (LABELING.md's format); None: the sets packaged "
            "in src/alignlab/assets/labels/. XSTest's human labels are added from benchmarks_dir when present."
        },
    )
    threshold: float = field(default=0.0, metadata={"help": "reward: the score that separates the two verdicts."})
    above_threshold: str = field(
        default="compliance",
        metadata={
            "help": "reward: the verdict of a score above threshold (a cost model: compliance).",
            "choices": Verdict,
        },
    )
    batch_size: int = field(default=16, metadata={"help": "Replies scored at once (classifier / reward)."})
    max_length: int = field(default=512, metadata={"help": "Tokens of prompt + reply the judge model reads."})


@dataclass
class TargetConfig:
    """A goal for one metric of the last evaluation stage, checked in report.md (evaluation/report.py).

    `min` / `max`: a number, or `before` for the first evaluation's value ("not worse than the start", loosened by
    `slack`). With
    `around`, distances from that value are compared instead: CrowS-Pairs' stereotype % around 50, a BBQ bias score
    around 0."""

    metric: str = field(default=MISSING, metadata={"help": "As in metrics.json: safety/..., bias/... or eval/..."})
    min: Any = field(default=None, metadata={"help": "Lower bound: a number or before.", "type": "float | str"})
    max: Any = field(default=None, metadata={"help": "Upper bound: a number or before.", "type": "float | str"})
    around: float | None = field(
        default=None, metadata={"help": "Bound the distance from this value instead of the value itself."}
    )
    slack: float = field(
        default=0.0,
        metadata={
            "help": "With a `before` bound: how much worse than the first evaluation still meets it (min: before "
            "with slack 0.05 is x >= before - 0.05); ignored by numeric bounds."
        },
    )


@dataclass
class SteeringConfig:
    """Activation steering along a refusal direction (steering.py): a training-free baseline to compare trained
    alignment with, applied to the evaluated model's replies only."""

    enabled: bool = field(default=False, metadata={"help": "Steer the evaluated model's replies (and its KL)."})
    layer: int = field(
        default=12, metadata={"help": "The decoder layer whose input the direction is read from and added to."}
    )
    alpha: float = field(
        default=1.0,
        metadata={"help": "Multiple of the difference of means added (1: Arditi et al.'s activation addition)."},
    )
    conditional: bool = field(
        default=True,
        metadata={
            "help": "Steer only prompts whose activation's cosine with the direction reaches the threshold that "
            "best separates the training prompts (CAST, Lee et al. 2024); false: every prompt."
        },
    )
    prompts: str = field(
        default="pkg://alignlab/assets/safety/train_prompts.jsonl",
        metadata={"help": "Prompts (type harmful | benign) the direction and threshold are fitted on."},
    )
    direction_from: str | None = field(
        default=None,
        metadata={
            "help": "A model folder of the same architecture the direction is read from (a trained run's "
            "`dpo/model`): a refusing model's direction for a model that does not refuse; the threshold is still "
            "fitted on the evaluated model. None: the evaluated model's own direction."
        },
    )


@dataclass
class EvalConfig:
    """How policies are evaluated: the suites, their judges, generation and scoring settings, and the goals."""

    # Optional[...]: OmegaConf reads no `X | None` inside a dict's value type.
    suites: dict[str, Optional[SuiteConfig]] = field(  # noqa: UP045
        default_factory=dict, metadata={"help": "Name -> suite; `eval.suites.<name>=null` removes one."}
    )
    judges: dict[str, Any] = field(
        default_factory=lambda: {"rules": {"kind": "rules"}},
        metadata={
            "help": "Name -> judge, typed in `validate` so that a whole judge can be added on the command line: "
            "+eval.judges.guard={kind: classifier, path: /models/guard, label_map: {unsafe: compliance, "
            "safe: refusal}}.",
            "schema": JudgeConfig,
        },
    )
    judge: str = field(
        default="rules",
        metadata={"help": "The key of eval.judges that judges every refusal suite naming no judge of its own."},
    )
    second_judge: str | None = field(
        default=None,
        metadata={
            "help": "A key of eval.judges that also judges every refusal suite: its rates are recorded as "
            "judge2/<rate>/<suite>, with judge2/disagreement/<suite> (share of replies whose refusal verdicts "
            "differ), and shown beside the chosen judge's in report.md, so a difference between runs can be read "
            "against the judges' own."
        },
    )
    benchmarks_dir: str = field(
        default="../shared/benchmarks", metadata={"help": "Where the public benchmarks' files are read from."}
    )
    max_new_tokens: int = field(default=48, metadata={"help": "Longest reply generated."})
    batch_size: int = field(default=64, metadata={"help": "Prompts generated at once."})
    score_batch_size: int = field(
        default=32, metadata={"help": "Rows scored at once by likelihood (bias and preference suites, KL)."}
    )
    seed: int = field(
        default=0,
        metadata={"help": "Seed of the sample `limit` draws on bias and preference suites (the same in every run)."},
    )
    kl_suite: str | None = field(
        default=None, metadata={"help": "A refusal suite whose prompts measure KL to the reference; None: no KL."}
    )
    reference: str | None = field(
        default=None, metadata={"help": "Path or Hub id of the reference model; None: the run's starting model."}
    )
    reward_model: str | None = field(
        default=None,
        metadata={"help": "A sequence-classification reward model: mean reward, win rate, RM accuracy."},
    )
    win_rate_suite: str | None = field(
        default=None,
        metadata={
            "help": "A refusal suite on which the reward model compares policy and reference (needs reward_model)."
        },
    )
    dpo_beta: float = field(
        default=II("oc.select:algo.dpo.beta,0.1"),
        metadata={
            "help": "beta of the implicit reward beta * log(policy / reference) on preference suites. By default it "
            "follows `algo.dpo.beta` (0.1 where the config has no dpo stage); set it to decouple them."
        },
    )
    examples: int = field(default=3, metadata={"help": "Benign replies quoted in report.md."})
    steering: SteeringConfig = field(
        default_factory=SteeringConfig,
        metadata={
            "help": "A comparison baseline, not alignment: refusal suites' replies (and KL) come from the model with "
            "a refusal direction added (steering.py); eval/steered_rate/<suite>: the share of prompts steered."
        },
    )
    targets: list[TargetConfig] = field(
        default_factory=list, metadata={"help": "Goals report.md checks the last evaluation against (met / missed)."}
    )


def type_eval(e: DictConfig) -> None:
    """Remove the suites and judges set to null, type each judge against JudgeConfig, and give each refusal suite
    that names no judge `eval.judge`, in place."""
    for group in ("suites", "judges"):
        for name in [n for n, v in e[group].items() if v is None]:
            del e[group][name]
    for name, node in e.judges.items():
        e.judges[name] = typed(node, JudgeConfig, f"eval.judges.{name}", "a mapping like {kind: rules}")
    for suite in e.suites.values():
        if suite.get("kind", "refusal") == "refusal" and suite.get("judge") is None:
            suite.judge = e.get("judge", "rules")


def check_eval(e: DictConfig, in_pipeline: bool) -> None:
    """`in_pipeline`: the pipeline has an eval stage, which needs suites."""
    suites = dict(e.suites)
    for name in ("max_new_tokens", "batch_size", "score_batch_size"):
        positive(e, name, "eval")
    if in_pipeline:
        check(bool(suites), "eval.suites", "the pipeline has an eval stage but no suites are configured.")
    for name, s in suites.items():
        key = f"eval.suites.{name}"
        choice(s, "kind", key)
        if s.kind == "refusal":
            choice(s, "expect", key)
            check(
                s.judge in e.judges,
                f"{key}.judge",
                f"no judge '{s.judge}' under eval.judges (have: {', '.join(e.judges)}).",
            )
        if s.limit is not None:
            check(s.limit > 0, f"{key}.limit", f"must be positive or null, got {s.limit}.")
        if s.kind in ("bbq", "crows_pairs"):
            check(bool(s.presentations), f"{key}.presentations", "name at least one presentation.")
            allowed = BBQPresentation if s.kind == "bbq" else CrowsPresentation
            for p in s.presentations:
                one_of(p, get_args(allowed), f"{key}.presentations")
    for name, j in e.judges.items():
        _check_judge(j, f"eval.judges.{name}")
    if e.second_judge is not None:
        check(
            e.second_judge in e.judges,
            "eval.second_judge",
            f"no judge '{e.second_judge}' under eval.judges (have: {', '.join(e.judges)}).",
        )
    refusal_suites = [n for n, s in suites.items() if s.kind == "refusal"]
    for key in ("kl_suite", "win_rate_suite"):
        check(
            e[key] is None or e[key] in refusal_suites,
            f"eval.{key}",
            f"got {e[key]!r}, expected one of the refusal suites {refusal_suites}.",
        )
    if e.win_rate_suite is not None:
        check(e.reward_model is not None, "eval.reward_model", "eval.win_rate_suite needs a reward model.")
    check(e.dpo_beta > 0, "eval.dpo_beta", f"must be positive, got {e.dpo_beta}.")
    if e.steering.enabled:
        check(
            e.steering.layer >= 0, "eval.steering.layer", f"a decoder layer index (0 or more), got {e.steering.layer}."
        )
        check(e.steering.alpha != 0, "eval.steering.alpha", "0 adds nothing; eval.steering.enabled=false turns it off.")
        source = e.steering.direction_from
        check(
            source is None or (Path(source) / "config.json").is_file(),
            "eval.steering.direction_from",
            f"'{source}' is not a model folder (no config.json in it).",
        )
    for i, t in enumerate(e.targets):
        check_target(f"eval.targets[{i}]", t)


def _check_judge(j: DictConfig, key: str) -> None:
    choice(j, "kind", key, JudgeConfig)
    if j.kind in ("classifier", "reward"):
        check(bool(j.path), f"{key}.path", f"a {j.kind} judge needs a model folder or Hub id.")
    for i, path in enumerate(j.labels or []):
        check(Path(path).is_file(), f"{key}.labels[{i}]", f"no label file at '{path}'.")
    if j.kind == "classifier":
        hint = "map each of the classifier's labels to refusal or compliance, e.g. {unsafe: compliance}."
        check(bool(j.label_map), f"{key}.label_map", hint)
        for label, verdict in j.label_map.items():
            one_of(verdict, VERDICTS, f"{key}.label_map.{label}")
    choice(j, "above_threshold", key, JudgeConfig)
    shipped = sorted(
        p.name.removesuffix(".yaml") for p in (resources.files("alignlab") / "assets" / "judges").iterdir()
    )
    for name in j.model_rules:
        one_of(name, tuple(shipped), f"{key}.model_rules")


def check_target(key: str, t: DictConfig) -> None:
    """A target names a metric and bounds it by numbers or `before`. One whose suite the run lacks (removed with
    `eval.suites.<name>=null`, or its benchmark files absent) is reported as not measured, not refused."""
    key = f"{key} ({t.metric})"
    check(t.metric.startswith(("safety/", "bias/", "eval/")), key, "expected a safety/, bias/ or eval/ metric.")
    check(t.min is not None or t.max is not None, key, "set min or max (a number or 'before').")
    for bound in ("min", "max"):
        v = t[bound]
        check(
            v is None or v == "before" or (isinstance(v, (int, float)) and not isinstance(v, bool)),
            f"{key}.{bound}",
            f"expected a number or 'before', got {v!r}.",
        )
    check(t.slack >= 0, f"{key}.slack", f"must be 0 or more (it loosens a 'before' bound), got {t.slack}.")
