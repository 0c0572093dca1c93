"""Metric names, written once and used by metrics.jsonl, wandb, TensorBoard and `compare` alike.

llm-baselines' names are kept (`iter`, `train/loss`, `val/loss`, `val/perplexity`, `val/acc`, `lr`).
"""

ITER = "iter"
TRAIN_LOSS = "train/loss"          # the objective actually optimised (smoothed CE + MoE aux terms)
TRAIN_CE = "train/ce"              # plain cross-entropy of the training batch
VAL_LOSS = "val/loss"              # plain cross-entropy on the fixed val set (nats/token)
VAL_PPL = "val/perplexity"
VAL_ACC = "val/acc"                # next-token accuracy
VAL_BPB = "val/bpb"                # bits per byte
LR = "lr"
TOKENS = "tokens"                  # training tokens seen (all processes)
TRAIN_TIME = "time/train_s"        # training time, excluding compile and eval
EVAL_TIME = "time/eval_s"
COMPILE_TIME = "time/compile_s"
TOKENS_PER_S = "perf/tokens_per_s"
MFU = "perf/mfu"
MOE_AUX = "moe/aux_loss"
MOE_Z = "moe/z_loss"
MOE_LOAD = "moe/load"              # per-layer fraction of routed tokens per expert
MOE_DROPPED = "moe/dropped_frac"

# summary.json holds the final full-val numbers under these keys
FINAL = "final"
