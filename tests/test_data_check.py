"""Bad frames: `m3reid-check-data` lists a corrupt and a missing frame (exit 1), a clean dataset exits 0 and a bad
folder is one line with exit 2; during reading a bad frame raises `FrameReadError` naming the file and the tracklet
(also from DataLoader workers), and skip mode replaces and counts it (with 0 and 2 workers)."""
import shutil, subprocess, sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from m3reid.data.dataset import FrameReadError, VideoVIDataset
from m3reid.data.manager import HITSZVCMDataManager
from m3reid.data.samplers import KeyedBatchSampler, PKSampler
from m3reid.data.synthetic import make_synthetic_hitszvcm
from m3reid.data.check import main as check_main
from m3reid.data.transforms import test_transforms as make_test_transforms

VCM = dict(num_train_ids=3, num_test_ids=2, num_cameras=2, cams_per_id=2, frames=(12, 13), short_prob=0,
           img_size=(32, 16), seed=5)


@pytest.fixture(scope='module')
def pristine(tmp_path_factory):
    return make_synthetic_hitszvcm(tmp_path_factory.mktemp('check') / 'vcm', **VCM)


@pytest.fixture
def damaged(pristine, tmp_path):
    "A copy with a truncated training frame (tracklet 1, frame 3) and a missing gallery frame (tracklet 0, frame 5)."
    root = Path(shutil.copytree(pristine, tmp_path / 'vcm'))
    dm = HITSZVCMDataManager(root, verbose=False)
    cut, gone = Path(dm.train_tracks[1][3]), Path(dm.gallery_tracks[0][5])
    cut.write_bytes(cut.read_bytes()[:150]); gone.unlink()
    return root, str(cut), str(gone)


def check_data(*args):
    code = 'import sys; from m3reid.data.check import main; sys.exit(main())'
    return subprocess.run([sys.executable, '-c', code, *args], capture_output=True, text=True, timeout=120)


def test_check_data_cli(damaged, pristine, tmp_path, capsys):
    root, cut, gone = damaged
    r = check_data('--dataset', 'HITSZVCM', '--dataset_dir', str(root), '--workers', '2', '--no_progress')
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert any(cut in l and 'truncated' in l and 'train tracklet 1' in l and 'frame 4 of' in l for l in lines), r.stdout
    assert any(gone in l and 'missing' in l and 'gallery tracklet 0' in l for l in lines), r.stdout
    assert '2 bad frames (1 missing, 1 truncated) in 2 tracklets' in r.stdout
    # the same entry point in this process (an interpreter start costs seconds): a clean dataset, a bad folder
    assert check_main(['--dataset', 'HITSZVCM', '--dataset_dir', str(pristine), '--workers', '1', '--no_progress']) == 0
    assert 'frames readable' in capsys.readouterr().out
    assert check_main(['--dataset', 'HITSZVCM', '--dataset_dir', str(tmp_path / 'nowhere')]) == 2
    out, err = capsys.readouterr()
    assert out == '' and len(err.strip().splitlines()) == 1 and 'nowhere' in err and 'not found' in err, err
    assert check_main(['--dataset', 'MARS', '--dataset_dir', str(pristine)]) == 2
    assert 'valid names' in capsys.readouterr().err


def _train_loader(root, workers, bad_frames):
    dm = HITSZVCMDataManager(root, verbose=False)
    ds = VideoVIDataset(dm, make_test_transforms(32, 16), seq_len=13, dataset_mode='train', bad_frames=bad_frames)
    sampler = KeyedBatchSampler(PKSampler(dm.train_track_pids, dm.train_track_mids, p_num=3, k_num=4, seed=0), seed=0)
    return ds, DataLoader(ds, batch_sampler=sampler, num_workers=workers, generator=torch.Generator())


@pytest.mark.parametrize('workers', [0, 2])
def test_reading_a_bad_frame(damaged, workers):
    root, cut, gone = damaged
    ds, loader = _train_loader(root, workers, 'error')
    with pytest.raises(FrameReadError) as e: list(loader)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and cut in msg and 'train tracklet 1:' in msg and 'truncated' in msg, msg


@pytest.mark.parametrize('workers', [0, 2])
def test_skip_mode_replaces_and_counts(damaged, pristine, workers):
    root, cut, gone = damaged
    ds, loader = _train_loader(root, workers, 'skip')
    _, ref_loader = _train_loader(pristine, 0, 'error')
    uses = 0
    for (x, p, c, m), (xr, *_), keys in zip(loader, ref_loader, loader.batch_sampler):
        for j, k in enumerate(keys):
            if k.index != 1: assert torch.equal(x[j], xr[j])
            else:   # every frame is read (13 of 12-13): frame 3 became frame 2, the others are untouched
                uses += 1
                assert torch.equal(x[j][3], x[j][2]) and torch.equal(x[j][:3], xr[j][:3]) and torch.equal(x[j][4:], xr[j][4:])
    assert uses > 0 and ds.replaced_frames == uses
