"""Packaging checks: the package imports without the notebook tooling, every console script is installed and
answers --help, `make test`'s sync check catches an unexported or unclean notebook, and JupyterLab serves the
workbook with the package importable in its kernel."""
import json, os, pkgutil, shutil, socket, subprocess, sys, time, urllib.request
from configparser import ConfigParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def settings():
    cfg = ConfigParser(delimiters=['='])
    cfg.read(ROOT/'settings.ini')
    return cfg['DEFAULT']


def all_modules():
    import m3reid
    return ['m3reid'] + [m.name for m in pkgutil.walk_packages(m3reid.__path__, 'm3reid.')]


def test_modules_import_without_notebook_tooling():
    mods = all_modules()
    assert {'m3reid.utils', 'm3reid.bench.core'} <= set(mods)
    code = ('import importlib, sys\n'
            f'for m in {mods!r}: importlib.import_module(m)\n'
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('nbdev', 'IPython', 'execnb', 'fastcore'))\n"
            'print(",".join(bad))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '', f'runtime modules pulled in notebook tooling: {out.stdout}'


def console_scripts():
    return [e.split('=')[0] for e in settings()['console_scripts'].split()]


def test_console_scripts_declared():
    assert set(console_scripts()) == {'m3reid-train', 'm3reid-test', 'm3reid-synth', 'm3reid-demo', 'm3reid-bench',
                                      'm3reid-check-data', 'm3reid-extract', 'm3reid-export', 'm3reid-search'}


@pytest.mark.parametrize('script', console_scripts())
def test_console_script_help(script):
    exe = BIN/script
    assert exe.exists(), f'{script} is not installed in {BIN}: run `make test` (pip install -e .[dev])'
    out = subprocess.run([str(exe), '--help'], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert 'usage:' in out.stdout and script in out.stdout


@pytest.fixture
def project_copy(tmp_path):
    "A copy of the sources with a stamp that tells make the venv is already installed."
    for name in ('nbs', 'm3reid'):
        shutil.copytree(ROOT/name, tmp_path/name, ignore=shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints'))
    for name in ('settings.ini', 'setup.py', 'Makefile', 'README.md'): shutil.copy2(ROOT/name, tmp_path/name)
    for tool in ('nbdev_clean', 'nbdev_export'):  # start from a synced copy whatever the working tree holds
        subprocess.run([str(BIN/tool)], cwd=tmp_path, check=True, capture_output=True, timeout=300)
    (tmp_path/'stamp').touch()
    return tmp_path


def check_sync(path):
    return subprocess.run(['make', '-s', 'check-sync', f'VENV={BIN.parent}', f'STAMP={path/"stamp"}'], cwd=path,
                          capture_output=True, text=True, timeout=300)


def test_sync_check_passes_then_catches_unexported_edit(project_copy):
    ok = check_sync(project_copy)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    nb_path = project_copy/'nbs'/'00_utils.ipynb'
    nb = json.loads(nb_path.read_text())
    cell = next(c for c in nb['cells'] if 'def time_str' in ''.join(c['source']))
    cell['source'] = [l.replace('The current local time', 'The local time now') for l in cell['source']]
    nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    bad = check_sync(project_copy)
    assert bad.returncode != 0
    assert "out of sync" in bad.stdout and "make export" in bad.stdout


def test_sync_check_catches_unclean_notebook(project_copy):
    nb_path = project_copy/'nbs'/'00_utils.ipynb'
    nb = json.loads(nb_path.read_text())
    nb['cells'][1]['execution_count'] = 7
    nb['metadata']['widgets'] = {'state': {}}
    nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    bad = check_sync(project_copy)
    assert bad.returncode != 0
    assert 'not clean' in bad.stdout and 'make clean-nbs' in bad.stdout


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_jupyterlab_serves_workbook(tmp_path):
    port, token = free_port(), 'm3reid-test-token'
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path/'cfg'), JUPYTER_RUNTIME_DIR=str(tmp_path/'rt'))
    cmd = [str(BIN/'jupyter'), 'lab', '--no-browser', '--allow-root', '--ip', '127.0.0.1', f'--port={port}',
           f'--IdentityProvider.token={token}', '--ServerApp.root_dir', str(ROOT/'nbs')]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        url = f'http://127.0.0.1:{port}/api/contents/00_utils.ipynb?token={token}'
        deadline, nb = time.time() + 120, None
        while time.time() < deadline and nb is None:
            assert proc.poll() is None, 'jupyter lab exited early'
            try:
                with urllib.request.urlopen(url, timeout=5) as r: nb = json.load(r)
            except OSError: time.sleep(1)
        assert nb is not None, 'JupyterLab did not answer within 120 s'
        assert nb['type'] == 'notebook' and any('set_seed' in ''.join(c['source']) for c in nb['content']['cells'])
        with urllib.request.urlopen(f'http://127.0.0.1:{port}/lab?token={token}', timeout=10) as r:
            assert r.status == 200 and b'JupyterLab' in r.read()
    finally:
        proc.terminate()
        try: proc.wait(timeout=30)
        except subprocess.TimeoutExpired: proc.kill()


def test_kernel_imports_package():
    from jupyter_client.manager import start_new_kernel
    km, kc = start_new_kernel(kernel_name='python3', cwd=str(ROOT/'nbs'))
    try:
        msg_id = kc.execute('import m3reid.utils, sys; print(m3reid.utils.__file__, sys.executable)')
        out = ''
        while True:
            msg = kc.get_iopub_msg(timeout=120)
            if msg['parent_header'].get('msg_id') != msg_id: continue
            if msg['msg_type'] == 'stream': out += msg['content']['text']
            if msg['msg_type'] == 'error': pytest.fail('\n'.join(msg['content']['traceback']))
            if msg['msg_type'] == 'status' and msg['content']['execution_state'] == 'idle': break
        assert str(ROOT/'m3reid'/'utils.py') in out
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)


def test_readme_is_twin_of_index():
    out = subprocess.run([sys.executable, str(ROOT/'tools'/'readme.py'), '--check'], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_workbook_is_self_contained_and_cells_short():
    "No notebook, module or README cites a document outside the repository, and no code cell is over 60 lines."
    import glob, re
    pat = re.compile(r'\bspec(?:\.md|\s+section|\s+\d)|shared/reference|\bdatasets\.md|\.\./shared', re.I)
    files = sorted(glob.glob(str(ROOT/'nbs'/'*.ipynb')) + glob.glob(str(ROOT/'m3reid'/'**'/'*.py'), recursive=True)) + [str(ROOT/'README.md')]
    cites = [Path(f).name for f in files if pat.search(Path(f).read_text(errors='ignore'))]
    assert not cites, f'these files cite documents outside the repository: {cites}'
    long = [(Path(f).name, len(''.join(c['source']).splitlines())) for f in glob.glob(str(ROOT/'nbs'/'*.ipynb'))
            for c in json.loads(Path(f).read_text())['cells'] if c['cell_type'] == 'code' and len(''.join(c['source']).splitlines()) > 60]
    assert not long, f'code cells over 60 lines: {long}'


def test_every_show_doc_is_shown():
    "A cell displays only its last value, so a cell with several `show_doc` calls would hide all but one."
    import glob, re
    crowded = [(Path(f).name, i) for f in sorted(glob.glob(str(ROOT/'nbs'/'*.ipynb')))
               for i, c in enumerate(json.loads(Path(f).read_text())['cells'])
               if c['cell_type'] == 'code' and len(re.findall(r'^show_doc\(', ''.join(c['source']), re.M)) > 1]
    assert not crowded, f'cells with several show_doc calls (only the last one shows): {crowded}'


def test_public_api_is_documented():
    "Every public function and class a notebook exports has its `show_doc` (benchmarks, the demo and console entry points aside)."
    import ast, glob, re
    skip_nb, skip = re.compile(r'^(7\d_bench\.|80_demo|index)'), re.compile(r'^(build_\w*parser|main|run_\w+|train|test|synth|demo)$')
    undocumented = []
    for f in sorted(glob.glob(str(ROOT/'nbs'/'*.ipynb'))):
        if skip_nb.match(Path(f).name): continue
        srcs = [''.join(c['source']) for c in json.loads(Path(f).read_text())['cells'] if c['cell_type'] == 'code']
        docs = {d.split('.')[-1] for d in re.findall(r'^show_doc\(([\w.]+)', '\n'.join(srcs), re.M)}
        for s in srcs:
            if not s.startswith('#| export'): continue
            names = [n.name for n in ast.parse(s.replace('#| export', '', 1)).body
                     if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith('_')]
            undocumented += [f'{Path(f).name}: {n}' for n in names if not skip.match(n) and n not in docs]
    assert not undocumented, f'public names without show_doc: {undocumented}'
