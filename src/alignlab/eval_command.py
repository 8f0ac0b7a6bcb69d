"""`alignlab eval model=<spec>[,<spec>...] [reference=<spec>] [eval=<group>] [overrides]`: evaluate checkpoints.

A spec is a `model/` config option (`smollm2-135m-instruct`), a model folder (a stage's merged `model/`, or a
LoRA checkpoint folder with `adapter_config.json`), or a Hub id. Each model is evaluated by an eval-only
pipeline (pipeline/eval.yaml: the same stage code as a training run's eval stages), in its own run folder
whose id includes a fingerprint of the model's files, so re-running the command reuses finished evaluations
and a retrained checkpoint at the same path is evaluated afresh. Then one table, a row per model, is printed
and written to `<run.root>/eval/comparison-<id>.md` (and `.json`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from alignlab import pipeline
from alignlab.artifacts import atomic_write_json, atomic_write_text
from alignlab.config import CONF_DIR, compose_config, validate
from alignlab.console import Console
from alignlab.data.sources import fingerprint
from alignlab.errors import ConfigError
from alignlab.evaluation.report import fmt, is_headline, standard_error
from alignlab.models import cache_root, resolve_model_path


def model_overrides(spec: str) -> list[str]:
    if (CONF_DIR / "model" / f"{spec}.yaml").is_file():
        return [f"model={spec}"]
    return ["model=hub", f"model.path={spec}"]


def split_specs(overrides: list[str]) -> tuple[list[str], str | None, list[str]]:
    """(model specs, reference spec, the other overrides) from the command line."""
    models, reference, rest = [], None, []
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "model":
            models += [v for v in value.split(",") if v]
        elif key == "reference":
            reference = value
        else:
            rest.append(item)
    if not models:
        raise ConfigError("Config error: alignlab eval needs model=<config option, model folder or Hub id>[,...].")
    return models, reference, rest


def resolve_spec(spec: str, rest: list[str]) -> str:
    """The local folder or Hub id a spec loads from (a wheel model is converted once, as in a run)."""
    cfg = validate(compose_config([*model_overrides(spec), "pipeline=eval", *rest]))
    return resolve_model_path(cfg.model, cache_root(cfg))


def config_for(spec: str, reference: str | None, rest: list[str]) -> DictConfig:
    overrides = [
        *model_overrides(spec),
        "pipeline=eval",
        "name=eval",
        *([f"eval.reference={reference}"] if reference else []),
        *rest,
    ]
    cfg = validate(compose_config(overrides))
    if cfg.run.id is not None:
        return cfg
    # the run id (set once a config is validated, hence the second composition) also hashes the model's files
    files = fingerprint(resolve_model_path(cfg.model, cache_root(cfg)))
    return validate(compose_config([*overrides, f"run.id={pipeline.run_id(cfg)}-{files[:8]}"]))


def evaluate_models(overrides: list[str], console: Any = None) -> dict[str, dict[str, Any]]:
    console = console or Console()
    specs, reference_spec, rest = split_specs(overrides)
    reference = resolve_spec(reference_spec, rest) if reference_spec else None
    configs = [config_for(spec, reference, rest) for spec in specs]  # every config is checked before any compute
    results = {}
    for spec, cfg in zip(specs, configs):
        results[spec] = pipeline.run(cfg, console)["eval"]
    rows = comparison_rows(results)
    key = hashlib.sha256(json.dumps([specs, reference, rest]).encode()).hexdigest()[:10]
    out = Path(configs[0].run.root).expanduser() / "eval" / f"comparison-{key}"
    command = " ".join(["alignlab", "eval", *overrides])
    atomic_write_text(out.with_suffix(".md"), markdown(rows, command, reference, results))
    atomic_write_json(out.with_suffix(".json"), {"command": command, "reference": reference, "models": results})
    console.model_comparison(rows, out.with_suffix(".md"))
    return results


def comparison_rows(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{metric: {model: value}} for the headline metrics, in a stable order, each safety rate followed by the same
    rate under `eval.second_judge` (judge2/...) where there is one."""
    keys = {k for m in results.values() for k in m if is_headline(k) or k.startswith("judge2/")}
    metrics = sorted(keys, key=lambda k: (k.replace("judge2/", "safety/", 1), k.startswith("judge2/")))
    return {k: {spec: m[k] for spec, m in results.items() if k in m} for k in metrics}


def markdown(
    rows: dict[str, dict[str, float]], command: str, reference: str | None, results: dict[str, dict[str, Any]]
) -> str:
    """The comparison table; a value whose suite gave a standard error (in the models' `results`) shows it (±)."""
    models = list(dict.fromkeys(spec for row in rows.values() for spec in row))
    lines = [
        "# alignlab eval: model comparison",
        "",
        f"- command: `{command}`",
        f"- reference for KL and implicit rewards: `{reference or 'each model itself'}`",
        "",
        "| metric | " + " | ".join(f"`{m}`" for m in models) + " |",
        "| --- | " + " | ".join("---:" for _ in models) + " |",
    ]
    for metric, row in rows.items():
        cells = (fmt(row.get(m), standard_error(results, m, metric)) for m in models)
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
