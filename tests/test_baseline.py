"""The baseline method (`--model baseline`): its cross-modality hard-mining triplet loss against a direct loop, its
criterion under autocast, and one epoch through `m3reid-train` whose checkpoint `m3reid-test` rebuilds and
evaluates to the same numbers."""
import json

import pytest
import torch

from m3reid.data.synthetic import make_synthetic_hitszvcm
from m3reid.models.baseline import BaselineCriterion, VideoBaseline, cross_modality_triplet
from m3reid.models.registry import build_method, check_method


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def loop_triplet(f, pids, mids, margin):
    d = torch.cdist(f.double(), f.double())
    terms = []
    for i in range(len(f)):
        pos = [d[i, j] for j in range(len(f)) if pids[j] == pids[i] and mids[j] != mids[i]]
        neg = [d[i, j] for j in range(len(f)) if pids[j] != pids[i] and mids[j] != mids[i]]
        if pos and neg: terms.append(torch.relu(max(pos) - min(neg) + margin))
    return (sum(terms) / len(terms)).item() if terms else 0.0


@pytest.mark.parametrize('seed', range(5))
def test_triplet_matches_a_loop(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(4, 20, (1,), generator=g))
    f = torch.randn(n, 8, generator=g) * 3
    pids, mids = torch.randint(0, 4, (n,), generator=g), torch.randint(1, 3, (n,), generator=g)
    for margin in (0.0, 0.3, 5.0):
        got = cross_modality_triplet(f, pids, mids, margin)[0].item()
        assert got == pytest.approx(loop_triplet(f, pids, mids, margin), rel=1e-5, abs=1e-5)


def test_triplet_gradient_moves_the_hard_pairs():
    "One gradient step on the features lowers the loss; clips that are neither hardest nor anchors get no gradient."
    f = torch.tensor([[0., 0.], [3., 0.], [0., 1.], [1., 1.], [9., 9.]], requires_grad=True)
    pids, mids = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([1, 2, 2, 1, 1])
    loss = cross_modality_triplet(f, pids, mids, 0.3)[0]
    loss.backward()
    assert torch.equal(f.grad[4], torch.zeros(2))  # id 2 has no other-modality positive, and is nobody's nearest negative
    with torch.no_grad(): assert cross_modality_triplet(f - 0.1 * f.grad, pids, mids, 0.3)[0] < loss


def test_criterion_under_bf16_autocast():
    torch.manual_seed(0)
    net, crit = build_method('baseline', 4, arch='resnet18', verbose=False)
    x, pids, mids = torch.randn(4, 2, 3, 32, 16), torch.tensor([0, 0, 1, 1]), torch.tensor([1, 2, 1, 2])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = net.train()(x)
        loss, parts = crit(out, pids, mids)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and set(parts) == {'id', 'tri', 'acc'}
    loss.backward()
    assert isinstance(crit, BaselineCriterion) and isinstance(net, VideoBaseline)
    assert crit.margin == 0.3 and build_method('baseline', 4, arch='resnet18', margin=0.5, verbose=False)[1].margin == 0.5


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    data = make_synthetic_hitszvcm(tmp_path_factory.mktemp('data')/'HITSZ-VCM', num_train_ids=6, num_test_ids=4,
                                   img_size=(32, 16), seed=0)
    from m3reid.cli import train
    run_dir = tmp_path_factory.mktemp('runs')/'baseline'
    train(['--model', 'baseline', '--dataset_dir', str(data), '--arch', 'resnet18', '--pretrained', 'none', '--img_h', '32',
           '--img_w', '16', '--seq_len', '2', '--p_num', '2', '--k_num', '4', '--workers', '0', '--device', 'cpu',
           '--epochs', '1', '--sampler', 'cross_modality', '--run_dir', str(run_dir)])
    return data, run_dir


def test_baseline_trains_and_tests_through_the_cli(run, tmp_path, capsys):
    data, run_dir = run
    recs = [r for r in json.loads((run_dir/'metrics.json').read_text()) if r['split'] == 'test']
    assert recs[-1]['epoch'] == 1
    from m3reid.cli import test
    test(['--resume', str(run_dir/'modelckpt'/'model_epoch-1.pth'), '--dataset_dir', str(data), '--workers', '0',
          '--device', 'cpu', '--output_dir', str(tmp_path)])
    got = json.loads(next(tmp_path.glob('HITSZVCM/*/metrics.json')).read_text())[-1]
    for mode in ('i2v', 'v2i'):
        assert got[mode]['mAP'] == pytest.approx(recs[-1][mode]['mAP'], abs=1e-6)
