"""What a long run must survive (CPU, tiny synthetic data, the console scripts in subprocesses).

What they pin: a crafted checkpoint whose unpickling would run a command is refused with one line and exit status
2 by `m3reid-train --resume`, `m3reid-test --resume` and `m3reid-train --pretrained`, and the command never runs;
a full disk while saving ends the run with one line, the earlier checkpoints intact and metrics.json naming only
files that exist (on a small tmpfs, as root); an unreadable frame stops training with one line naming the file and
the tracklet (the state before it is kept), and `--bad_frames skip` finishes and counts the replacements; a run
whose loss stays non-finite stops after `--max_nonfinite` steps in a row, counted across epochs, without saving
non-finite weights.
"""
import json, os, shutil, subprocess, sys, uuid
from pathlib import Path

import pytest
import torch

from m3reid.data.synthetic import make_synthetic_hitszvcm

ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')
TINY = ['--arch', 'resnet18', '--pretrained', 'none', '--img_h', '32', '--img_w', '16', '--seq_len', '2',
        '--p_num', '2', '--k_num', '4', '--workers', '0', '--device', 'cpu', '--log_interval', '1']


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return make_synthetic_hitszvcm(tmp_path_factory.mktemp('data')/'HITSZ-VCM', num_train_ids=6, num_test_ids=4,
                                   img_size=(32, 16), seed=0)


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, '-m', 'm3reid.cli', *map(str, args)], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(p, prog):
    "The process failed with a single `<prog>: error:` line on stderr and no traceback."
    err = p.stderr.strip()
    assert 'Traceback' not in err, err[-3000:]
    last = err.splitlines()[-1]
    assert last.startswith(f'{prog}: error: '), err[-3000:]
    return last


class _Payload:
    "Unpickling this object runs `touch <marker>`."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))


def test_crafted_checkpoint_never_runs(data_root, tmp_path):
    marker = tmp_path/f'pwned-{uuid.uuid4().hex}'
    evil = tmp_path/'evil.pth'
    torch.save({'model': {'classifier.weight': torch.zeros(6, 512)}, 'x': _Payload(marker)}, evil)
    torch.save({'conv1.weight': torch.zeros(1), 'x': _Payload(marker)}, tmp_path/'evil_weights.pth')
    base = ['--dataset_dir', data_root, *TINY, '--output_dir', tmp_path/'o', '--epochs', '1']
    runs = {'m3reid-train': cli('train', *base, '--resume', evil),
            'm3reid-test': cli('test', '--resume', evil, '--dataset_dir', data_root, '--device', 'cpu', '--output_dir', tmp_path/'o'),
            'm3reid-train --pretrained': cli('train', *[a for a in base if a != 'none' and a != '--pretrained'],
                                              '--pretrained', tmp_path/'evil_weights.pth')}
    for name, p in runs.items():
        assert p.returncode == 2, (name, p.stderr[-3000:])
        line = one_line_error(p, name.split()[0])
        assert 'refused' in line and 'posix.system' in line, (name, line)
    assert not marker.exists()
    assert not (tmp_path/'o').exists()  # refused before any run folder is made


def test_pretrained_weights_still_load(data_root, tmp_path):
    "A plain backbone state dict (what torchvision and the original code save) loads with --pretrained PATH."
    from m3reid.models.backbones import build_backbone
    torch.save(build_backbone('resnet18', verbose=False).state_dict(), tmp_path/'r18.pth')
    args = [a for a in TINY if a not in ('--pretrained', 'none')]
    p = cli('train', '--dataset_dir', data_root, *args, '--pretrained', tmp_path/'r18.pth', '--epochs', '1',
            '--test_interval', '5', '--output_dir', tmp_path/'o')
    assert p.returncode == 0, p.stderr[-3000:]
    assert f'weights from {tmp_path/"r18.pth"}' in p.stdout


def _tmpfs(path, size):
    path.mkdir()
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)], capture_output=True, text=True)
    if r.returncode: pytest.skip(f'cannot mount a tmpfs here ({r.stderr.strip() or "mount failed"}): the full-disk test needs root')
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason='mounting a small tmpfs needs root')
def test_full_disk_keeps_earlier_checkpoints(data_root, tmp_path):
    # a ResNet-18 snapshot is ~45 MB and the state ~135 MB: 260 MB hold epoch 1's files but not epoch 2's snapshot
    disk = _tmpfs(tmp_path/'disk', '260m')
    try:
        p = cli('train', '--dataset_dir', data_root, *TINY, '--epochs', '3', '--run_dir', disk/'run', '--keep_last', 'all')
        assert p.returncode == 1, p.stderr[-3000:]
        line = one_line_error(p, 'm3reid-train')
        assert 'cannot write' in line and 'MB free' in line and 'earlier checkpoints are intact' in line
        ck = disk/'run'/'modelckpt'
        from m3reid.engine.checkpoint import load_checkpoint
        assert load_checkpoint(ck/'state.pth')['epoch'] == 1 and load_checkpoint(ck/'model_epoch-1.pth')['epoch'] == 1
        assert not list(ck.glob('.*tmp*'))  # the failed write left no temporary file
        recs = json.loads((disk/'run'/'metrics.json').read_text())
        assert [r['epoch'] for r in recs] == [1]
        assert all(r['checkpoint'] is None or Path(r['checkpoint']).is_file() for r in recs)
    finally: subprocess.run(['umount', str(disk)], capture_output=True)


@pytest.fixture()
def damaged(data_root, tmp_path):
    """A copy of the dataset where every training tracklet of identity 0 has bad frames in its first half (one deleted,
    the others garbage bytes): every epoch samples identity 0, and with 2-frame clips the first frame of every clip
    of it comes from its first half, so every epoch meets bad frames, and the second half stays readable."""
    root = Path(shutil.copytree(data_root, tmp_path/'damaged'))
    from m3reid.data.manager import get_data_manager
    dm = get_data_manager('HITSZVCM', root, verbose=False)
    bad = [Path(f) for t, p in zip(dm.train_tracks, dm.train_track_pids) if p == 0 for f in t[:len(t) // 2]]
    missing, corrupt = bad[-1], bad[:-1]  # not the dataset's first frame, which the manager checks when it loads
    missing.unlink()
    for f in corrupt: f.write_bytes(b'\xff\xd8 this is not a jpeg')
    return root, corrupt, missing


def test_unreadable_frame_stops_training_with_its_name(damaged, tmp_path):
    root, corrupt, missing = damaged
    p = cli('train', '--dataset_dir', root, *TINY, '--epochs', '2', '--run_dir', tmp_path/'run')
    assert p.returncode == 1, p.stderr[-3000:]
    line = one_line_error(p, 'm3reid-train')
    assert any(str(f) in line for f in [missing, *corrupt]) and 'tracklet' in line and '--bad_frames skip' in line
    from m3reid.engine.checkpoint import load_checkpoint
    st = load_checkpoint(tmp_path/'run'/'modelckpt'/'state.pth')  # the state before the bad batch, resumable
    assert (st['epoch'], st['batch']) >= (0, 0)


def test_check_data_stops_before_training(damaged, tmp_path):
    root, corrupt, missing = damaged
    p = cli('train', '--dataset_dir', root, *TINY, '--epochs', '1', '--check_data', '--run_dir', tmp_path/'run')
    assert p.returncode == 1
    assert all(str(f) in p.stdout for f in [missing, *corrupt])
    assert f'--check_data: {1 + len(corrupt)} bad frame(s)' in one_line_error(p, 'm3reid-train')


@pytest.mark.parametrize('workers', [0, 2])
def test_bad_frames_skip_finishes_and_counts(damaged, workers, tmp_path):
    root, _, _ = damaged
    args = [a if a != '0' or i != TINY.index('--workers') + 1 else str(workers) for i, a in enumerate(TINY)]
    p = cli('train', '--dataset_dir', root, *args, '--epochs', '2', '--bad_frames', 'skip', '--run_dir', tmp_path/'run')
    assert p.returncode == 0, p.stderr[-3000:]
    recs = json.loads((tmp_path/'run'/'metrics.json').read_text())
    assert [r['epoch'] for r in recs] == [1, 2]
    counts = [r['bad_frames_replaced'] for r in recs]
    assert 0 < counts[0] <= counts[1], counts
    assert f"{counts[-1]} bad frame(s) replaced so far" in p.stdout


def test_nonfinite_guard_counts_across_epochs(data_root, tmp_path):
    # lr 1e30: the first step throws the weights to ~1e30 and every later loss is inf or NaN; the tiny epochs have 3
    # batches, so 4 skipped steps in a row span two epochs
    p = cli('train', '--dataset_dir', data_root, *TINY, '--lr', '1e30', '--epochs', '5', '--max_nonfinite', '4',
            '--test_interval', '10', '--run_dir', tmp_path/'run')
    assert p.returncode == 1, p.stderr[-3000:]
    line = one_line_error(p, 'm3reid-train')
    assert 'non-finite for 4 consecutive steps (epoch 2' in line
    assert 'loss 0.000000' not in p.stdout
    from m3reid.engine.checkpoint import load_checkpoint
    for f in (tmp_path/'run'/'modelckpt').glob('*.pth'):
        sd = load_checkpoint(f)['model']
        assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point()), f
