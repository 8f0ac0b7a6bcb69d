"""The library the training stages are written with; nothing here is a stage or knows the pipeline.

- `context.py`: `StageContext` (what the pipeline hands a stage) and what a stage loads from it: its policy, its
  reference, its evaluator every N steps.
- `trainer.py`: a TRL Trainer run the way every Trainer stage runs it (TRL config from `algo.<stage>`, gradient
  checkpointing from a memory estimate, resume, our callbacks, memory per rank); `saving.py`: the final model.
- `lm_head.py`, `sampling.py`, `ref_cache.py`: what we add to TRL's trainers (a CPU LM head and prompt sharing,
  seeded length-grouped batches, reference log-probabilities shared across runs).
- `cost_model.py`: Safe RLHF's cost model on TRL's RewardTrainer, and the pairwise and sign metrics of reward and
  cost models.

Stage entry points (`stages/`) import from here; PPO's own loop pieces are in `rl/`.
"""
