"""The metrics a report knows: which way each is better (the bold cell), what it means (README.md), and the
default columns."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_METRICS = (
    "safety/harmful_content_rate/bundled_harmful",
    "safety/harmful_content_rate/harmbench",
    "safety/refusal_rate/bundled_harmful",
    "safety/refusal_rate/harmbench",
    "safety/over_refusal_rate/bundled_benign",
    "safety/over_refusal_rate/xstest_safe",
    "safety/helpful_rate/bundled_benign",
    "safety/helpful_rate/xstest_safe",
    "bias/crows_pairs_stereotype_pct",
    "bias/bbq_ambig_accuracy",
    "eval/kl_to_ref",
    "dpo/final/rewards/accuracies",
)
HARM = "safety/harmful_content_rate/"
REFUSAL = "safety/refusal_rate/"
LEGACY_HARM = "safety/harmful_compliance_rate/"  # runs recorded before the rename: share of harmful prompts not refused
OVER_REFUSAL = "safety/over_refusal_rate/"
KL = "eval/kl_to_ref"


@dataclass(frozen=True)
class Direction:
    """Which way a metric is better (it decides the bold cell of a column) and what it measures (README.md)."""

    pattern: str  # searched in the key, so `eval_after/safety/...` and `safety/...` match alike
    better: str  # "lower", "higher", or "closer to <target>"
    meaning: str

    def badness(self, value: float) -> float:
        """What the best group minimizes."""
        if self.better == "higher":
            return -value
        if self.better.startswith("closer to "):
            return abs(value - float(self.better.removeprefix("closer to ")))
        return value

    def mark(self, latex: bool = False) -> str:
        """The column header's arrow."""
        if self.better.startswith("closer to "):
            target = self.better.removeprefix("closer to ")
            return rf"($\to$ {target})" if latex else f"→{target}"
        up = self.better == "higher"
        return (r"$\uparrow$" if up else r"$\downarrow$") if latex else ("↑" if up else "↓")


# First match wins: the BBQ bias score before accuracies, PPO's objective/kl before losses.
DIRECTIONS = (
    Direction(
        r"(safety|judge2)/harmful_content_rate/",
        "lower",
        "share of the suite's harmful prompts whose reply gives or starts the harmful content (HarmBench's attack "
        "success), a fraction",
    ),
    Direction(  # the name runs recorded before harmful_content_rate existed (experiments/dpo-loss-beta/runs)
        r"safety/harmful_compliance_rate/",
        "lower",
        "runs recorded before the judge read harmful content: share of harmful prompts not refused (1 - "
        "refusal_rate under the rule judge), a fraction",
    ),
    Direction(
        r"(safety|judge2)/refusal_rate/",
        "higher",
        "share of the suite's harmful prompts the model refused (fully or partly), a fraction",
    ),
    Direction(
        r"(safety|judge2)/evasive_rate/",
        "lower",
        "share of the suite's harmful prompts whose reply neither refuses nor gives the harmful content (a "
        "warning only, an evasion, junk), a fraction",
    ),
    Direction(
        r"(safety|judge2)/over_refusal_rate/",
        "lower",
        "share of the suite's benign prompts the model refused (fully or partly: XSTest's count), a fraction",
    ),
    Direction(
        r"(safety|judge2)/helpful_rate/",
        "higher",
        "share of the suite's benign prompts whose reply attempts the task, a fraction",
    ),
    Direction(
        r"safety/degenerate_rate/",
        "lower",
        "share of the suite's replies that are empty, not text or one word looped (evaluation/degenerate.py); the "
        "judge's rates count them too, as it reads them, a fraction",
    ),
    Direction(
        r"judge2/disagreement/",
        "lower",
        "share of the suite's replies whose refusal verdicts the chosen and the second judge differ on",
    ),
    Direction(
        r"kl_to_ref$",
        "lower",
        "mean over benign prompts of the summed per-token KL divergence of the policy to "
        "the reference (starting) model on its own greedy replies, nats",
    ),
    Direction(
        r"_stereotype_pct(/|$)",
        "closer to 50",
        "CrowS-Pairs: % of sentence pairs where the model finds the "
        "more stereotypical sentence more likely; 50 is no preference, so the best is the closest to 50 "
        "(ranked by |x - 50|), not the lowest",
    ),
    Direction(
        r"_bias_score(/|$)",
        "closer to 0",
        "BBQ bias score (-1..1): 0 is answers that do not lean towards the stereotype (ranked by |x|)",
    ),
    Direction(
        r"_disambig_unknown_rate(_aligned|_conflicting)?(/|$)",
        "lower",
        "BBQ: share of disambiguated items "
        "answered 'unknown' although the context names the person (the rest of the errors name the wrong one); "
        "_aligned / _conflicting: over the items whose right answer follows / goes against the stereotype",
    ),
    Direction(
        r"_unknown_gap(/|$)",
        "higher",
        "BBQ: ambiguous accuracy minus the disambiguated 'unknown' rate (-1..1): how much more the model abstains "
        "where the context leaves the answer open than where it names the person; 0 is abstaining regardless of "
        "the context",
    ),
    Direction(
        r"_(ambig|disambig)_accuracy(_aligned|_conflicting)?(/|$)",
        "higher",
        "BBQ accuracy (fraction); in "
        "ambiguous contexts the right answer is 'unknown', so a model relying on stereotypes scores low; "
        "_aligned / _conflicting: disambiguated items whose right answer follows / goes against the stereotype",
    ),
    Direction(
        r"rewards/accuracies$",
        "higher",
        "DPO: share of pairs whose implicit reward (beta log policy/reference) ranks chosen above rejected",
    ),
    Direction(r"rewards/margins$", "higher", "DPO: mean implicit reward margin, chosen minus rejected"),
    Direction(
        r"eval/(dpo_reward_accuracy|dpo_reward_margin|rm_accuracy)/",
        "higher",
        "held-out preference pairs: accuracy or margin of the implicit DPO reward or the reward model",
    ),
    Direction(
        r"eval/reward(/|_win_rate$)",
        "higher",
        "reward-model score of the replies, or the share of prompts where it prefers the policy's reply",
    ),
    Direction(
        r"objective/(scores|rlhf_reward)$", "higher", "PPO: reward-model score (rlhf_reward: minus the KL penalty)"
    ),
    Direction(r"objective/kl$", "lower", "PPO: KL of the policy to the reference on its own samples, nats"),
    Direction(r"final/(accuracy|margin)$", "higher", "reward or cost model: held-out pair accuracy or margin"),
    Direction(r"loss$", "lower", "training loss (last logged step, or the mean over training for train_loss)"),
)


def direction_of(metric: str) -> Direction | None:
    return next((d for d in DIRECTIONS if re.search(d.pattern, metric)), None)


# A training loss or a DPO implicit reward is in units its stage's objective sets: a DPO loss at beta 0.1 and at
# 0.3, or under sigmoid and IPO, are different numbers for the same fit, so no group is "best" across them.
OBJECTIVE_SCALED = re.compile(r"^(?P<stage>[^/]+)/(?:.*/)?(?:\w*loss|rewards/(?:margins|chosen|rejected))$")
OBJECTIVE_SETTINGS = ("kind", "loss_type", "loss_weights", "beta")


def scale_settings(metric: str) -> list[str]:
    """The config keys that set `metric`'s scale (`algo.<stage>.beta`, ...), which groups must share for one of them
    to be called best; none for a metric whose units do not depend on the objective."""
    m = OBJECTIVE_SCALED.match(metric)
    return [f"algo.{m['stage']}.{name}" for name in OBJECTIVE_SETTINGS] if m else []


@dataclass(frozen=True)
class Proportion:
    """A metric that is a share of items: its scale (1, or 100 for a percentage) and the key of the per-run number
    of items it counts (None where runs do not record it)."""

    scale: float
    count_key: str | None


SAFETY_RATE = re.compile(r"^(?P<stage>.*?)(?:safety|judge2)/(?:\w+_rate|disagreement)/(?P<suite>[^/]+)$")
CROWS_PCT = re.compile(r"^(?P<stage>.*?)bias/(?P<suite>[^/]+)_stereotype_pct$")
OTHER_SHARE = re.compile(r"(_stereotype_pct|_accuracy\w*|_rate|rewards/accuracies|final/accuracy)(/|$)")


def proportion_of(metric: str) -> Proportion | None:
    """Whether `metric` is a proportion, and where its item counts are: the safety rates count the suite's replies
    (`safety/n/<suite>`), CrowS-Pairs' stereotype % its pairs (`bias/n/<suite>`); accuracies and the other rates
    (BBQ's per condition, DPO's reward accuracy) are proportions whose counts runs do not record."""
    if m := SAFETY_RATE.match(metric):
        return Proportion(1.0, f"{m['stage']}safety/n/{m['suite']}")
    if m := CROWS_PCT.match(metric):
        return Proportion(100.0, f"{m['stage']}bias/n/{m['suite']}")
    if OTHER_SHARE.search(metric) and "bias_score" not in metric:
        return Proportion(100.0 if "_pct" in metric else 1.0, None)
    return None
