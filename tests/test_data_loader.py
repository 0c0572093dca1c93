"""Batch sampling: per-step determinism, rank slicing (also across real gloo processes), fixed val windows."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lmsprint.data.loader import BatchSampler, DeviceBatches, n_val_windows, open_tokens, to_device, val_batches
from lmsprint.errors import UserError

T = 32


def _tokens(n=5000, seed=0):
    return np.random.default_rng(seed).integers(0, 50257, size=n).astype(np.uint16)


@pytest.mark.slow
def test_sampler_windows_are_real_slices(shakespeare_manifest):
    train = open_tokens(shakespeare_manifest.train_path, shakespeare_manifest.dtype)
    s = BatchSampler(train, T, 8, seed=1337)
    x, y = s.get(3)
    assert x.shape == y.shape == (8, T) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x.numpy(), y.numpy()):
        hits = np.flatnonzero(np.asarray(train[:len(train) - T]) == row_x[0])
        assert any(np.array_equal(train[h:h + T], row_x) and np.array_equal(train[h + 1:h + T + 1], row_y)
                   for h in hits)
    assert int(x.max()) < shakespeare_manifest.n_vocab


def test_sampler_is_a_function_of_seed_and_step():
    tokens = _tokens()
    a, b = BatchSampler(tokens, T, 6, seed=7), BatchSampler(tokens, T, 6, seed=7)
    xa5 = a.get(5)[0]
    b.get(0), b.get(1)
    assert torch.equal(b.get(5)[0], xa5)  # order of calls does not matter
    assert not torch.equal(a.get(6)[0], xa5)
    assert not torch.equal(BatchSampler(tokens, T, 6, seed=8).get(5)[0], xa5)
    starts = a.starts(5)
    assert starts.min() >= 0 and starts.max() <= len(tokens) - T - 1


def test_device_batches_hand_out_consecutive_steps_prefetched_and_resume_from_their_state():
    tokens = _tokens()
    s = BatchSampler(tokens, T, 6, seed=7)
    a = DeviceBatches(s, "cpu")
    x0, _ = a.next()
    a.prefetch()  # the copy of step 1 starts early; next() hands it out
    x1, _ = a.next()
    assert torch.equal(x0, s.get(0)[0]) and torch.equal(x1, s.get(1)[0])
    a.prefetch()  # step 2 prefetched, not handed out: the state is still "next is step 2"
    assert a.state_dict() == {"seed": 7, "step": 2}
    b = DeviceBatches(BatchSampler(tokens, T, 6, seed=7), "cpu")
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.next()[0], a.next()[0]) and torch.equal(a.next()[0], s.get(3)[0])


def test_rank_slicing_one_process_2b_equals_two_processes_b():
    tokens = _tokens()
    whole = BatchSampler(tokens, T, 8, seed=3).get(11)
    parts = [BatchSampler(tokens, T, 8, seed=3, rank=r, world_size=2).get(11) for r in range(2)]
    assert parts[0][0].shape == (4, T)
    assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
    assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])
    with pytest.raises(UserError, match="divisible"):
        BatchSampler(tokens, T, 7, seed=3, rank=0, world_size=2)
    with pytest.raises(UserError, match="sequence_length"):
        BatchSampler(tokens[:T], T, 2, seed=0)


def _gloo_worker(rank, world, port, tokens, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, y = BatchSampler(tokens, T, 6, seed=5, rank=rank, world_size=world).get(2)
        gathered = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(gathered, x)
        val = torch.cat([xv for xv, _ in val_batches(tokens, T, 4, rank=rank, world_size=world)])
        n = torch.tensor([val.shape[0]])
        dist.all_reduce(n)
        if rank == 0:
            torch.save({"x": torch.cat(gathered), "val_windows": int(n)}, os.path.join(out_dir, "out.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gloo_ranks_reassemble_the_global_batch(tmp_path):
    tokens = _tokens(3000)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gloo_worker, args=(2, port, tokens, str(tmp_path)), nprocs=2, join=True)
    out = torch.load(tmp_path / "out.pt")
    assert torch.equal(out["x"], BatchSampler(tokens, T, 6, seed=5).get(2)[0])
    assert out["val_windows"] == n_val_windows(len(tokens), T) == (3000 - 1) // T


def test_val_batches_fixed_and_sharded(shakespeare_manifest):
    val = open_tokens(shakespeare_manifest.val_path, shakespeare_manifest.dtype)
    first = [x for x, _ in val_batches(val, T, 5, max_tokens=T * 23)]
    again = [x for x, _ in val_batches(val, T, 5, max_tokens=T * 23)]
    assert [b.shape[0] for b in first] == [5, 5, 5, 5, 3]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    whole = torch.cat(first)
    assert np.array_equal(whole.flatten().numpy(), val[:23 * T])  # non-overlapping, from the start of the split
    x0, y0 = next(val_batches(val, T, 5))
    assert torch.equal(y0[:, :-1], x0[:, 1:]) and int(y0[0, -1]) == int(val[T])
    ranks = [torch.cat([x for x, _ in val_batches(val, T, 4, max_tokens=T * 23, rank=r, world_size=3)])
             for r in range(3)]
    assert [len(r) for r in ranks] == [8, 8, 7]
    for i in range(23):
        assert torch.equal(ranks[i % 3][i // 3], whole[i])
    n_all = sum(x.shape[0] for x, _ in val_batches(val, T, 64))
    assert n_all == (len(val) - 1) // T
    with pytest.raises(UserError, match="val split"):
        next(val_batches(val[:T], T, 4))


def test_open_tokens_in_ram_and_errors(tmp_path):
    tokens = _tokens(100)
    path = tmp_path / "t.bin"
    tokens.tofile(path)
    mm = open_tokens(str(path), "uint16")
    ram = open_tokens(str(path), "uint16", in_ram=True)
    assert isinstance(mm, np.memmap) and not isinstance(ram, np.memmap)
    assert np.array_equal(mm, tokens) and np.array_equal(ram, tokens)
    assert len(open_tokens(str(path), "uint32")) == 50
    (tmp_path / "odd.bin").write_bytes(b"\x00" * 201)
    with pytest.raises(UserError, match="truncated"):
        open_tokens(str(tmp_path / "odd.bin"), "uint16")
    with pytest.raises(UserError, match="missing"):
        open_tokens(str(tmp_path / "nope.bin"), "uint16")


def test_to_device_cpu():
    x, y = torch.arange(6).view(2, 3), torch.arange(6).view(2, 3) + 1
    dx, dy = to_device(x, y, "cpu")
    assert dx.device.type == "cpu" and torch.equal(dx, x) and torch.equal(dy, y)
