"""`lmsprint bench`: time training steps on synthetic tokens.

- `measure.py`: one config -> one result row (tokens/s, MFU, peak memory, compile time, host syncs), timing the
  training step that `lmsprint train` runs (`train.step.build_train_step`).
- `suite.py`: the suite of configs (each in its own subprocess or in-process), its table, notes and the
  reference figures it is read against.
- `options.py`: the flags of one measurement (light: no torch), for the CLI's parser and the suite.
- `memory.py`: the computed (not measured) per-GPU memory of a training step under ddp and fsdp: weights,
  gradients, optimizer state, activations and the loss (`memory_table`, `lmsprint bench --memory`).
The command line (arguments, printing) is `cli/bench.py`. Nothing here imports the tracking layer.
"""
