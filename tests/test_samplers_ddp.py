"""Batch samplers under a real `torch.distributed` process group (gloo, 2 CPU processes).

Every rank builds its sampler independently from (seed, epoch); the shards gathered across ranks must have equal
lengths, be disjoint, and together form the single-process epoch (minus the dropped tail). A DataLoader driven by
the sampler on each rank must yield exactly the shard's labels.
"""
import json, os, sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from m3reid.data.samplers import SAMPLERS, build_sampler

WORLD = 2


def _labels():
    rs = np.random.RandomState(0)
    pids = np.repeat(np.arange(24), rs.randint(6, 20, 24)).tolist()
    mids = [1 + i % 2 for i in range(len(pids))]
    return pids, mids


class _Labels(torch.utils.data.Dataset):
    def __init__(self, pids, mids): self.pids, self.mids = pids, mids
    def __len__(self): return len(self.pids)
    def __getitem__(self, i): return i, self.pids[i], self.mids[i]


def _worker(rank, init_file, out_dir):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    pids, mids = _labels()
    result = {}
    for name in SAMPLERS:
        s = build_sampler(name, pids, mids, p_num=3, k_num=4, seed=7,
                          num_replicas=dist.get_world_size(), rank=dist.get_rank())
        s.set_epoch(2)
        batches = list(s)
        gathered = [None] * WORLD
        dist.all_gather_object(gathered, batches)
        lens = {len(g) for g in gathered}
        assert len(lens) == 1, f'{name}: shard lengths differ {lens}'
        loader = torch.utils.data.DataLoader(_Labels(pids, mids), batch_sampler=s)
        seen = [idx.tolist() for idx, _, _ in loader]
        assert seen == batches, f'{name}: DataLoader order differs from the sampler'
        result[name] = gathered
    dist.barrier()
    if rank == 0: (Path(out_dir) / 'shards.json').write_text(json.dumps(result))
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason='torch.distributed not available')
def test_rank_shards_in_process_group(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / 'init'), str(tmp_path)), nprocs=WORLD, join=True)
    shards = json.loads((tmp_path / 'shards.json').read_text())
    pids, mids = _labels()
    for name, per_rank in shards.items():
        full = build_sampler(name, pids, mids, p_num=3, k_num=4, seed=7)
        full.set_epoch(2)
        epoch = full.epoch_batches()
        n = len(epoch) // WORLD
        assert all(len(r) == n for r in per_rank), name
        flat = [tuple(b) for r in per_rank for b in r]
        assert sorted(flat) == sorted(tuple(b) for b in epoch[:n * WORLD]), name
        assert not set(map(tuple, per_rank[0])) & set(map(tuple, per_rank[1])), name
        for b in flat: assert len(b) == 12, name
        if name != 'cross_modality_random':
            # every identity here has >= K tracklets: drawn without replacement, so no tracklet on two ranks
            a, b = ({i for bb in r for i in bb} for r in per_rank)
            assert not a & b, name
