"""Our LM head (training/lm_head.py) against TRL's fused head, and prompt sharing against the unpacked rows: the same
per-token log-probabilities, statistics and gradients, on a tiny model in fp32."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import add_fused_lm_head

from alignlab.training import lm_head

OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs")


def batch(tokenizer, pairs):
    """A DPO batch as TRL's collator makes it: [prompt + chosen; prompt + rejected], right-padded."""
    rows = []
    for prompt, chosen, rejected in pairs:
        p = tokenizer(prompt)["input_ids"]
        rows.append(
            {
                "prompt_ids": p,
                "chosen_ids": tokenizer(chosen)["input_ids"],
                "rejected_ids": tokenizer(rejected)["input_ids"],
            }
        )
    out = DataCollatorForPreference(pad_token_id=0)(rows)
    out["labels"] = out["input_ids"].masked_fill(out.pop("completion_mask") == 0, -100)
    return out


PAIRS = [
    ("What is 3 plus 4?", " 3 plus 4 is 7.", " I would rather not say anything about it."),
    ("Name a colour of the sky, please", " Blue.", " No."),
    ("Hi", " Hello there, how can I help you today?", " Go away."),
]


def model_with(head: str, path: str, attn: str = "eager", share_prompt: bool = False):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn)
    if head == "trl":
        add_fused_lm_head(model, outputs=OUTPUTS)
    else:
        lm_head.install(model, outputs=OUTPUTS, share_prompt=share_prompt)
    return model


def run(model, inputs):
    model.zero_grad()
    out = model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        labels=inputs["labels"],
        fused_lm_head=True,
    )
    weights = torch.linspace(0.5, 1.5, out.log_probs.size(0)).unsqueeze(1)  # a loss that weighs the rows differently
    (out.log_probs * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize(("attn", "share"), [("eager", False), ("eager", True), ("sdpa", True), ("sdpa", False)])
def test_our_head_equals_trls(tiny_model, tiny_tokenizer, attn, share):
    inputs = batch(tiny_tokenizer, PAIRS)
    ref_out, ref_grads = run(model_with("trl", tiny_model, attn), inputs)
    out, grads = run(model_with("ours", tiny_model, attn, share_prompt=share), inputs)
    mask = inputs["labels"][:, 1:] != -100
    assert torch.equal(out.label_mask, mask)
    for name in OUTPUTS:
        got, want = getattr(out, name), getattr(ref_out, name)
        if name == "is_top1":
            assert torch.equal(got.bool(), want.bool())
        else:
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(out.loss, ref_out.loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_shared_prompt_packs_each_pair_into_one_row(tiny_tokenizer):
    inputs = batch(tiny_tokenizer, PAIRS)
    kwargs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "use_cache": False}
    pack = lm_head.SharedPrompt.of(kwargs, inputs["labels"], "sdpa")
    packed = pack.model_inputs()
    assert packed["input_ids"].size(0) == len(PAIRS)
    unpacked_tokens = inputs["input_ids"].numel()
    assert packed["input_ids"].numel() < unpacked_tokens
    p, c = pack.prompt[0], pack.chosen[0]
    mask = packed["attention_mask"][0, 0]
    assert not mask[p + c, p : p + c].any() and mask[p + c, :p].all()  # rejected sees the prompt, not the chosen
    assert packed["position_ids"][0, p + c].item() == p  # the rejected reply starts where the prompt ends


def test_batches_of_another_shape_are_not_packed(tiny_tokenizer):
    inputs = batch(tiny_tokenizer, PAIRS)
    kwargs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "use_cache": False}
    assert lm_head.SharedPrompt.of(kwargs, inputs["labels"], "flash_attention_2") is None
    odd = {**kwargs, "input_ids": inputs["input_ids"][:5], "attention_mask": inputs["attention_mask"][:5]}
    assert lm_head.SharedPrompt.of(odd, inputs["labels"][:5], "eager") is None
    swapped = inputs["input_ids"].clone()
    swapped[0, 0] += 1  # the first pair's two rows no longer share their prompt
    assert lm_head.SharedPrompt.of({**kwargs, "input_ids": swapped}, inputs["labels"], "eager") is None


def test_models_with_scaled_logits_keep_trls_head(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    cpu = torch.device("cpu")
    assert lm_head.use_compact("auto", model, cpu) and not lm_head.use_compact("trl", model, cpu)
    model.config.final_logit_softcapping = 30.0
    assert not lm_head.use_compact("compact", model, cpu)
