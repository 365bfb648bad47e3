"""Each figure function of `m3reid.viz` renders on tiny made-up inputs and writes a non-empty PNG."""
import json

import pytest
import torch

from m3reid import viz

PNG = b'\x89PNG\r\n\x1a\n'


def _check_png(fig, path):
    p = viz.save_figure(fig, path)
    data = p.read_bytes()
    assert data[:8] == PNG and len(data) > 2000, f'{p} is not a real PNG ({len(data)} bytes)'


def _record(epoch, s):
    m = dict(r1=0.1 * s, r5=0.2 * s, r10=0.3 * s, r20=0.4 * s, mAP=0.05 * s, mINP=0.02 * s)
    return {'epoch': epoch, 'i2v': m, 'v2i': dict(m)}


@pytest.fixture
def run_dir(tmp_path):
    from torch.utils.tensorboard import SummaryWriter
    run = tmp_path / 'run'
    with SummaryWriter(run / 'tensorboard') as w:
        for step in range(1, 6):
            for k in ('mid', 'mma', 'ofr', 'dac'): w.add_scalar(f'metric/loss_{k}', 1.0 / step, step)
            w.add_scalar('metric/cls_acc', step / 5, step)
            w.add_scalar('lr', 2e-4, step)
    (run / 'metrics.json').write_text(json.dumps([_record(0, 1), _record(1, 2)]))
    return run


def test_curves(run_dir, tmp_path):
    sc = viz.load_scalars(run_dir)
    assert sc['metric/cls_acc'][0] == [1, 2, 3, 4, 5]
    assert [r['epoch'] for r in viz.load_metrics(run_dir)] == [0, 1]
    fig = viz.plot_curves(run_dir)
    assert len(fig.axes[0].lines) == 4 and len(fig.axes[2].lines) == 4
    _check_png(fig, tmp_path / 'out' / 'curves.png')


def test_curves_empty_folder(tmp_path):
    (tmp_path / 'empty').mkdir()
    _check_png(viz.plot_curves(tmp_path / 'empty'), tmp_path / 'empty.png')


def test_cmc(tmp_path):
    full = {'cmc': torch.linspace(0.3, 1.0, 20), 'mAP': 0.3}
    fig = viz.plot_cmc({'epoch 0': {'i2v': _record(0, 1)['i2v'], 'v2i': _record(0, 1)['v2i']},
                        'trained': {'i2v': full, 'v2i': full}})
    assert [len(ax.lines) for ax in fig.axes] == [2, 2]
    _check_png(fig, tmp_path / 'cmc.png')


def test_ranked_list(tmp_path):
    g_pids, g_cids = [1, 2, 1, 3, 1], [1, 1, 2, 2, 3]
    dist = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    clips = [torch.randint(0, 256, (4, 3, 16, 8), dtype=torch.uint8) for _ in g_pids]
    ranked = viz.rank_gallery(dist, 1, 1, g_pids, g_cids, topk=3)
    assert ranked == [(0, 'junk', None), (1, 'wrong', 1), (2, 'match', 2), (3, 'wrong', 3)]
    fig = viz.plot_ranked_list(torch.rand(4, 3, 16, 8), clips, dist, 1, 1, g_pids, g_cids, topk=3)
    assert len(fig.axes) == 5
    _check_png(fig, tmp_path / 'ranked.png')


def test_attention(tmp_path):
    B, T, n, h, w = 2, 4, 2, 4, 2
    masks = [torch.rand(B * T, n, h * w), torch.rand(B * h, n, T * w), torch.rand(B * w, n, T * h)]
    maps = viz.attention_maps(masks, T)
    assert maps.shape == (B, 3, n, T, h, w)
    fig = viz.plot_attention(torch.rand(T, 3, 32, 16), maps[1])
    _check_png(fig, tmp_path / 'attention.png')


def test_load_clip(tmp_path):
    from PIL import Image
    paths = []
    for i in range(5):
        paths.append(tmp_path / f'{i}.jpg')
        Image.new('RGB', (8, 16), (50 * i, 0, 0)).save(paths[-1])
    clip = viz.load_clip(paths, num_frames=3)
    assert clip.shape == (3, 3, 16, 8) and clip.dtype == torch.uint8
