"""The SFT and DPO stages as built from config: the loss TRL computes for us equals a hand-written one, and both
stages tokenize a prompt and its reply identically (same boundary, end-of-turn token kept)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from stage_fixtures import context
from transformers import AutoModelForCausalLM

from alignlab import data as data_lib
from alignlab.stages import dpo, sft


def sequence_logps(model, batch):
    """Sum of log p(token) over completion tokens: the textbook definition, written out."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["input_ids"][:, 1:]
    mask = batch["completion_mask"][:, 1:].float()
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1), mask.sum(-1)


def reference_loss(loss_type, beta, policy, ref, batch):
    with torch.no_grad():
        pol, n = sequence_logps(policy, batch)
        ref_logps, _ = sequence_logps(ref, batch)
    pc, pr = pol.chunk(2)
    rc, rr = ref_logps.chunk(2)
    nc, nr = n.chunk(2)
    if loss_type == "sigmoid":  # DPO, Rafailov et al. 2023, eq. 7
        return -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()
    # IPO, Azar et al. 2023, eq. 17, with log-ratios averaged per token (TRL's convention, agreed with the authors)
    return ((((pc - rc) / nc) - ((pr - rr) / nr)) - 1 / (2 * beta)).pow(2).mean()


@pytest.mark.parametrize(
    ("loss_type", "beta", "precompute"),
    [
        ("sigmoid", 0.1, True),
        ("sigmoid", 0.5, False),
        ("ipo", 0.1, False),
        ("ipo", 1.0, True),
    ],
)
def test_dpo_loss_matches_hand_written(tmp_path, cache_dir, loss_type, beta, precompute):
    """With precomputed reference log-probabilities (the default: from the cache, scored with the prompt shared) and
    with a reference model run at every step."""
    ctx = context(
        tmp_path,
        "dpo",
        "pipeline=dpo",
        f"algo.dpo.loss_type={loss_type}",
        f"algo.dpo.beta={beta}",
        f"algo.dpo.precompute_ref_log_probs={str(precompute).lower()}",
    )
    trainer = dpo.build_trainer(ctx)
    assert (trainer.ref_model is None) == precompute and trainer.share_prompt
    ref = trainer.ref_model or AutoModelForCausalLM.from_pretrained(ctx.input_model, attn_implementation="eager")
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy away from the reference so the log-ratios are not zero
        for p in trainer.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    trainer.model.eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    with torch.no_grad():
        ours = trainer.compute_loss(trainer.model, batch)
    expected = reference_loss(loss_type, beta, trainer.model, ref, batch)
    assert expected.item() > 1e-3
    assert ours.item() == pytest.approx(expected.item(), abs=1e-5)


def test_loss_combination_reaches_trl(tmp_path, cache_dir):
    ctx = context(
        tmp_path,
        "dpo",
        "pipeline=dpo",
        "algo.dpo.loss_type=[sigmoid,sft]",
        "algo.dpo.loss_weights=[1.0,0.5]",
        "algo.dpo.beta=0.2",
        "algo.dpo.label_smoothing=0.1",
    )
    trainer = dpo.build_trainer(ctx)
    assert trainer.loss_types == ["sigmoid", "sft"] and trainer.loss_weights == [1.0, 0.5]
    assert trainer.beta == 0.2 and trainer.label_smoothing == 0.1


def test_lora_dpo_uses_the_disabled_adapter_as_reference(tmp_path, cache_dir):
    ctx = context(tmp_path, "dpo", "pipeline=dpo", "model.lora.enabled=true", "model.lora.r=4")
    trainer = dpo.build_trainer(ctx)
    assert trainer.ref_model is None
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    assert 0 < trainable < total / 5


def test_sft_and_dpo_see_the_same_prompt_and_reply_tokens(tmp_path, cache_dir):
    sft_trainer = sft.build_trainer(context(tmp_path / "a", "sft"))
    dpo_trainer = dpo.build_trainer(context(tmp_path / "b", "dpo", "pipeline=dpo"))
    tokenizer = sft_trainer.processing_class
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for i in range(5):
        s, d = sft_trainer.train_dataset[i], dpo_trainer.train_dataset[i]
        n = len(d["prompt_ids"])
        assert s["input_ids"][:n] == d["prompt_ids"], "prompt tokens differ between SFT and DPO"
        masked = s["labels"].index(next(t for t in s["labels"] if t != -100))
        assert masked == n, "SFT's loss starts somewhere other than DPO's reply"
        reply = s["input_ids"][n:]
        assert reply[: len(d["chosen_ids"])] == d["chosen_ids"], "SFT's reply is not DPO's chosen reply"
        assert end_of_turn in d["chosen_ids"] and end_of_turn in d["rejected_ids"], "reply lost its end-of-turn token"
        assert tokenizer.decode(d["prompt_ids"]).endswith("<|im_start|>assistant\n")


def test_sft_rows_default_to_chosen_replies(tmp_path, cache_dir):
    ctx = context(tmp_path, "sft")
    assert ctx.sft_rows == data_lib.as_sft(ctx.pairs)
    assert ctx.sft_rows[0]["completion"] == ctx.pairs[0]["chosen"]


def padded_tokens(order: list[int], lengths: list[int], batch: int) -> int:
    return sum(batch * max(lengths[i] for i in order[k : k + batch]) for k in range(0, len(order), batch))


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_group_by_length_batches_rows_of_like_length_reproducibly(tmp_path, cache_dir, stage):
    """Every row once per epoch, the same order for the same seed and epoch (a resumed run's), another order next
    epoch, and less padding than TRL's uniformly random batches of the same rows."""
    extra = ["pipeline=dpo"] if stage == "dpo" else []
    module = sft if stage == "sft" else dpo

    def trainer(folder: str, group: bool):
        knobs = [f"algo.{stage}.group_by_length={str(group).lower()}", f"algo.{stage}.batch_size=2"]
        return module.build_trainer(context(tmp_path / folder, stage, *extra, *knobs))

    grouped, plain = trainer("g", True), trainer("p", False)
    ds = grouped.train_dataset
    if stage == "sft":
        lengths = [len(ids) for ids in ds["input_ids"]]
    else:
        assert grouped.share_prompt, "on a CPU a pair is one row of prompt, chosen and rejected"
        lengths = [len(p) + len(c) + len(r) for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"])]
    assert len(set(lengths)) > 2, "the tiny rows must differ in length for this test to mean anything"
    sampler = grouped._get_train_sampler()
    first = list(sampler)
    assert sorted(first) == list(range(len(ds)))
    assert list(grouped._get_train_sampler()) == first, "the same seed and epoch must give the same batches"
    grouped.state.epoch = 1.0
    assert list(sampler) != first, "each epoch should draw new batches"
    random_order = list(plain._get_train_sampler())
    assert sorted(random_order) == list(range(len(ds)))
    assert padded_tokens(first, lengths, 2) < padded_tokens(random_order, lengths, 2)
