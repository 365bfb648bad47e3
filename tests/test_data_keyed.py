"""Per-sample keys: a training batch is a pure function of (seed, epoch, rank, position), whatever the number of
DataLoader workers, and the augmentation draws keep exactly the distributions of the pipelines."""
import random
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from m3reid.data.dataset import VideoVIDataset
from m3reid.data.manager import HITSZVCMDataManager
from m3reid.data.samplers import CrossModalityIdentitySampler, KeyedBatchSampler, PKSampler, SampleKey, sample_seed
from m3reid.data.synthetic import make_synthetic_hitszvcm
from m3reid.data.transforms import WeightedGrayscale, train_transforms


@pytest.fixture(scope='module')
def manager(tmp_path_factory):
    root = make_synthetic_hitszvcm(tmp_path_factory.mktemp('keyed') / 'vcm', num_train_ids=6, num_test_ids=2,
                                   num_cameras=2, cams_per_id=2, frames=(12, 14), short_prob=0, img_size=(32, 16), seed=3)
    return HITSZVCMDataManager(root, verbose=False)


def _loader(manager, workers, seed=5, epoch=1, start_batch=0):
    ds = VideoVIDataset(manager, train_transforms(32, 16), seq_len=4)
    keyed = KeyedBatchSampler(CrossModalityIdentitySampler(manager.train_track_pids, manager.train_track_mids,
                                                           p_num=2, k_num=4, seed=seed), seed=seed)
    keyed.set_epoch(epoch, start_batch=start_batch)
    return DataLoader(ds, batch_sampler=keyed, num_workers=workers, generator=torch.Generator(),
                      persistent_workers=workers > 0)


def _epoch(loader):
    return [tuple(t.clone() for t in b) for b in loader]


def test_same_batches_with_0_and_2_workers(manager):
    torch.manual_seed(0); random.seed(0)
    ref = _epoch(_loader(manager, 0))
    assert len(ref) >= 3
    torch.manual_seed(99); random.seed(99)           # other global states change nothing
    for other in (_epoch(_loader(manager, 2)), _epoch(_loader(manager, 0))):
        assert len(other) == len(ref)
        for a, b in zip(ref, other):
            for u, v in zip(a, b): assert torch.equal(u, v)
    # a mid-epoch start (a resumed run) continues with exactly the batches of the full epoch
    tail = _epoch(_loader(manager, 2, start_batch=2))
    assert len(tail) == len(ref) - 2
    for a, b in zip(ref[2:], tail):
        for u, v in zip(a, b): assert torch.equal(u, v)
    # another epoch draws other clips
    assert not torch.equal(_epoch(_loader(manager, 0, epoch=2))[0][0], ref[0][0])


def test_persistent_workers_follow_set_epoch(manager):
    loader = _loader(manager, 2)
    ref = {e: _epoch(_loader(manager, 0, epoch=e)) for e in (1, 2)}
    for e in (1, 2, 1):
        loader.batch_sampler.set_epoch(e)
        got = _epoch(loader)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(ref[e], got))


def _recorder(tf, log, name):
    "Record every call of a v2 transform's make_params (a random-apply transform calls it only when it applies)."
    inner = tf.make_params
    def make_params(flat):
        params = inner(flat); log[name].append(params); return params
    tf.make_params = make_params


def test_augmentation_distributions():
    ir_tf, rgb_tf = train_transforms(32, 16)
    calls, log = Counter(), {k: [] for k in ('gray', 'crop', 'flip', 'erase')}
    for t in rgb_tf.pipeline.transforms:
        name = {WeightedGrayscale: 'gray', v2.RandomCrop: 'crop', v2.RandomHorizontalFlip: 'flip',
                v2.RandomErasing: 'erase'}.get(type(t))
        if name: _recorder(t, log, name)
    track = tuple(f'frame{i}' for i in range(8))
    man = type('M', (), dict(train_tracks=[track], train_track_pids=[0], train_track_cids=[1], train_track_mids=[2]))()
    ds = VideoVIDataset(man, (ir_tf, rgb_tf), seq_len=2)
    clip = torch.randint(0, 256, (2, 3, 32, 16), dtype=torch.uint8)
    ds._read = lambda index, idx: clip                 # no files: only the draws matter here
    n = 800
    for pos in range(n): ds[SampleKey(0, sample_seed(11, 0, 0, pos))]
    gray = sum(p['apply'] for p in log['gray']) / n
    flips, erases = len(log['flip']) / n, len(log['erase']) / n
    offsets = Counter((p['top'], p['left']) for p in log['crop'])      # padding 1: offsets 0..2 in each direction
    assert abs(gray - 0.5) < 0.07 and abs(flips - 0.5) < 0.07 and abs(erases - 0.5) < 0.07, (gray, flips, erases)
    assert set(offsets) == {(t, l) for t in range(3) for l in range(3)}
    assert max(offsets.values()) / min(offsets.values()) < 1.8, offsets
    # ... and the keyed path draws exactly what the plain path draws under globals seeded with the same number
    for s in (1, 2, 3):
        random.seed(s); torch.manual_seed(s); a = ds[0][0]
        assert torch.equal(a, ds[(0, s)][0])


def test_keyed_sampler_api():
    pids = [p for p in range(6) for _ in range(8)]
    mids = [1 + i % 2 for i in range(len(pids))]
    inner = PKSampler(pids, mids, p_num=2, k_num=4, seed=1, num_replicas=2, rank=1)
    ks = KeyedBatchSampler(inner, seed=1)
    ks.set_epoch(4)
    batches = list(ks)
    assert ks.rank == 1 and len(ks) == len(inner) == len(batches)
    assert [[k.index for k in b] for b in batches] == list(inner)
    assert batches[1][3] == SampleKey(batches[1][3].index, sample_seed(1, 4, 1, 8 + 3))
    ks.set_epoch(4, start_batch=len(inner))
    assert list(ks) == [] and len(ks) == 0
    with pytest.raises(ValueError, match='outside'): ks.set_epoch(4, start_batch=-1)


def test_item_resizes_each_frame_once(tmp_path):
    "A tracklet of 40x20, 64x32 and 48x24 frames: the training item is the pipeline applied to a direct resize of each."
    from torchvision.io import ImageReadMode, decode_image, write_jpeg
    from torchvision.transforms.v2 import functional as TF
    g = torch.Generator().manual_seed(0)
    paths = []
    for i, (h, w) in enumerate(((40, 20), (64, 32), (48, 24))):
        img = torch.nn.functional.interpolate(torch.rand(1, 3, 5, 3, generator=g) * 255, size=(h, w), mode='bilinear')[0]
        write_jpeg(img.to(torch.uint8), str(tmp_path / f'{i}.jpg'), quality=95); paths.append(str(tmp_path / f'{i}.jpg'))
    man = type('M', (), dict(train_tracks=[tuple(paths)], train_track_pids=[0], train_track_cids=[1], train_track_mids=[2]))()
    ir_tf, rgb_tf = train_transforms(64, 32)
    ds = VideoVIDataset(man, (ir_tf, rgb_tf), seq_len=3)
    assert ds.size == (64, 32)
    direct = torch.stack([TF.resize(decode_image(p, mode=ImageReadMode.RGB), [64, 32], antialias=True) for p in paths])
    for s in (1, 2, 3):
        torch.manual_seed(s)
        assert torch.equal(ds[(0, s)][0], rgb_tf(direct))
