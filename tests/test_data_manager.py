"""Data managers on synthetic datasets written in the real layouts: both HITSZ-VCM layouts and BUPTCampus parse,
and every kind of bad input raises `DatasetFormatError` naming the file (and line)."""
import json, shutil
from pathlib import Path
import pytest
from m3reid.data.manager import (HITSZVCMDataManager, BUPTCampusDataManager, DatasetFormatError, get_data_manager)
from m3reid.data.synthetic import make_synthetic_hitszvcm, make_synthetic_buptcampus, read_synthetic_info

VCM = dict(num_train_ids=3, num_test_ids=2, num_cameras=3, cams_per_id=2, frames=(12, 13), short_prob=1.0,
           img_size=(16, 8), seed=7)
BUPT = dict(num_train_ids=3, num_test_ids=2, num_aux_ids=1, num_cameras=3, cams_per_id=2, frames=(3, 4),
            img_size=(16, 8), seed=7)

@pytest.fixture(scope='module')
def sources(tmp_path_factory):
    "Pristine synthetic datasets, copied per test so that tests may corrupt them."
    base = tmp_path_factory.mktemp('src')
    return {'vcm': make_synthetic_hitszvcm(base / 'vcm', **VCM),
            'merged': make_synthetic_hitszvcm(base / 'merged', layout='merged', info_at_root=True, **VCM),
            'bupt': make_synthetic_buptcampus(base / 'bupt', **BUPT)}

@pytest.fixture
def copy(sources, tmp_path):
    "copy(name, dst=name) -> a fresh copy of a pristine dataset."
    return lambda name, dst=None: Path(shutil.copytree(sources[name], tmp_path / (dst or name)))

def set_line(path, lineno, text):
    lines = Path(path).read_text().splitlines(); lines[lineno - 1] = text
    Path(path).write_text('\n'.join(lines) + '\n')

def fails(match, fn, *a, **kw):
    "Assert a DatasetFormatError whose message contains `match`."
    with pytest.raises(DatasetFormatError) as e: fn(*a, verbose=False, **kw)
    assert match in str(e.value), str(e.value)
    return str(e.value)

# ---- parsing ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['vcm', 'merged'])
def test_hitszvcm_layouts(sources, name, capsys):
    root = sources[name]
    dm = HITSZVCMDataManager(root, verify=True)
    out = capsys.readouterr().out
    assert 'HITSZVCM' in out and 'gallery' in out and '->' in out
    c = read_synthetic_info(root)['counts']
    for s in ('train', 'query', 'gallery'):
        assert len(getattr(dm, f'{s}_tracks')) == c[s]['tracks']
        assert dm.num_tracks_before_filter[s] == c[s]['tracks_before_filter']
        assert sum(map(len, getattr(dm, f'{s}_tracks'))) == c[s]['images']
        assert min(map(len, getattr(dm, f'{s}_tracks'))) >= 12
    assert dm.layout == ('split' if name == 'vcm' else 'merged')
    assert dm.train_num_pids == 3 and sorted(set(dm.train_track_pids)) == [0, 1, 2]
    raw = [int(Path(t[0]).parts[-4]) for t in dm.train_tracks]
    assert dm.train_track_pids == [sorted(set(raw)).index(p) for p in raw]  # sorted relabelling
    assert all(type(v) is int for v in dm.train_track_pids + dm.query_track_pids + dm.gallery_track_cids)
    assert all(type(t) is tuple and all(Path(p).is_absolute() for p in t) for t in dm.query_tracks)
    assert HITSZVCMDataManager(root, min_seq_len=1, verbose=False).num_tracks_after_filter == dm.num_tracks_before_filter

def test_buptcampus(sources):
    root = sources['bupt']
    dm = get_data_manager('BUPTCampus', root, verify=True, verbose=False)
    c = read_synthetic_info(root)['counts']
    assert len(dm.train_tracks) == c['train']['tracks'] and dm.train_track_mids[:2] == [1, 2]
    assert len(dm.query_tracks) == 2 and len(dm.gallery_tracks) == c['gallery']['tracks']
    assert dm.train_track_pair[:4] == [1, 0, 3, 2]
    dma = BUPTCampusDataManager(root, use_auxiliary=True, verbose=False)
    assert dma.train_num_pids == 4 and dma.train_track_pids[-2:] == [3, 3]

def test_vcm_labels_from_all_training_ids(copy, capsys):
    "Labels and train_num_pids come from every training identity before the length filter, as the original's."
    r = copy('vcm')
    full = HITSZVCMDataManager(r, verbose=False)
    rows = [l.split() for l in (r / 'info/track_train_info.txt').read_text().splitlines()]
    victim = sorted({int(x[3]) for x in rows})[1]                # the middle of the three sorted ids
    for x in rows:
        if int(x[3]) == victim: x[2] = str(int(x[1]) + 5)        # every tracklet of it: 6 frames
    (r / 'info/track_train_info.txt').write_text(''.join(' '.join(x) + '\n' for x in rows))
    dm = HITSZVCMDataManager(r)
    assert dm.train_num_pids == 3 and dm.num_ids_without_tracklet == 1 and dm.pid2label == full.pid2label
    assert sorted(set(dm.train_track_pids)) == [0, 2]            # the others keep their labels
    kept = [(t, p) for t, p in zip(full.train_tracks, full.train_track_pids) if p != 1]
    assert list(zip(dm.train_tracks, dm.train_track_pids)) == kept
    assert 'training labels: 3 identities (all of track_train_info.txt), 1 of them without a tracklet of >= 12 frames' \
        in capsys.readouterr().out
    assert full.num_ids_without_tracklet == 0

def test_check_files_false(copy):
    r = copy('vcm'); frames = sorted((r / 'Train').rglob('*.jpg'))
    for p in frames: p.unlink()
    fails('image not found', HITSZVCMDataManager, r)
    assert len(HITSZVCMDataManager(r, verbose=False, check_files=False).train_tracks) > 0

def test_get_data_manager_unknown(tmp_path):
    with pytest.raises(ValueError, match='valid names: HITSZVCM, BUPTCampus'): get_data_manager('MARS', tmp_path)

# ---- bad HITSZ-VCM input ----------------------------------------------------------------------------------------

def test_vcm_missing_info(copy):
    r = copy('vcm'); (r / 'info/test_name.txt').unlink()
    msg = fails('HITSZ-VCM info files not found', HITSZVCMDataManager, r)
    assert f"{r}/info/: missing test_name.txt" in msg and f"{r}/: missing" in msg

def test_vcm_missing_folder(copy):
    r = copy('vcm'); shutil.rmtree(r / 'Train')
    fails('folder Train/ not found', HITSZVCMDataManager, r)
    fails('dataset folder not found', HITSZVCMDataManager, r / 'nope')

def test_vcm_malformed_name(copy):
    r = copy('vcm'); set_line(r / 'info/test_name.txt', 5, 'garbage.jpg')
    fails(f"{r}/info/test_name.txt, line 5: frame name 'garbage.jpg'", HITSZVCMDataManager, r)

def test_vcm_malformed_row(copy):
    r = copy('merged'); set_line(r / 'track_train_info.txt', 2, '1 a 3 4 5')
    fails(f"{r}/track_train_info.txt, line 2: expected 5 integers", HITSZVCMDataManager, r)

def test_vcm_index_out_of_range(copy):
    r = copy('vcm'); n = len((r / 'info/test_name.txt').read_text().splitlines())
    set_line(r / 'info/track_test_info.txt', 3, f"2 1 {n + 1} 1 1")
    fails(f"track_test_info.txt, line 3: frame index out of range", HITSZVCMDataManager, r)
    set_line(r / 'info/track_test_info.txt', 3, "2 0 4 1 1")
    fails(f"track_test_info.txt, line 3: frame index out of range", HITSZVCMDataManager, r)

def test_vcm_query_multiline_and_bad(copy):
    r = copy('vcm'); q = r / 'info/query_IDX.txt'
    idx = q.read_text().split()
    q.write_text(' '.join(idx[:2]) + '\n' + ' '.join(idx[2:]) + '\n')  # several lines are concatenated
    before = HITSZVCMDataManager(r, verbose=False).num_tracks_before_filter['query']
    assert before == len(idx)
    q.write_text(' '.join(idx) + '\n9999\n')
    fails('query_IDX.txt, line 2: query index 9999 out of range', HITSZVCMDataManager, r)
    q.write_text('1 x\n')
    fails("query_IDX.txt, line 1: query index 'x'", HITSZVCMDataManager, r)

def test_vcm_missing_images(copy):
    r = copy('vcm'); frames = sorted((r / 'Test').rglob('*.jpg'))
    for p in frames[:3]: p.unlink()
    msg = fails('images not found', HITSZVCMDataManager, r, verify=True)
    assert 'test_name.txt, line' in msg

# ---- bad BUPTCampus input ---------------------------------------------------------------------------------------

def test_bupt_missing_files(copy):
    r = copy('bupt'); (r / 'gallery.txt').unlink()
    fails('gallery.txt not found', BUPTCampusDataManager, r)
    r2 = copy('bupt', 'b2'); (r2 / 'train_auxiliary.txt').unlink()
    BUPTCampusDataManager(r2, verbose=False)
    fails('train_auxiliary.txt not found', BUPTCampusDataManager, r2, use_auxiliary=True)
    fails('pass its parent', BUPTCampusDataManager, r2 / 'DATA')

def test_bupt_malformed_lines(copy):
    r = copy('bupt')
    set_line(r / 'query.txt', 2, '5 IR')
    fails(f"{r}/query.txt, line 2: expected 4 tokens", BUPTCampusDataManager, r)
    pid, _, cam, tid = (r / 'train.txt').read_text().splitlines()[0].split()
    set_line(r / 'query.txt', 2, f"{pid} NIR {cam} {tid}")
    fails(f"query.txt, line 2: modality must be 'IR' or 'RGB'", BUPTCampusDataManager, r)
    set_line(r / 'query.txt', 2, f"{pid} IR ZZ9 {tid}")
    fails(f"query.txt, line 2: unknown camera 'ZZ9'", BUPTCampusDataManager, r)
    set_line(r / 'train.txt', 1, f"{pid} IR {cam} {tid}")
    fails(f"{r}/train.txt, line 1: modality must be 'RGB/IR'", BUPTCampusDataManager, r)

def test_bupt_json(copy):
    r = copy('bupt')
    pid, _, cam, tid = (r / 'train.txt').read_text().splitlines()[1].split()
    paths = json.loads((r / 'data_paths.json').read_text())
    del paths[pid]['RGB'][cam][tid]
    (r / 'data_paths.json').write_text(json.dumps(paths))
    fails(f"train.txt, line 2: tracklet {pid}/RGB/{cam}/{tid} not in data_paths.json", BUPTCampusDataManager, r)
    (r / 'data_paths.json').write_text('{\n"1": [1,\n}')
    fails('data_paths.json, line 3: invalid JSON', BUPTCampusDataManager, r)

def test_bupt_missing_images(copy):
    r = copy('bupt'); shutil.rmtree(next((r / 'DATA').iterdir()))
    msg = fails('images not found', BUPTCampusDataManager, r, verify=True)
    assert 'via data_paths.json' in msg and '.txt, line' in msg
    r = copy('bupt', 'b2'); first = json.loads((r / 'data_paths.json').read_text())
    pid, _, cam, tid = (r / 'train.txt').read_text().splitlines()[0].split()
    (r / 'DATA' / first[pid]['IR'][cam][tid][0]).unlink()
    fails('image not found', BUPTCampusDataManager, r)  # without verify: only the first frame is checked
