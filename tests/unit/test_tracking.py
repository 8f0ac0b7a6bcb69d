"""The W&B run as users know it (tracking.py), on a real offline run read back from its file: job_type and tags,
one key per metric (no `eval/eval/...`), and every evaluation under `evaluation/<metric>` at its phase, so before
and after overlay in one chart."""

from __future__ import annotations

from wandb_reader import history, run_record

from alignlab.config import compose_config, validate
from alignlab.tracking import Tracker, stage_key


def test_stage_keys_are_not_prefixed_twice():
    assert stage_key("dpo", "rewards/chosen") == "dpo/rewards/chosen"
    assert stage_key("eval", "eval/kl_to_ref") == "eval/kl_to_ref"
    assert stage_key("eval_after", "eval/kl_to_ref") == "eval_after/eval/kl_to_ref"


def test_an_offline_run_overlays_before_and_after(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = validate(
        compose_config(["experiment=safety-smollm", "logger.mode=offline", "logger.tags=[mine]", "name=track"])
    )
    tracker = Tracker(cfg, tmp_path)
    tracker.stage_result("eval_before", {"safety/refusal_rate/harmbench": 0.2, "wall_seconds": 3.0}, phase=0)
    tracker.stage_result("dpo", {"global_step": 12, "final_step_loss": 0.4})
    tracker.stage_result("eval_after", {"safety/refusal_rate/harmbench": 0.8, "wall_seconds": 4.0}, phase=1)
    tracker.log("eval", {"eval/kl_to_ref": 1.5}, 0)
    print("a console line for the Logs tab")
    tracker.finish()

    (path,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    run = run_record(path)
    assert run.job_type == "safety"
    assert list(run.tags) == ["mine", "track", "eval", "pairs", "sft", "dpo"]
    rows = history(path)
    phases = [
        (r["evaluation/phase"], r["evaluation/safety/refusal_rate/harmbench"]) for r in rows if "evaluation/phase" in r
    ]
    assert phases == [(0, 0.2), (1, 0.8)]  # one key, two phases
    keys = {k for r in rows for k in r}
    assert "eval/kl_to_ref" in keys and not any(k.startswith("eval/eval/") for k in keys)
    assert "dpo/final_step_loss" in keys and "evaluation/final_step_loss" not in keys
    logs = list(tmp_path.glob("wandb/offline-run-*/files/output.log"))
    assert logs and "a console line for the Logs tab" in logs[0].read_text()
