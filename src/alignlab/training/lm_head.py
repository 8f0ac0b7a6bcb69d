"""Per-token log-probabilities for TRL's trainers, computed only where there is a label: our own LM head for devices
without Triton, and prompt sharing for preference pairs.

TRL 1.16 patches every policy with a fused LM head (`trl.trainer.utils.add_fused_lm_head`): `model(...,
fused_lm_head=True)` returns per-token log-probabilities instead of logits. On a device with Triton it projects only
the labelled positions, in tiles. Elsewhere (a CPU) it falls back to torch code that projects *every* position in
fp32, in 32k-column tiles, with entropy, top-1 and mean-logit statistics per tile, and recomputes the logits in the
backward pass: on SmolLM2-135M that fallback took 2.5 s of a 7.3 s DPO step (benchmarks/dpo_speed.py). No library has
a faster CPU path, so this module writes one: the labelled positions only, one matmul under the caller's autocast,
log-softmax in fp32, and autograd for the backward (the logits of a CPU batch are a few tens of MB).

Prompt sharing (DPO): TRL's batch holds each pair twice, `[prompt + chosen; prompt + rejected]`. In a causal model the
prompt's hidden states are the same in both rows, so a pair is packed into one row, prompt + chosen + rejected, with
position ids that restart the rejected reply where the prompt ends and a mask that hides the chosen reply from the
rejected one. The log-probabilities are those of the unpacked rows (a test checks to 1e-5 in fp32); on the default
experiment's pairs it removes 38% of the tokens a step computes.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from trl.trainer.utils import FusedCausalLMOutput

HEADS = ("auto", "trl", "compact")
# Models whose logits TRL's head scales or soft-caps: ours does not reproduce that, so they keep TRL's head.
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)
_MASKABLE_ATTENTION = ("eager", "sdpa")  # implementations that take a custom 4D mask (flash attention does not)


def triton_available(device: torch.device) -> bool:
    """Whether TRL's Triton kernel runs on this device (it does on CUDA with Triton installed, nowhere else)."""
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_compact(head: str, model: Any, device: torch.device) -> bool:
    """`auto`: ours where TRL's head has no kernel (no Triton), and only for models without logit transforms."""
    config = model.config.get_text_config()
    transformed = any(getattr(config, k, None) not in (None, 1, 1.0) for k in _LOGIT_TRANSFORMS)
    if head == "trl" or transformed:
        return False
    return head == "compact" or not triton_available(device)


@contextlib.contextmanager
def replacing_trl_head(trainer_module: types.ModuleType, enabled: bool, share_prompt: bool = False) -> Iterator[None]:
    """While a TRL trainer is constructed, its module's `add_fused_lm_head` installs ours instead (TRL calls it from
    `__init__`, before precomputing reference log-probabilities, so there is no later point to swap heads)."""
    if not enabled:
        yield
        return
    original = trainer_module.add_fused_lm_head

    def add_ours(model: Any, temperature: float = 1.0, outputs: tuple[str, ...] = ("log_probs",), **_: Any) -> None:
        install(model, outputs=outputs, temperature=temperature, share_prompt=share_prompt)

    trainer_module.add_fused_lm_head = add_ours
    try:
        yield
    finally:
        trainer_module.add_fused_lm_head = original


def install(
    model: Any, outputs: tuple[str, ...] = ("log_probs",), temperature: float = 1.0, share_prompt: bool = False
) -> None:
    """Patch `model` (the base model under PEFT) so that `model(..., labels=labels, fused_lm_head=True)` returns a
    `FusedCausalLMOutput` with the fields of `outputs`, as TRL's head does; any other call is the original forward."""
    original_forward = model.forward

    @functools.wraps(type(model).forward)
    def forward(
        self: Any,
        *args: Any,
        fused_lm_head: bool = False,
        labels: Any = None,
        shift_labels: Any = None,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        if not fused_lm_head:
            for name, value in (
                ("labels", labels),
                ("shift_labels", shift_labels),
                ("num_items_in_batch", num_items_in_batch),
            ):
                if value is not None:
                    kwargs[name] = value
            return original_forward(*args, **kwargs)
        kwargs["use_cache"] = False
        pack = None
        if share_prompt and shift_labels is None and not args:
            pack = SharedPrompt.of(kwargs, labels, self.config._attn_implementation)
        if pack is not None:
            hidden = self.base_model(**pack.model_inputs()).last_hidden_state
            targets = labels[:, 1:]
            mask = targets != -100
            states = pack.gather(hidden, mask)
        else:
            hidden = self.base_model(*args, **kwargs).last_hidden_state
            if shift_labels is None:
                hidden, targets = hidden[:, :-1], labels[:, 1:]
            else:
                targets = shift_labels
            mask = targets != -100
            states = hidden[mask]
        head = self.get_output_embeddings()
        fields = token_log_probs(head(states.to(head.weight.device)), targets[mask], outputs, temperature)
        dense = {k: v.new_zeros(mask.shape).masked_scatter(mask, v) for k, v in fields.items()}
        n = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-dense["log_probs"].sum() / n, label_mask=mask, **dense)

    model.forward = types.MethodType(forward, model)


def token_log_probs(
    logits: torch.Tensor, targets: torch.Tensor, outputs: tuple[str, ...], temperature: float = 1.0
) -> dict[str, torch.Tensor]:
    """log p(target) for each row of `logits` (N, vocab), with gradient, and TRL's per-token statistics without."""
    z = logits if temperature == 1.0 else logits / temperature
    log_p = z.log_softmax(-1, dtype=torch.float32)  # reads 16-bit logits once, no fp32 copy of them
    out = {"log_probs": log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)}
    with torch.no_grad():
        if "entropy" in outputs:
            out["entropy"] = -torch.linalg.vecdot(log_p.exp(), log_p)  # fused: no (N, vocab) product
        if "mean_logits" in outputs:
            out["mean_logits"] = z.mean(-1, dtype=torch.float32)
        if "is_top1" in outputs:
            out["is_top1"] = z.argmax(-1) == targets  # argmax takes the first maximum, as TRL's kernel does
        if "log_sum_sq_probs" in outputs:
            out["log_sum_sq_probs"] = torch.logsumexp(2 * log_p, -1)
    return out


@dataclass
class SharedPrompt:
    """A DPO batch `[prompt_i + chosen_i; prompt_i + rejected_i]` (right-padded, 2B rows) packed as B rows
    `prompt_i + chosen_i + rejected_i`. `prompt`, `chosen`, `rejected` are each pair's token counts."""

    input_ids: torch.Tensor
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    attn_implementation: str

    @classmethod
    def of(cls, kwargs: dict[str, Any], labels: torch.Tensor | None, attn: str) -> SharedPrompt | None:
        """The packing of this batch, or None where it does not have that shape (then the rows run as they are)."""
        ids, am = kwargs.get("input_ids"), kwargs.get("attention_mask")
        given = {k for k, v in kwargs.items() if v is not None}  # PEFT passes inputs_embeds=None and the like
        if (
            attn not in _MASKABLE_ATTENTION
            or labels is None
            or ids is None
            or am is None
            or am.dim() != 2
            or given - {"input_ids", "attention_mask", "use_cache"}
            or ids.size(0) % 2
        ):
            return None
        b = ids.size(0) // 2
        lengths = am.sum(1).tolist()
        labelled = labels != -100
        first = torch.where(labelled.any(1), labelled.int().argmax(1), -1).tolist()
        prompt, chosen, rejected = [], [], []
        for i in range(b):
            p = first[i]
            if p <= 0 or first[b + i] != p or not torch.equal(ids[i, :p], ids[b + i, :p]):
                return None
            for row in (i, b + i):  # replies must be labelled from the prompt's end to the row's end
                if int(labelled[row].sum()) != lengths[row] - p or am[row, : lengths[row]].min() == 0:
                    return None
            prompt.append(p)
            chosen.append(lengths[i] - p)
            rejected.append(lengths[b + i] - p)
        return cls(ids, prompt, chosen, rejected, attn)

    def model_inputs(self) -> dict[str, Any]:
        ids = self.input_ids
        b = len(self.prompt)
        total = [p + c + r for p, c, r in zip(self.prompt, self.chosen, self.rejected)]
        t = max(total)
        packed = ids.new_zeros(b, t)
        positions = ids.new_zeros(b, t)
        allowed = torch.zeros(b, t, t, dtype=torch.bool, device=ids.device)
        causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril()
        for i, (p, c, r) in enumerate(zip(self.prompt, self.chosen, self.rejected)):
            n = p + c + r
            packed[i, : p + c] = ids[i, : p + c]
            packed[i, p + c : n] = ids[b + i, p : p + r]
            positions[i, : p + c] = torch.arange(p + c)
            positions[i, p + c : n] = torch.arange(p, p + r)
            positions[i, n:] = torch.arange(p + r, p + r + t - n)
            allowed[i, :, :n] = causal[:, :n]
            allowed[i, p + c :, p : p + c] = False  # the rejected reply does not see the chosen one
        mask = allowed.unsqueeze(1)
        if self.attn_implementation == "eager":  # eager attention adds its mask to the scores
            mask = torch.zeros(mask.shape, dtype=torch.float32, device=ids.device).masked_fill(~mask, float("-inf"))
        return {"input_ids": packed, "position_ids": positions, "attention_mask": mask, "use_cache": False}

    def gather(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The hidden states that predict each labelled token of the unpacked batch, in `mask`'s row-major order:
        for a chosen token at position u, packed state u - 1; for a rejected one, u + C - 1, except the first, which
        the last prompt token predicts (state P - 1, shared with the chosen reply's first token)."""
        b = len(self.prompt)
        pair, source = [], []
        for row in range(2 * b):
            i = row % b
            p, c = self.prompt[i], self.chosen[i]
            u = torch.nonzero(mask[row]).squeeze(-1) + 1  # positions of the labelled tokens in the unpacked row
            s = u - 1 if row < b else torch.where(u == p, p - 1, u + c - 1)
            pair.append(torch.full_like(s, i))
            source.append(s)
        return hidden[torch.cat(pair), torch.cat(source)]
