"""Reward and cost models on TRL's RewardTrainer: Safe RLHF's cost loss (pairwise where the replies differ in
safety, plus a sign term per labelled reply) with its collator and trainer, every reply's score on a prepared
dataset, and the pairwise and sign metrics the rm and cm stages report (stages/reward.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from datasets import Dataset
from trl import RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from alignlab.data import SIGN_COLUMNS


class CostLoss(NamedTuple):
    total: torch.Tensor
    pairwise: torch.Tensor
    sign: torch.Tensor


def cost_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    chosen_sign: torch.Tensor,
    rejected_sign: torch.Tensor,
    sign_weight: float,
) -> CostLoss:
    """Safe RLHF's cost loss over a batch of pairs, summed per pair and averaged over pairs (as safe-rlhf does):
    -log sigmoid(c_unsafer - c_safer) on pairs whose replies differ in safety, plus `sign_weight` times
    -log sigmoid(s * c) for every labelled reply (s = +1 unsafe, -1 safe). With every pair differing and labelled
    and weight 1 this is safe-rlhf's sequence-wise loss; pairs of two safe (or two unsafe) replies, which it orders
    by its own safer_response_id, here add only their sign terms."""
    differ = (chosen_sign * rejected_sign < 0).float()
    unsafer = torch.where(chosen_sign > 0, chosen, rejected)
    safer = torch.where(chosen_sign > 0, rejected, chosen)
    pairwise = (-F.logsigmoid(unsafer - safer) * differ).sum()
    costs, signs = torch.cat([chosen, rejected]), torch.cat([chosen_sign, rejected_sign])
    sign = (-F.logsigmoid(signs * costs) * (signs != 0).float()).sum()
    n = chosen.numel()
    return CostLoss((pairwise + sign_weight * sign) / n, pairwise / n, sign / n)


@dataclass
class CostCollator(DataCollatorForPreference):
    """TRL's preference batches (chosen rows, then rejected rows) plus `cost_sign` in the same order."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        signs = [e["chosen_sign"] for e in examples] + [e["rejected_sign"] for e in examples]
        batch["cost_sign"] = torch.tensor(signs, dtype=torch.float)
        return batch


class CostTrainer(RewardTrainer):
    """trl.RewardTrainer with the cost loss: TRL still tokenizes, length-filters, batches, wraps LoRA and logs;
    only the two sign columns (kept through TRL's column pruning, batched by `CostCollator`) and the loss are ours,
    as TRL has no cost model."""

    def __init__(self, *args: Any, sign_loss_weight: float, processing_class: Any, **kwargs: Any) -> None:
        self.sign_loss_weight = sign_loss_weight
        collator = CostCollator(pad_token_id=processing_class.pad_token_id)
        super().__init__(*args, processing_class=processing_class, data_collator=collator, **kwargs)

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["chosen_ids", "rejected_ids", *SIGN_COLUMNS]

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        mode = "train" if self.model.training else "eval"
        signs = inputs.pop("cost_sign")
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        costs = outputs.logits.squeeze(-1)
        (c_chosen, c_rejected), (s_chosen, s_rejected) = costs.chunk(2), signs.chunk(2)
        parts = cost_loss(c_chosen, c_rejected, s_chosen, s_rejected, self.sign_loss_weight)
        loss = parts.total
        if self.args.center_rewards_coefficient is not None:  # TRL's centring penalty, as RewardTrainer adds it
            loss = loss + self.args.center_rewards_coefficient * costs.pow(2).mean()
        with torch.no_grad():
            batch = {"loss_pairwise": parts.pairwise.item(), "loss_sign": parts.sign.item()}
            batch.update(safety_metrics(c_chosen.float(), c_rejected.float(), s_chosen, s_rejected))
            for key, value in batch.items():  # RewardTrainer.log averages these over the logging window
                value = self.accelerator.gather_for_metrics(torch.tensor(value, device=costs.device))
                self._metrics[mode][key].append(value.mean().item())
        return (loss, outputs) if return_outputs else loss


@torch.no_grad()
def score_pairs(trainer: RewardTrainer, dataset: Dataset) -> dict[str, torch.Tensor]:
    """Scores of every chosen and rejected reply of a prepared dataset (and their cost signs, if any), gathered
    from every rank. Our own loop rather than `trainer.evaluate`: TRL's eval metrics are means of per-batch means,
    and the cost model needs each reply's score next to its label."""
    model = trainer.model.eval()
    out: dict[str, list[torch.Tensor]] = {"chosen": [], "rejected": [], "chosen_sign": [], "rejected_sign": []}
    for batch in trainer.get_eval_dataloader(dataset):
        with trainer.autocast_smart_context_manager():
            scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        chosen, rejected = scores.squeeze(-1).float().chunk(2)
        halves = {"chosen": chosen, "rejected": rejected}
        if "cost_sign" in batch:
            halves["chosen_sign"], halves["rejected_sign"] = batch["cost_sign"].chunk(2)
        for key, value in halves.items():  # gathered per half: a batch is [chosen rows, rejected rows] on each rank
            out[key].append(trainer.accelerator.gather_for_metrics(value).cpu())
    return {k: torch.cat(v) for k, v in out.items() if v}


def preference_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    margin = chosen - rejected
    return {
        "accuracy": (margin > 0).float().mean().item(),
        "margin": margin.mean().item(),
        "reward_chosen": chosen.mean().item(),
        "reward_rejected": rejected.mean().item(),
    }


def safety_metrics(
    chosen: torch.Tensor, rejected: torch.Tensor, chosen_sign: torch.Tensor, rejected_sign: torch.Tensor
) -> dict[str, float]:
    """Pairwise accuracy on the pairs that differ in safety, sign accuracy over the labelled replies, and the mean
    cost of safe and of unsafe replies; a metric with nothing to measure is left out."""
    out = {}
    differ = chosen_sign * rejected_sign < 0
    if differ.any():
        unsafer = torch.where(chosen_sign > 0, chosen, rejected)
        safer = torch.where(chosen_sign > 0, rejected, chosen)
        out["accuracy"] = (unsafer > safer)[differ].float().mean().item()
    costs, signs = torch.cat([chosen, rejected]), torch.cat([chosen_sign, rejected_sign])
    labelled = signs != 0
    if labelled.any():
        out["sign_accuracy"] = (torch.sign(costs) == signs)[labelled].float().mean().item()
    for name, which in (("cost_safe", signs < 0), ("cost_unsafe", signs > 0)):
        if which.any():
            out[name] = costs[which].mean().item()
    return out
