"""End-to-end tests of the console scripts `m3reid-train` / `m3reid-test` on a tiny synthetic dataset (CPU).

What they pin: a checkpoint evaluated by `m3reid-test` gives exactly the training-time numbers; a state dict with the
original code's keys loads (for evaluation, and weights only for training, with a warning); `m3reid-test` refuses a
checkpoint that does not fill the model it builds; each kind of wrong input ends with one clear line and a non-zero
exit status.
"""
import json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

from m3reid.data.synthetic import make_synthetic_hitszvcm

ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')
TINY = ['--arch', 'resnet18', '--pretrained', 'none', '--img_h', '32', '--img_w', '16', '--seq_len', '2',
        '--p_num', '2', '--k_num', '4', '--workers', '0', '--device', 'cpu', '--log_interval', '5']
KEYS_TSV = Path(__file__).parent/'data'/'original-checkpoint-keys.tsv'


@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
    return make_synthetic_hitszvcm(tmp_path_factory.mktemp('data')/'HITSZ-VCM', num_train_ids=6, num_test_ids=4,
                                   img_size=(32, 16), seed=0)


def cli(*args, timeout=120):
    "Run `python -m m3reid.cli ...`; return the CompletedProcess."
    return subprocess.run([sys.executable, '-m', 'm3reid.cli', *map(str, args)], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope='session')
def trained(data_root, tmp_path_factory):
    "A 2-epoch run with a validation split and an epoch-0 evaluation."
    from m3reid.cli import train  # in this interpreter (the subprocess path is covered by test_console_script_exit_status)
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp('runs')/'two_epochs'
    assert train([str(a) for a in ('--dataset_dir', data_root, *TINY, '--epochs', '2', '--test_at_start',
                                   '--test_batch_size', '16', '--val_ids', '2', '--run_dir', run)]) is None
    return run


def test_train_outputs(trained):
    names = sorted(p.name for p in (trained/'modelckpt').iterdir())
    assert names == ['model_best.pth', 'model_epoch-1.pth', 'model_epoch-2.pth', 'state.pth']
    recs = json.loads((trained/'metrics.json').read_text())
    assert [(r['epoch'], r['split']) for r in recs] == [(e, s) for e in (0, 1, 2) for s in ('val', 'test')]
    assert all(r['num_query']['i2v'] + r['num_query']['v2i'] == r['num_gallery']['i2v'] + r['num_gallery']['v2i']
               for r in recs if r['split'] == 'val')  # the held-out tracklets are both query and gallery
    best = max((r for r in recs if r['split'] == 'val' and r['epoch'] > 0), key=lambda r: (r['i2v']['mAP'] + r['v2i']['mAP']) / 2)
    from m3reid.engine.checkpoint import load_checkpoint
    ck = load_checkpoint(trained/'modelckpt'/'model_best.pth')
    assert ck['epoch'] == best['epoch'] and ck['num_classes'] == 4 and ck['selected_on'] == 'validation'
    assert all(r['selected_on'] == 'validation' for r in recs if r['epoch'] > 0)
    for r in recs:
        assert set(r['i2v']) == {'r1', 'r5', 'r10', 'r20', 'mAP', 'mINP'} and all(0 <= v <= 1 for v in r['v2i'].values())
        assert (r['dataset'], r['protocol'], r['seq_len'], r['test_clips'], r['flip_test'], r['img_size'], r['seed']) == \
               ('HITSZVCM', 'm3reid', 2, 1, False, [32, 16], 0)
    log = next(trained.glob('log_*.txt')).read_text()
    assert log.startswith('Args: TrainConfig(') and 'EVAL - Epoch: [2]' in log and '~' * 100 in log
    assert '(selected on validation)' in log
    assert list((trained/'tensorboard').glob('events.out.tfevents.*'))


def test_test_cli_reproduces_training_metrics(trained, data_root, tmp_path, capsys):
    from m3reid.cli import test
    ck = trained/'modelckpt'/'model_epoch-2.pth'
    # no model options: everything is rebuilt from the checkpoint (and no ImageNet weights are needed)
    assert test([str(a) for a in ('--resume', ck, '--dataset_dir', data_root, '--batch_size', '16', '--workers', '0',
                                  '--device', 'cpu', '--output_dir', tmp_path)]) is None
    out = capsys.readouterr().out
    assert 'EVAL' in out and 'Rank-1' in out
    run = next((tmp_path/'HITSZVCM').iterdir())
    got = json.loads((run/'metrics.json').read_text())
    want = [r for r in json.loads((trained/'metrics.json').read_text()) if r['split'] == 'test'][-1]
    assert len(got) == 1 and got[0]['epoch'] == 2
    for mode in ('i2v', 'v2i'):
        for k, v in want[mode].items(): assert got[0][mode][k] == pytest.approx(v, abs=1e-6), (mode, k)
    assert not any((run/'modelckpt').iterdir())  # no copy of the weights, unlike the original test script


def _original_state_dict():
    "Random tensors with exactly the original checkpoint's keys and shapes (ResNet-50, 500 classes)."
    sd = {}
    for line in KEYS_TSV.read_text().splitlines():
        if line.startswith('#') or line.startswith('key\t') or not line.strip(): continue
        key, shape, dtype = line.split('\t')
        shape = tuple(int(s) for s in shape.strip('()').split(',') if s.strip())
        sd[key] = torch.zeros(shape, dtype=torch.int64) if dtype == 'int64' else torch.randn(shape) * 0.01
        if key.endswith('running_var'): sd[key] = torch.ones(shape)
    return sd


@pytest.mark.skipif(not KEYS_TSV.exists(), reason='reference key list not available')
def test_original_state_dict_loads(data_root, tmp_path, capsys):
    sd = _original_state_dict()
    torch.save(sd, tmp_path/'original.pth')
    # m3reid-test: a plain state dict needs the model options (defaults: ResNet-50, T=6); classes from the classifier
    from m3reid.cli import test
    assert test([str(a) for a in ('--resume', tmp_path/'original.pth', '--dataset_dir', data_root, '--img_h', '32',
                                  '--img_w', '16', '--seq_len', '2', '--workers', '0', '--device', 'cpu',
                                  '--output_dir', tmp_path/'out')]) is None
    cap = capsys.readouterr()
    assert '(plain)' in cap.out and 'does not fill' not in cap.out + cap.err and 'EVAL' in cap.out
    # m3reid-train --resume with a plain state dict: weights only, with a warning; a classifier of another size is
    # dropped (ResNet-18 here, to keep the test fast; the key structure is the same)
    from m3reid.models.registry import build_method
    torch.save(build_method('m3reid', 9, arch='resnet18', pretrained=None)[0].state_dict(), tmp_path/'plain18.pth')
    from m3reid.cli import parse_train_args
    from m3reid.engine.train import train
    cfg = parse_train_args(['--dataset_dir', str(data_root), *TINY, '--epochs', '1', '--test_interval', '5',
                            '--run_dir', str(tmp_path/'ft'), '--resume', str(tmp_path/'plain18.pth')])
    out = train(cfg)
    log = next((tmp_path/'ft').glob('log_*.txt')).read_text()
    assert 'weights only' in log and 'classifier.weight not loaded' in log
    assert out['epochs_done'] == 1


def exit_of(fn, argv, capsys):
    with pytest.raises(SystemExit) as e: fn(argv)
    return e.value.code, capsys.readouterr().err + (e.value.code if isinstance(e.value.code, str) else '')


@pytest.mark.parametrize('case', ['unknown_dataset', 'not_a_dataset', 'wrong_kind', 'missing_ckpt', 'missing_resume',
                                  'garbage_ckpt', 'incompatible_ckpt', 'bad_lr', 'zero_lr', 'bad_keep_last', 'bad_config',
                                  'batch_too_large', 'no_gpu', 'gpu_index', 'resume_auto_no_dir', 'missing_weights'])
def test_bad_input(case, data_root, tmp_path, capsys):
    from m3reid.cli import train, test
    base = ['--dataset_dir', str(data_root), *TINY, '--output_dir', str(tmp_path/'o')]
    (tmp_path/'garbage.pth').write_bytes(b'not a checkpoint at all')
    torch.save({'classifier.weight': torch.zeros(4, 512), 'fc.weight': torch.zeros(3, 3)}, tmp_path/'other.pth')
    cases = {
        'unknown_dataset': (train, base + ['--dataset', 'Market1501'], 'invalid choice'),
        'not_a_dataset': (train, base + ['--dataset_dir', str(tmp_path)], 'not a usable HITSZVCM dataset'),
        'wrong_kind': (train, base + ['--dataset', 'BUPTCampus'], 'not a usable BUPTCampus dataset'),
        'missing_ckpt': (test, ['--resume', str(tmp_path/'nope.pth'), '--device', 'cpu'], 'nope.pth: no such file'),
        'missing_resume': (train, base + ['--resume', str(tmp_path/'nope.pth')], 'checkpoint file not found'),
        'garbage_ckpt': (test, ['--resume', str(tmp_path/'garbage.pth'), '--device', 'cpu'], 'garbage.pth: unreadable'),
        'incompatible_ckpt': (test, ['--resume', str(tmp_path/'other.pth'), '--dataset_dir', str(data_root), '--arch',
                                     'resnet18', '--device', 'cpu', '--output_dir', str(tmp_path/'o')], 'does not fill the model'),
        'bad_lr': (train, base + ['--lr', 'nan'], '--lr nan: expected a finite number'),
        'zero_lr': (train, base + ['--lr', '0'], '--lr 0.0: expected a number > 0'),
        'bad_keep_last': (train, base + ['--keep_last', '0'], '--keep_last 0: expected an integer >= 1'),
        'bad_config': (train, base + ['--config', str(tmp_path/'missing.toml')], 'missing.toml: no such file'),
        'batch_too_large': (train, base + ['--p_num', '50'], '--p_num 50'),
        'no_gpu': (train, base + ['--device', 'cuda'], 'CUDA is not available'),
        'gpu_index': (train, base + ['--device', 'auto', '--gpu', '1'], '--gpu 1'),
        'resume_auto_no_dir': (train, base + ['--resume', 'auto'], 'needs --run_dir'),
        'missing_weights': (train, base + ['--pretrained', 'imagenet'], '--pretrained none'),
    }
    fn, argv, msg = cases[case]
    if case in ('no_gpu', 'gpu_index') and torch.cuda.is_available(): pytest.skip('a GPU is present')
    if case == 'missing_weights':
        from m3reid.models.backbones import hub_checkpoint_dir
        if any(hub_checkpoint_dir().glob('resnet18*.pth')): pytest.skip('ImageNet weights are cached here')
        os.environ['M3REID_OFFLINE'] = '1'
    try: code, err = exit_of(fn, argv, capsys)
    finally: os.environ.pop('M3REID_OFFLINE', None)
    assert code not in (0, None), (case, code)
    assert msg in err and 'Traceback' not in err, (case, err)
    assert not (tmp_path/'o').exists(), 'no run folder for a configuration error'


def test_console_script_exit_status(tmp_path):
    p = cli('train', '--dataset', 'HITSZVCM', '--dataset_dir', tmp_path/'missing', '--pretrained', 'none',
            '--output_dir', tmp_path/'o', timeout=60)
    assert p.returncode == 2 and 'm3reid-train: error:' in p.stderr and 'missing' in p.stderr


def test_test_refuses_checkpoint_of_another_arch(trained, data_root, tmp_path, capsys):
    "A resnet18 snapshot evaluated with --arch resnet34 is refused, with the counts and the cause, and nothing is written."
    from m3reid.cli import test
    code, err = exit_of(test, ['--resume', str(trained/'modelckpt'/'model_epoch-2.pth'), '--arch', 'resnet34',
                               '--dataset_dir', str(data_root), '--device', 'cpu', '--output_dir', str(tmp_path/'o')], capsys)
    assert code == 2 and 'does not fill the model' in err and 'it was trained with --arch resnet18' in err
    assert 'tensors missing' in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path/'o').exists()


@pytest.mark.parametrize('name, dataset, lr', [('hitszvcm_m3reid.toml', 'HITSZVCM', 2e-4), ('buptcampus_m3reid.toml', 'BUPTCampus', 1e-4)])
def test_shipped_configs_are_the_original_runs(name, dataset, lr, data_root):
    from m3reid.cli import parse_train_args
    path = Path(__file__).resolve().parents[1]/'configs'/name
    cfg = parse_train_args(['--config', str(path), '--dataset_dir', str(data_root), '--epochs', '3'])  # the command line wins
    assert (cfg.dataset, cfg.lr, cfg.fp16, cfg.img_h, cfg.img_w, cfg.p_num, cfg.k_num, cfg.seq_len, cfg.arch, cfg.milestones) == \
           (dataset, lr, True, 288, 144, 4, 8, 6, 'resnet50', [80, 120])
    assert (cfg.epochs, cfg.dataset_dir) == (3, str(data_root))
