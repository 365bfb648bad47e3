"""Checkpoint and resume behaviour of `m3reid-train` (CPU, tiny synthetic data, `--workers 0`).

What they pin: resuming from an epoch checkpoint continues bit-exactly (losses and weights equal an uninterrupted
run); a run killed with SIGKILL leaves only complete checkpoints, and `--resume auto` finishes it with one metrics
record per evaluated epoch; `--resume auto` on an empty folder starts fresh.
"""
import json, os, re, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from m3reid.data.synthetic import make_synthetic_hitszvcm

ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')
TINY = ['--arch', 'resnet18', '--pretrained', 'none', '--img_h', '32', '--img_w', '16', '--seq_len', '2',
        '--p_num', '2', '--k_num', '4', '--workers', '0', '--device', 'cpu', '--log_interval', '2']


@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
    return make_synthetic_hitszvcm(tmp_path_factory.mktemp('data')/'HITSZ-VCM', num_train_ids=6, num_test_ids=4,
                                   img_size=(32, 16), seed=0)


def run_train(*argv):
    from m3reid.cli import build_train_parser
    from m3reid.engine.train import train
    torch.set_num_threads(1)
    return train(build_train_parser().parse_args([str(a) for a in argv]))


def batch_lines(run_dir, epoch):
    "The per-batch log lines of one epoch, without their timing field."
    log = next(Path(run_dir).glob('log_*.txt')).read_text().splitlines()
    return [re.sub(r'Time [0-9.]+s', '', l) for l in log if l.startswith(f'Epoch [{epoch}/') and 'Batch [' in l]


def test_resume_is_exact(data_root, tmp_path):
    # 2 epochs, lr milestone after epoch 1: the resumed epoch needs the restored schedule (lr already x0.1)
    common = ['--dataset_dir', data_root, *TINY, '--epochs', '2', '--milestones', '1', '--test_interval', '10']
    a = run_train(*common, '--run_dir', tmp_path/'a')
    b = run_train(*common, '--run_dir', tmp_path/'b', '--resume', tmp_path/'a/modelckpt/model_epoch-1.pth')
    assert [s['loss'] for s in b['epoch_stats']] == [s['loss'] for s in a['epoch_stats'][1:]]
    assert len(b['epoch_stats']) == 1
    assert batch_lines(tmp_path/'b', 2) == batch_lines(tmp_path/'a', 2) and batch_lines(tmp_path/'a', 2)
    from m3reid.engine.train import load_checkpoint
    ca, cb = (load_checkpoint(tmp_path/f'{r}/modelckpt/model_epoch-2.pth') for r in 'ab')
    for k, v in ca['model'].items(): assert torch.equal(v, cb['model'][k]), k
    assert ca['optimizer']['param_groups'][0]['lr'] == cb['optimizer']['param_groups'][0]['lr'] == pytest.approx(2e-5)
    # the final evaluation is the same too
    ma, mb = (json.loads((tmp_path/f'{r}/metrics.json').read_text())[-1] for r in 'ab')
    assert ma['i2v'] == mb['i2v'] and ma['v2i'] == mb['v2i']


def test_resume_auto_fresh_and_finished(data_root, tmp_path, capsys):
    common = ['--dataset_dir', data_root, *TINY, '--epochs', '1', '--resume', 'auto', '--run_dir', tmp_path/'r']
    out = run_train(*common)
    assert out['epochs_done'] == 1 and 'starting a fresh run' in capsys.readouterr().out
    out = run_train(*common)  # already finished: resumes at epoch 1 and has nothing to do
    text = capsys.readouterr().out
    assert 'Nothing to do' in text and out['epoch_stats'] == []
    assert len(json.loads((tmp_path/'r/metrics.json').read_text())) == 1


def test_sigkill_then_resume_auto(data_root, tmp_path):
    run = tmp_path/'killed'
    cmd = [sys.executable, '-m', 'm3reid.cli', 'train', '--dataset_dir', str(data_root), *TINY, '--epochs', '3',
           '--run_dir', str(run), '--resume', 'auto']
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ck = run/'modelckpt'
    t0 = time.time()
    while not (ck/'model_epoch-1.pth').exists():
        assert p.poll() is None, p.stderr.read()[-3000:]
        assert time.time() - t0 < 120, 'no checkpoint in time'
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere in epoch 2 (or its checkpoint write)
    p.send_signal(signal.SIGKILL); p.wait()
    from m3reid.engine.train import is_complete_checkpoint, list_checkpoints, load_checkpoint
    done = list_checkpoints(ck)
    assert done and all(is_complete_checkpoint(f) for _, f in done)
    for e, f in done: assert load_checkpoint(f)['epoch'] == e
    q = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr[-3000:]
    assert '--resume auto: resuming from' in q.stdout
    assert [e for e, _ in list_checkpoints(ck)] == [1, 2, 3]
    assert not list(ck.glob('.*tmp*'))
    recs = json.loads((run/'metrics.json').read_text())
    assert [r['epoch'] for r in recs] == [1, 2, 3]
