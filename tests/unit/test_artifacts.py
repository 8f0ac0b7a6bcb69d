"""Atomic files and checkpoint markers."""

from __future__ import annotations

import json

import pytest

from alignlab.artifacts import (
    COMPLETE,
    atomic_write_json,
    checkpoint_damage,
    is_done,
    last_complete_checkpoint,
    mark_done,
    write_complete,
)


def test_incomplete_checkpoints_are_set_aside(tmp_path):
    ckpts = tmp_path / "checkpoints"
    for step, complete in ((4, True), (8, True), (12, False)):
        (ckpts / f"checkpoint-{step}").mkdir(parents=True)
        (ckpts / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"x")
        if complete:
            write_complete(ckpts / f"checkpoint-{step}", step)
    assert last_complete_checkpoint(ckpts).name == "checkpoint-8"
    assert {p.name for p in ckpts.iterdir()} == {"checkpoint-4", "checkpoint-8"}
    (aside,) = (tmp_path / "checkpoints-aside").iterdir()  # out of the folder whose checkpoint-* rotation deletes
    assert aside.name.startswith("checkpoint-12.incomplete-")
    assert (aside / "model.safetensors").read_bytes() == b"x"  # kept, not deleted


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt is missing"),
        (lambda c: (c / "model.safetensors").write_bytes(b"xy"), "model.safetensors has 2 bytes, its manifest says 3"),
        (
            lambda c: (c / "model.safetensors").write_bytes(b"xyz"[::-1]),
            "model.safetensors changed after it was written",
        ),
        (lambda c: (c / COMPLETE).write_text('{"step": 8, "fi'), "its COMPLETE marker is unreadable"),
    ],
)
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage, said):
    ckpts = tmp_path / "checkpoints"
    for step in (4, 8):
        ckpt = ckpts / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "model.safetensors").write_bytes(b"xyz")
        (ckpt / "optimizer.pt").write_bytes(b"state")
        write_complete(ckpt, step)
    assert checkpoint_damage(ckpts / "checkpoint-8") is None
    damage(ckpts / "checkpoint-8")
    assert last_complete_checkpoint(ckpts).name == "checkpoint-4"
    out = capsys.readouterr().out
    assert "checkpoint-8 cannot be resumed from" in out and said in out, out
    (aside,) = (tmp_path / "checkpoints-aside").iterdir()
    assert aside.name.startswith("checkpoint-8.damaged-") and (aside / COMPLETE).is_file()


def test_a_marker_of_an_older_alignlab_still_counts(tmp_path):
    ckpt = tmp_path / "checkpoints" / "checkpoint-3"
    ckpt.mkdir(parents=True)
    (ckpt / COMPLETE).write_text("3\n")  # before manifests: the step only
    assert last_complete_checkpoint(tmp_path / "checkpoints") == ckpt


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"a": 1})
    atomic_write_json(tmp_path / "m.json", {"a": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_done_marker(tmp_path):
    assert not is_done(tmp_path)
    mark_done(tmp_path)
    assert is_done(tmp_path)


def test_only_rank_zero_tracks(tmp_path, monkeypatch):
    from alignlab.config import compose_config, validate
    from alignlab.tracking import Tracker

    monkeypatch.setenv("RANK", "1")
    tracker = Tracker(validate(compose_config(["experiment=tiny"])), tmp_path)
    assert tracker.run is None and not (tmp_path / "wandb_id").exists()
    tracker.log("dpo", {"loss": 1.0}, 1)  # a no-op, not an error


def test_redaction_targets_credentials_not_tokenizer_settings(monkeypatch):
    from alignlab.tracking import redact

    monkeypatch.setenv("WANDB_API_KEY", "sk-123")
    cfg = {
        "hub_token": "hf_x",
        "api_key": "k",
        "eos_token": "<|im_end|>",
        "max_new_tokens": 48,
        "nested": [{"password": "p", "group": "sk-123", "name": "ok"}],
    }
    assert redact(cfg) == {
        "hub_token": "***",
        "api_key": "***",
        "eos_token": "<|im_end|>",
        "max_new_tokens": 48,
        "nested": [{"password": "***", "group": "***", "name": "ok"}],
    }


def test_code_changed_warns_only_when_finished_stages_came_from_other_code(tmp_path):
    from alignlab.pipeline import code_changed

    run = tmp_path / "run"
    (run / "sft").mkdir(parents=True)
    (run / "run_info.json").write_text(json.dumps({"git": {"alignlab": "aaa"}}))
    assert code_changed(run, ["sft", "dpo"], "bbb") is None  # nothing finished yet: nothing is reused
    mark_done(run / "sft")
    said = code_changed(run, ["sft", "dpo"], "bbb")
    assert "commit aaa" in said and "now at bbb" in said and "(sft)" in said and "run.id=" in said
    assert code_changed(run, ["sft", "dpo"], "aaa") is None
    assert code_changed(run, ["sft", "dpo"], None) is None  # not a git checkout: nothing to compare
    (run / "run_info.json").write_text(json.dumps({"git": {"alignlab": None}}))
    assert code_changed(run, ["sft", "dpo"], "bbb") is None
