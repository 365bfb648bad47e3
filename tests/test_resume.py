"""Resume and preemption of `m3reid-train` (CPU, tiny synthetic data).

What they pin: resuming reproduces the uninterrupted run bit for bit (per-batch losses, epoch means, weights,
metrics) after a normal stop and after SIGTERM in the middle of an epoch, with 0, 2 and 4 DataLoader workers, and the
worker count does not change the batches; SIGTERM ends the run with exit status 75 and one line saying how to
resume; a run killed with SIGKILL leaves only complete files and `--resume auto` finishes it with one metrics record
per evaluated epoch; `--resume auto` on an empty folder starts fresh.
"""
import json, os, re, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from m3reid.data.synthetic import make_synthetic_hitszvcm

ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')
# 6 identities with K=2: 9 batches per epoch, so that a signal can land in the middle of one
TINY = ['--arch', 'resnet18', '--pretrained', 'none', '--img_h', '32', '--img_w', '16', '--seq_len', '2',
        '--p_num', '2', '--k_num', '2', '--device', 'cpu', '--log_interval', '1', '--test_batch_size', '16']


@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
    return make_synthetic_hitszvcm(tmp_path_factory.mktemp('data')/'HITSZ-VCM', num_train_ids=6, num_test_ids=4,
                                   img_size=(32, 16), seed=0)


def run_train(*argv):
    from m3reid.cli import parse_train_args
    from m3reid.engine.train import train
    torch.set_num_threads(1)
    return train(parse_train_args([str(a) for a in argv]))


def batch_lines(run_dir):
    "The per-batch log lines, without their timing field, in order, each once (a resumed run logs no batch twice)."
    log = next(Path(run_dir).glob('log_*.txt')).read_text().splitlines()
    lines = [l for l in log if l.startswith('Epoch [') and 'Batch [' in l]
    return [re.sub(r'Time [0-9.]+s|/\d+\] Batch', '', l) for l in lines]  # no timing, no number of epochs


def final(run_dir):
    from m3reid.engine.checkpoint import load_checkpoint
    w = load_checkpoint(Path(run_dir)/'modelckpt/model_epoch-2.pth')['model']
    recs = [(r['epoch'], r['i2v'], r['v2i']) for r in json.loads((Path(run_dir)/'metrics.json').read_text())]
    return w, recs


@pytest.fixture(scope='session')
def reference(data_root, tmp_path_factory):
    "The uninterrupted 2-epoch run (workers 0), lr milestone after epoch 1 (a resumed epoch 2 needs the restored schedule)."
    run = tmp_path_factory.mktemp('ref')/'run'
    out = run_train('--dataset_dir', data_root, *TINY, '--workers', '0', '--epochs', '2', '--milestones', '1', '--run_dir', run)
    return run, out


def assert_same_run(a, b):
    assert batch_lines(b) == batch_lines(a) and len(batch_lines(a)) == 18
    (wa, ra), (wb, rb) = final(a), final(b)
    assert ra == rb and [r[0] for r in ra] == [1, 2]
    for k, v in wa.items(): assert torch.equal(v, wb[k]), k


@pytest.mark.parametrize('workers', [0, 2, 4])
def test_resume_after_normal_stop_is_exact(workers, reference, data_root, tmp_path):
    ref_run, ref_out = reference
    common = ['--dataset_dir', data_root, *TINY, '--workers', workers, '--milestones', '1', '--run_dir', tmp_path/'r']
    run_train(*common, '--epochs', '1')                        # stops normally after epoch 1 ...
    out = run_train(*common, '--epochs', '2', '--resume', 'auto')  # ... and is continued to epoch 2
    assert [s['loss'] for s in out['epoch_stats']] == [ref_out['epoch_stats'][1]['loss']]
    assert_same_run(ref_run, tmp_path/'r')


def _train_cmd(data_root, run, workers, *extra):
    return [sys.executable, '-m', 'm3reid.cli', 'train', '--dataset_dir', str(data_root), *TINY, '--workers', str(workers),
            '--epochs', '2', '--milestones', '1', '--run_dir', str(run), '--resume', 'auto', *map(str, extra)]


def _wait_for_line(run, pattern, p, timeout=120):
    t0 = time.time()
    while True:
        log = next(run.glob('log_*.txt'), None)
        if log is not None and re.search(pattern, log.read_text()): return
        assert p.poll() is None, p.communicate()[1][-3000:]
        assert time.time() - t0 < timeout, f'no {pattern!r} in the log in time'
        time.sleep(0.02)


@pytest.mark.parametrize('workers', [0, 2, 4])
def test_sigterm_mid_epoch_then_resume_is_exact(workers, reference, data_root, tmp_path):
    ref_run, _ = reference
    run = tmp_path/'r'
    p = subprocess.Popen(_train_cmd(data_root, run, workers), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    _wait_for_line(run, r'Epoch \[2/2\] Batch \[3/9\]', p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 75, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith('m3reid-train: error: stopped by SIGTERM at epoch 2, after batch') and 'resume with: m3reid-train --resume auto' in line
    from m3reid.engine.checkpoint import load_checkpoint
    st = load_checkpoint(run/'modelckpt/state.pth')
    assert st['epoch'] == 1 and 3 <= st['batch'] < 9  # mid-epoch: the position is in the state
    q = subprocess.run(_train_cmd(data_root, run, workers), env=ENV, capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr[-3000:]
    assert f"1 epoch(s) and {st['batch']} batch(es) done" in q.stdout
    assert_same_run(ref_run, run)


def test_sigkill_then_resume_auto(data_root, tmp_path):
    run = tmp_path/'killed'
    cmd = _train_cmd(data_root, run, 0, '--keep_last', 'all')
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_line(run, r'Epoch \[2/2\] Batch \[2/9\]', p)
    p.send_signal(signal.SIGKILL); p.wait()
    ck = run/'modelckpt'
    from m3reid.engine.checkpoint import load_checkpoint, list_snapshots
    assert [e for e, _ in list_snapshots(ck)] == [1] and load_checkpoint(ck/'state.pth')['epoch'] == 1
    q = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr[-3000:]
    assert '--resume auto: resuming from' in q.stdout
    assert [e for e, _ in list_snapshots(ck)] == [1, 2] and not list(ck.glob('.*tmp*'))
    assert [r['epoch'] for r in json.loads((run/'metrics.json').read_text())] == [1, 2]


def test_resume_auto_fresh_and_finished(data_root, tmp_path, capsys):
    common = ['--dataset_dir', data_root, *TINY, '--workers', '0', '--epochs', '1', '--resume', 'auto', '--run_dir', tmp_path/'r']
    out = run_train(*common)
    assert out['epochs_done'] == 1 and 'starting a fresh run' in capsys.readouterr().out
    out = run_train(*common)  # already finished: resumes at epoch 1 and has nothing to do
    assert 'Nothing to do' in capsys.readouterr().out and out['epoch_stats'] == []
    assert len(json.loads((tmp_path/'r/metrics.json').read_text())) == 1
