"""`data`: the preference pairs and SFT rows a run trains on (data/ reads them) and the bias pairs mixed in.
Group files: conf/data/."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from omegaconf import MISSING, DictConfig

from alignlab.config.checks import check, choice, typed

DataFormat = Literal["auto", "conversational", "plain", "hh", "pku", "prompt_completion", "messages"]
OnOverlength = Literal["truncate", "drop", "error"]
OnDuplicate = Literal["drop", "keep", "error"]
PkuChooseBy = Literal["better", "safer"]
# data/bias.py's KINDS and AGREEING_REJECTED (tests/unit/config/test_config_schema.py keeps them equal)
BiasKind = Literal["ambiguous", "disambiguated", "open"]
AgreeingRejected = Literal["abstain", "mixed", "named", "balanced"]
BiasPresentation = Literal["free", "listed", "lettered"]  # data/bias.py PRESENTATIONS
DATA_FORMATS = get_args(DataFormat)
BIAS_KINDS = get_args(BiasKind)
AGREEING_REJECTED = get_args(AgreeingRejected)


@dataclass
class SourceConfig:
    """One data source (`data.preference`, `data.sft`, and the preference suites of `eval`), read by data/."""

    path: str = field(
        default=MISSING,
        metadata={
            "help": "A file (.jsonl .json .csv .parquet), a save_to_disk folder, a data folder or a Hub id; "
            "`stage:<name>`: the pairs that pairs stage of this run writes."
        },
    )
    format: str = field(
        default="auto",
        metadata={"help": "How rows are laid out; auto: detected from the columns.", "choices": DataFormat},
    )
    split: str = field(default="train", metadata={"help": "Split of a Hub dataset or dataset folder."})
    subset: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    revision: str | None = field(default=None, metadata={"help": "Hub dataset revision."})
    pku_choose_by: str = field(
        default="better",
        metadata={
            "help": "PKU-SafeRLHF: the chosen reply is the more helpful (better) or the safer one.",
            "choices": PkuChooseBy,
        },
    )
    max_rows: int | None = field(default=None, metadata={"help": "Read at most this many rows; None: all of them."})
    columns: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "Columns to read under the names alignlab expects, {expected: the file's}, e.g. {prompt: "
            "question, chosen: good, rejected: bad}; applied to every row before the format is detected."
        },
    )


# Every column some data format reads (data/formats.py): what `columns` may map a file's columns to.
COLUMNS = (
    "prompt",
    "chosen",
    "rejected",
    "completion",
    "messages",
    "chosen_safe",
    "rejected_safe",
    "response_0",
    "response_1",
    "better_response_id",
    "safer_response_id",
    "is_response_0_safe",
    "is_response_1_safe",
)


@dataclass
class BiasMixConfig:
    """Bias pairs from the project's templates (data/bias.py), mixed into the on-policy pairs by the pairs stage."""

    templates: str = field(
        default="pkg://alignlab/assets/bias/templates.yaml", metadata={"help": "The templates file."}
    )
    ratio: float = field(default=0.5, metadata={"help": "Bias pairs per on-policy safety pair."})
    kinds: dict[str, float] = field(
        default_factory=lambda: {"ambiguous": 0.4, "disambiguated": 0.4, "open": 0.2},
        metadata={
            "help": "Weight of each kind of question among the bias pairs; 0 leaves a kind out.",
            "choices": BiasKind,
            "choices_of": "keys",
        },
    )
    agreeing_rejected: str = field(
        default="abstain",
        metadata={
            "help": "The rejected reply of a disambiguated pair whose evidence agrees with the stereotype: abstain; "
            "mixed (half of them abstain, half name the other person with the right reply's reason); named (all of "
            "them name the other person); balanced (in every context, whichever way its evidence goes, one of its "
            "two pairs' rejected replies abstains and the other names the wrong person).",
            "choices": AgreeingRejected,
        },
    )
    presentations: dict[str, float] = field(
        default_factory=lambda: {"free": 1.0},
        metadata={
            "help": "Weight of each way a two-person question is put, dealt so each gets its share: free (the "
            "question alone), listed (the three options after it), lettered (options A-C, replies opening with the "
            "letter). In the project's own wordings, so that evaluation's BBQ presentations stay held out.",
            "choices": BiasPresentation,
            "choices_of": "keys",
        },
    )
    sft: bool = field(
        default=False,
        metadata={
            "help": "Whether the SFT stage (trained on chosen replies when data.sft is unset) sees them too. false: "
            "DPO only; with SFT, SmolLM2 copied their short template answers into replies to unrelated requests."
        },
    )
    sft_share: dict[str, float] = field(
        default_factory=lambda: {"ambiguous": 1.0, "disambiguated": 1.0, "open": 1.0},
        metadata={
            "help": "With sft, the share of each kind's pairs whose chosen replies SFT sees, in whole scenes spread "
            "over the dimensions (data/mix.py, `_kept_scenes`); 0 leaves the kind out. SFT imitates them with nothing "
            "to contrast: on the ambiguous kind's \"cannot be determined\", SmolLM2 learned to abstain where BBQ's "
            "context names the person too. DPO, which contrasts each with its rejected reply, sees all of them.",
            "choices": BiasKind,
            "choices_of": "keys",
        },
    )


@dataclass
class DataConfig:
    """What the training stages read. `preference`, `sft` and `bias` are typed against their schemas in `validate`
    (OmegaConf cannot turn a None structured node into a mapping from the command line, so `data.sft={path:
    sft.jsonl}` would fail if they were typed here)."""

    name: str = field(default=MISSING, metadata={"help": "A name for the data set, shown in reports."})
    preference: Any = field(
        default=None, metadata={"help": "Preference pairs (prompt, chosen, rejected).", "schema": SourceConfig}
    )
    sft: Any = field(
        default=None,
        metadata={"help": "SFT rows; None: SFT trains on the chosen replies of `preference`.", "schema": SourceConfig},
    )
    max_length: int = field(default=512, metadata={"help": "Tokens of prompt + reply, after the chat template."})
    on_overlength: str = field(
        default="truncate",
        metadata={
            "help": "A row longer than max_length is kept for the trainer to truncate (a prompt that fills "
            "max_length by itself is first cut from its start to half of it, so the reply keeps the rest), dropped, "
            "or an error that names it.",
            "choices": OnOverlength,
        },
    )
    on_duplicate: str = field(
        default="drop",
        metadata={
            "help": "A row identical to an earlier one is dropped, kept, or stops the run with an error naming it.",
            "choices": OnDuplicate,
        },
    )
    bias: Any = field(
        default=None,
        metadata={
            "help": "Bias pairs mixed into the on-policy pairs by the pairs stage; None: none.",
            "schema": BiasMixConfig,
        },
    )


def type_data(d: DictConfig) -> None:
    """Type `preference`, `sft` and `bias` against their schemas, in place."""
    for part in ("preference", "sft"):
        if d.get(part) is None:
            continue
        d[part] = typed(d[part], SourceConfig, f"data.{part}", "a source like {path: pairs.jsonl}")
        check(bool(d[part].path), f"data.{part}.path", "set the file, folder or Hub id to read.")
    if d.get("bias") is not None:
        d.bias = typed(d.bias, BiasMixConfig, "data.bias", "a mapping like {ratio: 0.5}")


def check_data(cfg: DictConfig, stages: list[str]) -> None:
    d = cfg.data
    choice(d, "on_overlength", "data")
    choice(d, "on_duplicate", "data")
    check(d.max_length > 0, "data.max_length", f"must be positive, got {d.max_length}.")
    if d.bias is not None:
        check_bias_mix(cfg, stages)
    for part in ("preference", "sft"):
        if d[part] is not None:
            choice(d[part], "format", f"data.{part}")
            choice(d[part], "pku_choose_by", f"data.{part}")
            rows = d[part].max_rows
            check(rows is None or rows > 0, f"data.{part}.max_rows", f"must be positive or null (all), got {rows}.")
            for want, have in d[part].columns.items():
                check(
                    want in COLUMNS,
                    f"data.{part}.columns.{want}",
                    f"'{want}' is no column alignlab reads; map the file's columns to some of: {', '.join(COLUMNS)}.",
                )
                check(bool(str(have).strip()), f"data.{part}.columns.{want}", "name the file's column to read.")


def check_bias_mix(cfg: DictConfig, stages: list[str]) -> None:
    mix, kinds = cfg.data.bias, list(BIAS_KINDS)
    check(mix.ratio > 0, "data.bias.ratio", f"must be positive (bias pairs per safety pair), got {mix.ratio}.")
    weights = dict(mix.kinds)
    check(
        set(weights) <= set(kinds) and all(w >= 0 for w in weights.values()) and sum(weights.values()) > 0,
        "data.bias.kinds",
        f"expected non-negative weights for some of {kinds}, got {weights}.",
    )
    check(
        mix.agreeing_rejected in AGREEING_REJECTED,
        "data.bias.agreeing_rejected",
        f"expected one of {list(AGREEING_REJECTED)}, got {mix.agreeing_rejected!r}.",
    )
    ways = dict(mix.presentations)
    check(
        set(ways) <= set(get_args(BiasPresentation)) and all(w >= 0 for w in ways.values()) and sum(ways.values()) > 0,
        "data.bias.presentations",
        f"expected weights >= 0, some above 0, for some of {list(get_args(BiasPresentation))}, got {ways}.",
    )
    share = dict(mix.sft_share)
    check(
        set(share) <= set(kinds) and all(0 <= s <= 1 for s in share.values()),
        "data.bias.sft_share",
        f"expected shares in [0, 1] for some of {kinds}, got {share}.",
    )
    if any(s < 1 for s in share.values()):
        check(mix.sft, "data.bias.sft_share", "is below 1 but data.bias.sft is false, so SFT sees no bias pairs.")
        mixed = [k for k, w in weights.items() if w > 0]
        check(
            any(share.get(k, 1) > 0 for k in mixed),
            "data.bias.sft_share",
            f"{share} leaves every mixed kind out of SFT; say data.bias.sft=false for that.",
        )
    check(
        any(cfg.algo[s].kind == "pairs" for s in stages),
        "data.bias",
        f"bias pairs are mixed in by a pairs stage; this pipeline has none (stages: {stages}).",
    )
