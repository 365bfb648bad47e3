"""End-to-end checks of the synthetic-dataset CLI (`python -m m3reid.data.synthetic`, `synth_main`):
both real layouts are written, parsed back by the data managers with the counts the writer recorded,
repeated calls are no-ops, conflicting calls fail clearly, and output is deterministic from the seed."""
import hashlib, os, subprocess, sys
from pathlib import Path
import pytest
from m3reid.data.synthetic import synth_main, read_synthetic_info
from m3reid.data.manager import HITSZVCMDataManager, BUPTCampusDataManager, get_data_manager

TINY = ['--num-train-ids', '3', '--num-test-ids', '2', '--num-cameras', '3', '--cams-per-id', '2']

def run_module(*args):
    "Run the CLI as `python -m m3reid.data.synthetic` in a fresh interpreter."
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run([sys.executable, '-m', 'm3reid.data.synthetic', *args], capture_output=True, text=True, env=env, timeout=120)

def tree_digest(root):
    "sha1 over every file's relative path and bytes (markers excluded: they hold timings)."
    h = hashlib.sha1()
    for p in sorted(Path(root).rglob('*')):
        if p.is_file() and not p.name.startswith('.synthetic'):
            h.update(str(p.relative_to(root)).encode()); h.update(p.read_bytes())
    return h.hexdigest()

def check_counts(dm, info):
    "Manager counts equal what the writer recorded; labels contiguous from the sorted raw ids."
    c = info['counts']
    for s in ('query', 'gallery'):
        assert len(getattr(dm, f'{s}_tracks')) == c[s]['tracks']
        assert sum(map(len, getattr(dm, f'{s}_tracks'))) == c[s]['images']
    assert sorted(set(dm.train_track_pids)) == list(range(dm.train_num_pids))

def test_module_cli_hitszvcm_split(tmp_path):
    root = tmp_path / 'vcm'
    r = run_module('--dataset', 'HITSZVCM', '--root', str(root), *TINY, '--short-prob', '1', '--seed', '4')
    assert r.returncode == 0, r.stderr
    assert 'wrote synthetic HITSZVCM' in r.stdout and str(root) in r.stdout
    assert (root / 'Train').is_dir() and (root / 'Test').is_dir() and (root / 'info/query_IDX.txt').is_file()
    dm = HITSZVCMDataManager(root, verify=True, verbose=False)
    info = read_synthetic_info(root)
    check_counts(dm, info)
    assert len(dm.train_tracks) == info['counts']['train']['tracks']
    assert dm.num_tracks_before_filter['train'] == info['counts']['train']['tracks_before_filter'] > len(dm.train_tracks)
    assert set(dm.query_track_mids) == {1} and set(dm.gallery_track_mids) == {2}
    # every query keeps a cross-camera visible match after the same-camera filter
    for qp, qc in zip(dm.query_track_pids, dm.query_track_cids):
        assert any(gp == qp and gc != qc for gp, gc in zip(dm.gallery_track_pids, dm.gallery_track_cids))
    # same parameters again: no-op
    r2 = run_module('--dataset', 'HITSZVCM', '--root', str(root), *TINY, '--short-prob', '1', '--seed', '4')
    assert r2.returncode == 0 and 'already complete' in r2.stdout
    # other parameters on the same folder: clear error, exit status 2
    r3 = run_module('--dataset', 'HITSZVCM', '--root', str(root), *TINY, '--seed', '5')
    assert r3.returncode == 2 and 'other parameters' in r3.stderr and "'seed': (4, 5)" in r3.stderr

def test_synth_main_hitszvcm_merged_info_at_root(tmp_path, capsys):
    root = tmp_path / 'm'
    assert synth_main(['--dataset', 'HITSZVCM', '--root', str(root), *TINY, '--layout', 'merged', '--info-at-root']) is None
    assert 'wrote synthetic HITSZVCM' in capsys.readouterr().out
    assert not (root / 'Train').exists() and (root / 'train_name.txt').is_file() and not (root / 'info').exists()
    dm = get_data_manager('HITSZVCM', root, verify=True, verbose=False)
    assert dm.layout == 'merged' and dm.info_dir == root
    check_counts(dm, read_synthetic_info(root))

def test_synth_main_buptcampus(tmp_path, capsys):
    root = tmp_path / 'b'
    synth_main(['--dataset', 'BUPTCampus', '--root', str(root), *TINY, '--num-aux-ids', '2',
                       '--min-frames', '3', '--max-frames', '5', '--img-h', '32', '--img-w', '16'])
    assert 'wrote synthetic BUPTCampus' in capsys.readouterr().out
    for n in ('DATA', 'data_paths.json', 'train.txt', 'train_auxiliary.txt', 'query.txt', 'gallery.txt'):
        assert (root / n).exists(), n
    info = read_synthetic_info(root)
    dm = BUPTCampusDataManager(root, verify=True, verbose=False)
    check_counts(dm, info)
    assert len(dm.train_tracks) == info['counts']['train']['tracks'] and dm.train_num_pids == 3
    dma = BUPTCampusDataManager(root, use_auxiliary=True, verbose=False)
    assert dma.train_num_pids == 5 and set(dma.train_track_pids[-2:]) <= {3, 4}
    assert set(dm.query_track_mids) | set(dm.gallery_track_mids) == {1, 2}
    assert all(dm.train_track_pair[dm.train_track_pair[i]] == i for i in range(len(dm.train_tracks)))
    from PIL import Image
    assert Image.open(dm.train_tracks[0][0]).size == (16, 32)

def test_deterministic_from_seed(tmp_path):
    args = ['--dataset', 'BUPTCampus', *TINY, '--max-frames', '17', '--quiet']
    a, b, c = tmp_path / 'a', tmp_path / 'b', tmp_path / 'c'
    synth_main([*args, '--root', str(a)]); synth_main([*args, '--root', str(b)]); synth_main([*args, '--root', str(c), '--seed', '1'])
    assert tree_digest(a) == tree_digest(b) != tree_digest(c)

def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit): synth_main(['--dataset', 'BUPTCampus', '--root', str(tmp_path / 'x'), '--layout', 'merged'])
    assert '--layout applies to HITSZVCM only' in capsys.readouterr().err
    with pytest.raises(SystemExit): synth_main(['--dataset', 'HITSZVCM', '--root', str(tmp_path / 'y'), '--cams-per-id', '1'])
    assert 'cams_per_id' in capsys.readouterr().err
    (tmp_path / 'busy').mkdir(); (tmp_path / 'busy/notes.txt').write_text('mine')
    with pytest.raises(SystemExit): synth_main(['--dataset', 'HITSZVCM', '--root', str(tmp_path / 'busy'), *TINY])
    assert 'not empty' in capsys.readouterr().err
    assert (tmp_path / 'busy/notes.txt').read_text() == 'mine'

def test_interrupted_write_is_redone(tmp_path):
    root = tmp_path / 'v'
    args = ['--dataset', 'HITSZVCM', '--root', str(root), *TINY, '--quiet']
    synth_main(args)
    digest = tree_digest(root)
    (root / '.synthetic_complete').rename(root / '.synthetic_incomplete')  # as if killed before the end
    (root / 'Train/junk.jpg').write_bytes(b'x')
    synth_main(args)
    assert (root / '.synthetic_complete').is_file() and not (root / '.synthetic_incomplete').exists()
    assert tree_digest(root) == digest
