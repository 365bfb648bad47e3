"""Each figure function of `m3reid.viz` renders on tiny made-up inputs and writes a non-empty PNG."""
import json
from pathlib import Path

import pytest
import torch

from m3reid import viz

PNG = b'\x89PNG\r\n\x1a\n'


def _check_png(fig, path):
    p = viz.save_figure(fig, path)
    data = p.read_bytes()
    assert data[:8] == PNG and len(data) > 2000, f'{p} is not a real PNG ({len(data)} bytes)'


def _legends_outside(fig):
    "Every legend lies below the axes' data area: it hides no curve."
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(fig); canvas.draw()
    r = canvas.get_renderer()
    for ax in fig.axes:
        if ax.get_legend() is not None:
            assert ax.get_legend().get_window_extent(r).y1 <= ax.get_window_extent(r).y0, ax.get_title()
    return True


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
    assert [ax.get_legend() is not None for ax in fig.axes[:3]] == [True] * 3 and _legends_outside(fig)
    _check_png(fig, tmp_path / 'out' / 'curves.png')


def test_curves_empty_folder(tmp_path):
    (tmp_path / 'empty').mkdir()
    _check_png(viz.plot_curves(tmp_path / 'empty'), tmp_path / 'empty.png')


def test_cmc(tmp_path):
    full = {'cmc': torch.linspace(0.3, 1.0, 20), 'mAP': 0.3}
    fig = viz.plot_cmc({'epoch 0': {'i2v': _record(0, 1)['i2v'], 'v2i': _record(0, 1)['v2i']},
                        'trained': {'i2v': full, 'v2i': full}})
    assert [len(ax.lines) for ax in fig.axes] == [2, 2] and _legends_outside(fig)
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


# --- figures of the method, on rendered pedestrians and a random network ---

@pytest.fixture(scope='module')
def tiny_net():
    from m3reid.models.m3reid import M3ReID
    torch.manual_seed(0)
    return M3ReID(4, arch='resnet18', last_stride=1, verbose=False).eval()


@pytest.fixture(scope='module')
def pair():
    return viz.synthetic_clip(3, 1, 'IR', 3, (64, 32)), viz.synthetic_clip(3, 0, 'RGB', 3, (64, 32))


def test_clips_and_view_groups(pair, tmp_path):
    ir, rgb = pair
    assert ir.shape == (3, 3, 64, 32) and ir.dtype == torch.uint8
    _check_png(viz.plot_clips([ir, rgb, ir], labels=['a', 'b', 'c'], ncols=2), tmp_path / 'clips.png')
    _check_png(viz.plot_view_groups(ir, (4, 2)), tmp_path / 'groups.png')


def test_attention_figures(tiny_net, pair, tmp_path):
    x = viz.network_input(list(pair))
    maps = viz.attention_of(tiny_net, x)
    assert maps.shape == (2, 3, 2, 3, 4, 2) and not tiny_net.training
    _check_png(viz.plot_attention(list(pair), {'a': list(maps), 'b': list(maps)}, heads='mean', labels=['ir', 'rgb']),
               tmp_path / 'att.png')
    w, cell = viz.nonlocal_attention(tiny_net, x, (0, 0.5, 0.5), stage=3)
    assert w.shape == (2, 3, 4, 2) and torch.allclose(w.sum((1, 2, 3)), torch.ones(2), atol=1e-5)
    _check_png(viz.plot_nonlocal_attention(list(pair), w, cell), tmp_path / 'nl.png')


def test_architecture_and_loss_terms(tiny_net, pair, tmp_path):
    from m3reid.models.m3reid import training_outputs
    _check_png(viz.plot_architecture(tiny_net, 3, (64, 32), clips=list(pair)), tmp_path / 'arch.png')
    clips = [viz.synthetic_clip(p, c, m, 3, (64, 32)) for p in range(2) for c, m in ((0, 'IR'), (1, 'RGB'))]
    out = training_outputs(tiny_net, viz.network_input(clips), batch_stats=True)
    pids, mids = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 2, 1, 2])
    _check_png(viz.plot_loss_terms(out, pids, mids, clips=clips), tmp_path / 'loss.png')


# --- pictures of a trained run: the notebooks' `#| notest` cells, run on a tiny run ---

NBS = Path(__file__).resolve().parents[1] / 'nbs'
TRAINED_CELL_NOTEBOOKS = ['00_method.ipynb', '11_models.non_local.ipynb', '12_models.mvl.ipynb', '20_losses.ipynb']


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    "A run folder of a ResNet-18 trained for one epoch at 64x32 with last stride 1 (layer4: 4x2 cells)."
    from m3reid.data.synthetic import make_synthetic_hitszvcm
    from m3reid.engine.config import TrainConfig
    from m3reid.engine.train import train
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('pictures')
    data = make_synthetic_hitszvcm(root / 'data', num_train_ids=6, num_test_ids=4, img_size=(64, 32), frames=(12, 13),
                                   short_prob=0, seed=0)
    train(TrainConfig(dataset='HITSZVCM', dataset_dir=str(data), run_dir=str(root / 'run'), arch='resnet18',
                      pretrained='none', img_h=64, img_w=32, last_stride=1, seq_len=4, p_num=2, k_num=4, epochs=1,
                      workers=0, device='cpu', log_interval=50))
    return root / 'run'


def test_load_run_and_readme_figure(tiny_run, tmp_path):
    model, info = viz.load_run(tiny_run)
    assert not model.training and info['epoch'] == 1 and info['args']['last_stride'] == 1
    assert viz.load_run(tiny_run.parent)[1]['path'] == info['path']           # a folder of runs: its newest
    qs, gs = viz.run_test_sets(info)
    assert qs[0][0].shape == (4, 3, 64, 32) and set(qs.mids) == {1} and set(gs.mids) == {2}
    fig = viz.readme_figure(tiny_run, tmp_path / 'readme_top.png')
    assert len(fig.axes) == 1 + 2 + 1 + 5
    data = (tmp_path / 'readme_top.png').read_bytes()
    assert data[:8] == PNG and len(data) > 20000


def _notest_cells(nb):
    cells = json.loads((NBS / nb).read_text())['cells']
    srcs = [''.join(c['source']) for c in cells if c['cell_type'] == 'code']
    return [s for s in srcs if s.lstrip().startswith('#| notest')]


@pytest.mark.parametrize('nb', TRAINED_CELL_NOTEBOOKS)
def test_trained_model_cells(nb, tiny_run, tmp_path, monkeypatch):
    "The cells that draw the pictures of the trained model run as written, on a tiny run."
    cells = _notest_cells(nb)
    assert cells, f'{nb} has no #| notest cell'
    monkeypatch.setenv('M3REID_PICTURES_RUN', str(tiny_run))
    monkeypatch.chdir(NBS)
    shown = []
    def show_figure(fig, dpi=80, format=None):
        shown.append(viz.save_figure(fig, tmp_path / f'{len(shown)}.png', dpi))
    ns = {'show_figure': show_figure, '__name__': '__main__'}
    for src in cells: exec(compile(src, f'{nb}:notest', 'exec'), ns)
    assert shown, f'{nb}: the trained-model cells drew nothing'
    for p in shown: assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000, p
