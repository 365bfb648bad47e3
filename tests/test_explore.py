"""The exploration workbook on a tiny trained run (`m3reid-train`, 1 epoch, ResNet-18 at 32x16 on a synthetic
HITSZ-VCM): the user notebook `nbs/62_explore_run.ipynb` runs end to end in a Jupyter kernel, every cell included
(its cells need a trained run, so `nbdev_test` skips them), its browser widget draws when a query is picked; the
explorer's numbers are the run's own (`metrics.json`), before and after training; a checkpoint file opens with its
dataset given separately, and a dataset that cannot be found is named in one clear error; on BUPTCampus (both
modalities in each split) the modes select their queries by modality, under both protocols."""
import json, os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT/'nbs'/'62_explore_run.ipynb'
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', MPLBACKEND='Agg', PYTHONUNBUFFERED='1')
TRAIN = ['--arch', 'resnet18', '--pretrained', 'none', '--img_h', '32', '--img_w', '16', '--seq_len', '3',
         '--p_num', '2', '--k_num', '2', '--sampler', 'cross_modality', '--epochs', '1', '--test_at_start',
         '--workers', '0', '--device', 'cpu', '--log_interval', '5']


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    "(run folder, dataset folder) of a one-epoch `m3reid-train` run; the dataset path is recorded relative."
    from m3reid.data.synthetic import make_synthetic_hitszvcm
    root = tmp_path_factory.mktemp('explore')
    make_synthetic_hitszvcm(root/'data'/'vcm', num_train_ids=4, num_test_ids=4, num_cameras=3, cams_per_id=2,
                            frames=(12, 14), short_prob=0.0, img_size=(64, 32), seed=0)
    p = subprocess.run([sys.executable, '-m', 'm3reid.cli', 'train', '--dataset_dir', 'data/vcm', '--run_dir', 'runs/tiny',
                        *TRAIN], cwd=root, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return root/'runs'/'tiny', root/'data'/'vcm'


WIDGET_CHECK = """
import m3reid.explore as E
drawn = []
E.show_figure = lambda fig, dpi=80: drawn.append(len(fig.axes))  # the widget draws through it
w = explore_widget(exp, frames=3, topk=3)
(mode_w, query_w), (play_w, frame_w) = w.children[0].children, w.children[3].children
assert query_w.value is None and not drawn  # nothing drawn before a pick
assert repr(w).startswith('query browser') and 'live Python kernel' in repr(w)  # what a page without a kernel shows
query_w.value = query_w.options[0][1]
assert len(drawn) == 2 and drawn[1] == (1 + 3 * 2) * 3 + 1  # the ranked list; 3 frames x (clip + 3 views x 2 heads) + colour bar
frame_w.value = 2
assert frame_w.index == 3 and play_w.max == 3 and drawn[-1] == 1 + 3 * 2 + 1  # one frame, 3 views x 2 heads, colour bar
mode_w.value = 'v2i'
assert query_w.value is None and [q for _, q in query_w.options] == [r['query'] for r in worst_first(query_records(exp, 'v2i'))]
print('widget ok')
"""


def test_notebook_runs_on_a_run(tiny_run):
    "Every cell of the user notebook, `#| notest` ones included, on the tiny run; then the widget, in the same kernel."
    import nbformat
    from nbclient import NotebookClient
    run, _ = tiny_run
    nb = nbformat.read(NB, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(WIDGET_CHECK))
    client = NotebookClient(nb, timeout=300, kernel_name='python3', resources={'metadata': {'path': str(NB.parent)}})
    client.execute(env=dict(ENV, M3REID_RUN=str(run)))  # the kernel's environment
    outs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
    assert not [o for o in outs if o.output_type == 'error']
    pngs = [o for o in outs if {'image/png', 'image/jpeg'} & set(o.get('data', {}))]
    tables = [o for o in outs if '<table>' in o.get('data', {}).get('text/html', '')]
    assert len(pngs) == 10 and len(tables) == 5, (len(pngs), len(tables))  # the committed notebook's counts
    assert 'widget ok' in ''.join(o.get('text', '') for o in nb.cells[-1].outputs)


def test_numbers_are_the_runs(tiny_run):
    "The explorer scores the run's checkpoint exactly as training did, and its untrained model is the epoch-0 model."
    from m3reid.explore import Explorer, summary_table, query_table, MODES
    run, data = tiny_run
    exp = Explorer.from_run(run)
    recs = {r['epoch']: r for r in json.loads((run/'metrics.json').read_text()) if r['split'] == 'test'}
    assert exp.epoch == 1 and exp.checkpoint.name == 'model_best.pth' and Path(exp.args['dataset_dir']) == data.resolve()
    for row in summary_table(exp).rows:
        epoch = 0 if row['model'] == 'untrained' else 1
        assert row['recorded mAP'] == pytest.approx(recs[epoch][row['mode']]['mAP'], abs=1e-9), row
        assert row['mAP'] == pytest.approx(row['recorded mAP'], abs=1e-6), \
            f"{row}: the explorer's score differs from the run's own (for 'untrained': the engine no longer builds " \
            f"its model right after seeding, so the untrained model is not the run's epoch-0 model)"
    for mode in MODES:
        t = query_table(exp, mode)
        assert len(t) == recs[1]['num_query'][mode] and t.rows[0]['AP'] <= t.rows[-1]['AP']


def test_checkpoint_with_its_dataset(tiny_run, tmp_path):
    "A checkpoint file opens with the dataset given apart; a dataset that cannot be found is named."
    from m3reid.explore import Explorer
    run, data = tiny_run
    ckpt = run/'modelckpt'/'model_epoch-1.pth'
    exp = Explorer.from_run(ckpt, dataset_dir=data)
    assert exp.run_dir == run and exp.epoch == 1
    assert exp.retrieval('i2v').result['mAP'] == pytest.approx(Explorer.from_run(run).retrieval('i2v').result['mAP'])
    with pytest.raises(FileNotFoundError, match='pass dataset_dir='):
        Explorer.from_run(ckpt, dataset_dir=tmp_path/'moved')
    with pytest.raises(FileNotFoundError, match='no such run folder'):
        Explorer.from_run(tmp_path/'nothing')


@pytest.mark.parametrize('protocol', ['m3reid', 'official'])
def test_buptcampus(tmp_path, protocol):
    "BUPTCampus mixes both modalities in each split: the modes select queries by modality, under either protocol."
    import torch
    from m3reid.data.manager import get_data_manager
    from m3reid.data.synthetic import make_synthetic_buptcampus
    from m3reid.engine.checkpoint import build_model
    from m3reid.explore import Explorer, MODES, camera_r1, query_records
    from m3reid.metrics import evaluate_cross_modality
    data = make_synthetic_buptcampus(tmp_path/'bupt', num_train_ids=2, num_test_ids=3, num_cameras=3, cams_per_id=2,
                                     frames=(4, 5), img_size=(32, 16), seed=0)
    args = dict(dataset='BUPTCampus', dataset_dir=str(data), model='m3reid', arch='resnet18', pretrained='none',
                img_h=32, img_w=16, seq_len=2, seed=0, eval_protocol=protocol)
    torch.manual_seed(0)
    exp = Explorer(build_model(args, 2, verbose=False)[0], get_data_manager('BUPTCampus', data, verbose=False), args)
    e = exp.embeddings()
    ref = evaluate_cross_modality('BUPTCampus', *[e[s][i] for i in range(4) for s in ('query', 'gallery')], protocol=protocol)
    assert exp.camera_filter == (protocol == 'm3reid')
    for mode, (qm, gm) in zip(MODES, ((1, 2), (2, 1))):
        r = exp.retrieval(mode)
        assert r.query_split == 'query' and r.gallery_split == 'gallery'
        assert (e['query'][3][r.query_idx] == qm).all() and (e['gallery'][3][r.gallery_idx] == gm).all()
        assert r.result['mAP'] == pytest.approx(ref[mode]['mAP'])
        assert len(query_records(exp, mode)) == ref[mode]['num_query']
        qc, gc, r1, n = camera_r1(exp, mode)
        same = [(a, b) for a, ca in enumerate(qc) for b, cb in enumerate(gc) if ca == cb]
        assert n.sum() >= ref[mode]['num_valid']
        assert protocol == 'official' or not any(n[a, b] for a, b in same)  # same camera: junk under the m3reid protocol
