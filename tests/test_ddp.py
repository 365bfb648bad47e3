"""Distributed training under torchrun (CPU, gloo, 2 processes, tiny synthetic data).

What they pin (on one shared 2-process run, restarted once after a worker is killed): a 2-process run completes
and its checkpoint, evaluated by single-process `m3reid-test`, gives the numbers the distributed evaluation
reported; the ranks' batches are disjoint and together are the epoch's batches; a worker killed mid-epoch under
`--max-restarts 1` ends in a finished run with one metrics record per epoch; SIGUSR1 sent to one rank only stops
both ranks after the same step with a resumable state, and `--resume auto` finishes the run; `--sync_bn` is
refused on the CPU.
"""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from m3reid.data.synthetic import make_synthetic_hitszvcm

ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')
TINY = ['--arch', 'resnet18', '--pretrained', 'none', '--img_h', '32', '--img_w', '16', '--seq_len', '2',
        '--p_num', '2', '--k_num', '2', '--workers', '0', '--device', 'cpu', '--log_interval', '2', '--test_batch_size', '8']


@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
    return make_synthetic_hitszvcm(tmp_path_factory.mktemp('data')/'HITSZ-VCM', num_train_ids=6, num_test_ids=5,
                                   img_size=(32, 16), seed=0)


def torchrun(*args, nproc=2, extra=()):
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc), *extra,
            '-m', 'm3reid.cli', 'train', *map(str, args)]


def _wait_for_log(run, text, p, timeout=180):
    t0 = time.time()
    while True:
        log = next(run.glob('log_*.txt'), None) if run.is_dir() else None
        if log is not None and text in log.read_text(): return
        assert p.poll() is None, p.stdout.read()[-4000:]
        assert time.time() - t0 < timeout, f'no {text!r} in the log in time'
        time.sleep(0.05)


def _children(pid):
    try: return [int(c) for c in Path(f'/proc/{pid}/task/{pid}/children').read_text().split()]
    except OSError: return []


@pytest.fixture(scope='session')
def ddp_run(data_root, tmp_path_factory):
    """One 2-process, 2-epoch run under `--max-restarts 1 --resume auto`, with one worker SIGKILLed in epoch 2.

    A single run serves all the DDP tests (torchrun start-ups dominate their time): the restarted attempt must still
    produce a complete run whose checkpoint tests alike and whose per-rank batches are those of the epoch."""
    run = tmp_path_factory.mktemp('ddp')/'run'
    cmd = torchrun('--dataset_dir', data_root, *TINY, '--epochs', '2', '--run_dir', run, '--resume', 'auto',
                   '--record_batches', extra=('--max-restarts', '1'))
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_log(run, 'Epoch [2/2] Batch [', p)  # in epoch 2: epoch 1's files are all written
    workers = _children(p.pid)
    assert len(workers) == 2, workers
    os.kill(max(workers), signal.SIGKILL)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-4000:]
    return run


def test_ddp_run_completes_and_checkpoint_tests_alike(ddp_run, data_root, tmp_path):
    log = next(ddp_run.glob('log_*.txt')).read_text()
    assert 'world size 2 (gloo)' in log and 'the global batch is 8 tracklets' in log
    attempts = log.count('--resume auto:')  # one line per attempt (the fixture's run is restarted once)
    assert attempts == 2 and log.count('Args: TrainConfig(') == attempts  # only rank 0 writes
    recs = json.loads((ddp_run/'metrics.json').read_text())
    assert [r['epoch'] for r in recs] == [1, 2] and all(r['world_size'] == 2 for r in recs)
    from m3reid.data.manager import get_data_manager
    dm = get_data_manager('HITSZVCM', data_root, verbose=False)
    assert recs[-1]['num_query']['i2v'] == len(dm.query_tracks)  # every test tracklet scored once
    assert recs[-1]['num_gallery']['i2v'] == len(dm.gallery_tracks)
    from m3reid.cli import test  # single process, in this interpreter (no process group)
    torch.set_num_threads(1)
    assert test(['--resume', str(ddp_run/'modelckpt/model_epoch-2.pth'), '--dataset_dir', str(data_root), '--batch_size', '8',
                 '--workers', '0', '--device', 'cpu', '--output_dir', str(tmp_path)]) is None
    got = json.loads(next((tmp_path/'HITSZVCM').iterdir()).joinpath('metrics.json').read_text())[0]
    for mode in ('i2v', 'v2i'):
        for k, v in recs[-1][mode].items(): assert got[mode][k] == pytest.approx(v, abs=1e-6), (mode, k)


def test_ranks_batches_disjoint_and_covering(ddp_run, data_root):
    from m3reid.data.manager import get_data_manager
    from m3reid.data.samplers import build_sampler
    dm = get_data_manager('HITSZVCM', data_root, verbose=False)
    per_epoch = json.loads((ddp_run/'batches.json').read_text())
    assert sorted(per_epoch) == ['1', '2']
    for e, ranks in per_epoch.items():
        assert len(ranks) == 2 and len(ranks[0]) == len(ranks[1]) > 0
        r0, r1 = ({tuple(b) for b in r} for r in ranks)
        whole = build_sampler('pk', dm.train_track_pids, dm.train_track_mids, p_num=2, k_num=2, seed=0)
        whole.set_epoch(int(e) - 1)
        full = [tuple(b) for b in whole][:2 * len(ranks[0])]
        assert r0.isdisjoint(r1)
        assert sorted(map(tuple, ranks[0] + ranks[1])) == sorted(full)


def test_killed_worker_restarts_and_finishes(ddp_run):
    log = next(ddp_run.glob('log_*.txt')).read_text()
    assert '--resume auto: resuming from' in log
    recs = json.loads((ddp_run/'metrics.json').read_text())
    assert [r['epoch'] for r in recs] == [1, 2]  # epoch 2 once, although it was started twice
    from m3reid.engine.checkpoint import list_snapshots
    assert [e for e, _ in list_snapshots(ddp_run/'modelckpt')] == [1, 2]
    assert not list((ddp_run/'modelckpt').glob('.*tmp*'))


def test_signal_to_one_rank_stops_both_at_the_same_step(data_root, tmp_path):
    run = tmp_path/'run'
    cmd = torchrun('--dataset_dir', data_root, *TINY, '--epochs', '2', '--run_dir', run, '--resume', 'auto',
                   '--log_interval', '1')
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_log(run, 'Batch [2/', p)
    os.kill(max(_children(p.pid)), signal.SIGUSR1)  # rank 1 only (the later-started worker)
    out, _ = p.communicate(timeout=180)
    assert p.returncode != 0 and 'stopped by' in out, out[-4000:]
    from m3reid.engine.checkpoint import load_checkpoint
    st = load_checkpoint(run/'modelckpt/state.pth')
    assert st['batch'] > 0 and len(st['rng_states_per_rank']) == 2  # saved mid-epoch, with both ranks' states
    q = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stdout[-4000:] + q.stderr[-4000:]
    assert [r['epoch'] for r in json.loads((run/'metrics.json').read_text())] == [1, 2]


def test_sync_bn_refused_on_cpu(data_root, tmp_path, capsys):
    from m3reid.cli import train
    with pytest.raises(SystemExit) as e:
        train(['--dataset_dir', str(data_root), *TINY, '--sync_bn', '--output_dir', str(tmp_path)])
    assert e.value.code == 2 and 'SyncBatchNorm only trains on CUDA' in capsys.readouterr().err
