"""Equal-time race: every arm x seed of one batch trains CONCURRENTLY, started together, one thread each.

    python bench/speedrun/race.py BATCH_DIR --corpus shakespeare|docstrings --budget 150s \
        --arm 'base=--config_format base' --arm 'm0=--model llama2 --opt muon ...' [--seeds 0,1,2] [--ref base]

Each run is `lmsprint train --threads 1` under `nice -n 5`, from a snapshot of src/ taken at launch (so editing
the tree during a race changes nothing), at the tiny race shape below, scored on the same fixed 8,192 val tokens
(`--final_eval fixed`). When all runs end their checkpoints are deleted and `lmsprint compare BATCH_DIR --metric
val/bpb [--reference REF]` writes BATCH_DIR/report (seed groups are named after the arms).
Why not `lmsprint sweep --parallel N`: it starts its runs together now, but its grid is a cross product of
single flags, and an arm here is a bundle of flags ("m0 + relu2 + untied head"); a race whose arms differ in one
flag is a sweep: `lmsprint sweep --grid mlp=swiglu,relu2 --seeds 0,1,2 --parallel 6 -- --threads 1 ...`.
"""

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = os.environ.get("RACE_PYTHON", sys.executable)
SHAPE = ("--threads 1 --n_layer 4 --n_head 4 --n_embd 128 --sequence_length 128 --batch_size 8 --acc_steps 1 "
         "--iterations 100000 --eval_freq 100000 --eval_tokens 8192 --final_eval fixed --log_interval 10 "
         "--progress false --sample_tokens 0 --ckpt_interval 1h --device cpu")
DOCS = "--dataset data_cache/src/stdlib_docstrings.jsonl --val_fraction 0.05"
# the races of docs/recipes.md ran on Shakespeare's val split of that time, 10% (today's default is 5%): kept here so
# that they reproduce on the same val tokens
SHAKESPEARE_SPLIT = "--val_fraction 0.1"
CORPORA = {"shakespeare": f"--dataset shakespeare {SHAKESPEARE_SPLIT}",
           "shakespeare-char": f"--dataset shakespeare-char {SHAKESPEARE_SPLIT} --vocab_size 128",
           "docstrings": DOCS, "docstrings-char": DOCS + " --tokenizer char --vocab_size 128"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("batch_dir")
    ap.add_argument("--corpus", default="shakespeare", choices=list(CORPORA))
    ap.add_argument("--budget", default="150s")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--arm", action="append", required=True, help="NAME=FLAGS")
    ap.add_argument("--ref", default=None, help="arm the report judges every other arm against (compare --reference)")
    a = ap.parse_args()
    out = os.path.abspath(a.batch_dir)
    os.makedirs(out, exist_ok=True)
    snap = os.path.join(out, "src")
    shutil.copytree(os.path.join(ROOT, "src"), snap, dirs_exist_ok=True)
    env = dict(os.environ, PYTHONPATH=snap)
    procs = []
    with open(os.path.join(out, "commands.sh"), "a") as log:
        for spec in a.arm:
            name, flags = spec.split("=", 1)
            for seed in a.seeds.split(","):
                cmd = (f"nice -n 5 {PY} -m lmsprint train {SHAPE} {CORPORA[a.corpus]} --data_dir {ROOT}/data_cache "
                       f"--time_budget {a.budget} {flags} --seed {seed} --results_base_folder {out} "
                       f"--exp_name {name}_s{seed}")
                log.write(f"{cmd}\n")
                fh = open(os.path.join(out, f"{name}_s{seed}.log"), "w")
                procs.append((name, seed, subprocess.Popen(shlex.split(cmd), env=env, stdout=fh, stderr=fh, cwd=ROOT)))
    t0 = time.time()
    for name, seed, p in procs:
        rc = p.wait()
        if rc:
            print(f"{name} seed {seed} failed rc={rc}", file=sys.stderr)
    print(f"batch done in {time.time() - t0:.0f}s", file=sys.stderr)
    for d in os.listdir(out):
        shutil.rmtree(os.path.join(out, d, "checkpoints"), ignore_errors=True)
    shutil.rmtree(snap, ignore_errors=True)
    ref = ["--reference", a.ref] if a.ref else []
    subprocess.run([PY, "-m", "lmsprint", "compare", out, "--metric", "val/bpb", "--out",
                    os.path.join(out, "report")] + ref, env=dict(env, PYTHONPATH=os.path.join(ROOT, "src")))


if __name__ == "__main__":
    main()
