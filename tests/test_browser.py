"""JupyterLab in a real browser. The test starts the project's JupyterLab (this interpreter's `jupyter lab`, a free
port, a token, no browser of its own) on a copy of `nbs/` (the folder `make lab` serves), opens notebooks in headless
Chromium (Debian's `chromium` package, driven by the `playwright` package from PyPI; no browser is ever downloaded)
and checks what a user sees:

- a notebook made for the purpose runs all its cells: no cell shows an error, `import m3reid` works in the kernel
  (and is this checkout), a picture and LaTeX equations (MathJax) render, a tqdm progress bar and a slider render
  as widgets (not as text), an HTML table renders;
- `index.ipynb` opens and its pictures load (no 404).

Screenshots are kept in `tests/artifacts/browser/` (git-ignored). Without Chromium (or playwright) the tests are
skipped with the reason; `M3REID_CHROMIUM` names another Chromium binary."""
import json, os, secrets, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT/'tests'/'artifacts'/'browser'
CHROMIUM = os.environ.get('M3REID_CHROMIUM', '/usr/bin/chromium')
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--disable-sync', '--no-first-run']


def browser_skip_reason(chromium:str)->str|None:
    "Why the browser tests cannot run here, or None when they can."
    if not Path(chromium).is_file():
        return (f"no Chromium at {chromium}: install Debian's chromium package (apt-get install chromium) "
                f"or set M3REID_CHROMIUM to a Chromium binary")
    try: import playwright.sync_api  # noqa: F401
    except ImportError: return "the playwright package is not installed (pip install playwright; it uses the system Chromium)"
    return None


def _free_port()->int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def check_notebook(nb:dict)->list:
    "Problems of an executed notebook (as saved by JupyterLab): code cells that did not run, error outputs."
    bad = []
    for i, c in enumerate(nb['cells']):
        if c['cell_type'] != 'code': continue
        if c.get('execution_count') is None: bad.append(f'cell {i} did not run')
        bad += [f"cell {i}: {o['ename']}: {o['evalue']}" for o in c.get('outputs', []) if o['output_type'] == 'error']
    return bad


def _check_notebook_text()->dict:
    "The purpose-made notebook: equations, `import m3reid`, a picture, a progress bar, a slider, a table."
    import nbformat
    md = ("# JupyterLab check\n\nInline: $\\mathrm{AP} = \\frac{1}{|P|}\\sum_{k=1}^{|P|} \\frac{k}{r_k}$, and displayed:\n\n"
          "$$d(q, g) = 1 - f_q^\\top f_g$$")
    code = [
        "import m3reid, pathlib\nprint('m3reid', m3reid.__version__, 'from', pathlib.Path(m3reid.__file__).parent)",
        "%matplotlib inline\nimport matplotlib.pyplot as plt\nfrom m3reid.data.synthetic import render_tracklet\n"
        "clip = render_tracklet(0, 3, 1, 'RGB', n=4, img_size=(128, 64))\n"
        "fig, axs = plt.subplots(1, 4, figsize=(4, 2.4))\n"
        "for ax, f in zip(axs, clip): ax.imshow(f); ax.axis('off')\nplt.show()",
        "from tqdm.auto import tqdm\nfor _ in tqdm(range(20), desc='steps'): pass",
        "import ipywidgets as W\nW.IntSlider(value=3, min=0, max=10, description='frame')",
        "from m3reid.explore import Table\nTable([{'mode': 'i2v', 'mAP': 0.5}, {'mode': 'v2i', 'mAP': 0.25}], formats={'mAP': '.1%'})"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(md)] + [nbformat.v4.new_code_cell(c) for c in code])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3 (ipykernel)', 'language': 'python'}
    return nb


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "(base url, token, served folder) of a JupyterLab serving a copy of nbs/ plus the check notebook."
    reason = browser_skip_reason(CHROMIUM)
    if reason: pytest.skip(reason)
    import nbformat
    tmp = tmp_path_factory.mktemp('lab')
    served = tmp/'nbs'
    shutil.copytree(ROOT/'nbs', served, ignore=shutil.ignore_patterns('.ipynb_checkpoints', '__pycache__'))
    nbformat.write(_check_notebook_text(), served/'lab_check.ipynb')
    settings = tmp/'settings'/'@jupyterlab'/'apputils-extension'
    settings.mkdir(parents=True)
    (settings/'notification.jupyterlab-settings').write_text(json.dumps({'fetchNews': 'false', 'checkForUpdates': False}))
    env = {k: v for k, v in os.environ.items() if k != 'MPLBACKEND'}  # the kernel draws inline
    env.update(JUPYTER_CONFIG_DIR=str(tmp/'config'), JUPYTER_RUNTIME_DIR=str(tmp/'runtime'), OMP_NUM_THREADS='1',
               JUPYTERLAB_SETTINGS_DIR=str(tmp/'settings'), JUPYTERLAB_WORKSPACES_DIR=str(tmp/'workspaces'))
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [str(Path(sys.executable).parent/'jupyter'), 'lab', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
           f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={served}']
    if hasattr(os, 'geteuid') and os.geteuid() == 0: cmd.append('--allow-root')
    log = open(tmp/'lab.log', 'w')
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None: pytest.fail(f"jupyter lab exited ({proc.returncode}):\n{(tmp/'lab.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=2); break
            except OSError:
                if time.time() > deadline: pytest.fail(f"jupyter lab did not answer in 120 s:\n{(tmp/'lab.log').read_text()[-3000:]}")
                time.sleep(0.3)
        yield url, token, served
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its kernels
        try: proc.wait(2)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait()
        log.close()


@pytest.fixture(scope='module')
def page(lab):
    "One Chromium page on the JupyterLab, showing the check notebook with its kernel idle; `page.failed` lists 4xx/5xx file loads."
    from playwright.sync_api import sync_playwright
    url, token, _ = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={'width': 1280, 'height': 1300})
        page.failed = []
        page.on('response', lambda r: page.failed.append(f'{r.status} {r.url.split("?")[0]}') if r.status >= 400 else None)
        page.goto(f'{url}/lab/tree/lab_check.ipynb?token={token}')
        page.wait_for_selector(f'{PANEL} .jp-Cell', timeout=90_000)
        page.wait_for_selector('#jp-main-statusbar >> text=Idle', timeout=90_000)
        yield page
        browser.close()


PANEL = '.jp-NotebookPanel:not(.lm-mod-hidden)'  # the notebook in the current tab
NUMBERED = f"""() => {{ const ps = [...document.querySelectorAll('{PANEL} .jp-CodeCell .jp-InputPrompt')].map(e => e.textContent);
    return ps.length > 0 && !ps.some(t => t.includes('*')) && ps.some(t => /\\[\\d+\\]/.test(t)); }}"""


def test_notebook_runs_in_lab(lab, page):
    t0 = time.time()
    page.get_by_role('menuitem', name='Run', exact=True).click()
    page.get_by_role('menuitem', name='Run All Cells', exact=True).click()
    page.wait_for_function(NUMBERED, timeout=120_000)
    page.wait_for_selector(f'{PANEL} .jp-OutputArea-output .widget-hprogress .progress-bar', timeout=30_000)
    page.screenshot(path=str(ARTIFACTS/'lab_check.png'))
    saved = lab[2]/'lab_check.ipynb'
    before = saved.stat().st_mtime_ns
    page.keyboard.press('Control+s')
    deadline = time.time() + 30
    while saved.stat().st_mtime_ns == before and time.time() < deadline: time.sleep(0.2)
    import nbformat
    nb = nbformat.read(saved, as_version=4)  # as JupyterLab saved it after running
    assert not check_notebook(nb), check_notebook(nb)
    out = ''.join(o.get('text', '') for o in nb.cells[1].outputs)
    assert out.startswith('m3reid ') and f"from {ROOT/'m3reid'}" in out, out  # this checkout, through the venv
    imgs = page.evaluate(f"() => [...document.querySelectorAll('{PANEL} .jp-OutputArea-output img')].map(i => [i.complete, i.naturalWidth])")
    assert imgs and all(ok and w > 100 for ok, w in imgs), imgs
    assert page.locator(f'{PANEL} .jp-RenderedMarkdown mjx-container').count() >= 2  # inline and displayed equations
    bar = page.locator(f'{PANEL} .jp-OutputArea-output .widget-hprogress .progress-bar')  # tqdm.auto chose the widget bar
    assert bar.count() == 1 and 'width: 100%' in bar.get_attribute('style')
    assert not [o for o in nb.cells[3].outputs if o.get('name') == 'stderr']  # no text-mode fallback bar
    assert page.locator(f'{PANEL} .jp-OutputArea-output .widget-slider').count() == 1
    assert page.locator(f'{PANEL} .jp-OutputArea-output table td', has_text='25.0%').count() == 1
    print(f'\nJupyterLab check notebook: run and checked in {time.time() - t0:.1f} s')


def test_index_pictures_load(page):
    "index.ipynb, opened from the file browser as a user would: every picture of it loads."
    page.locator('.jp-DirListing-item', has_text='index.ipynb').first.dblclick()
    page.wait_for_selector(f'{PANEL} .jp-RenderedMarkdown img', timeout=60_000)
    page.wait_for_function(f"() => [...document.querySelectorAll('{PANEL} .jp-RenderedMarkdown img')].every(i => i.complete)",
                           timeout=30_000)
    page.screenshot(path=str(ARTIFACTS/'index.png'))
    imgs = page.evaluate(f"() => [...document.querySelectorAll('{PANEL} .jp-RenderedMarkdown img')].map(i => [i.getAttribute('src'), i.naturalWidth])")
    assert not [f for f in page.failed if '/files/' in f], page.failed
    assert imgs and all(w > 0 for _, w in imgs), f"pictures of index.ipynb that did not load: {imgs}"


def test_skipped_without_chromium(tmp_path):
    "Pointed at a missing browser, the browser tests are skipped with the reason."
    env = dict(os.environ, M3REID_CHROMIUM=str(tmp_path/'no'/'chromium'))
    p = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-rs', '-p', 'no:cacheprovider', __file__, '-k', 'runs_in_lab'],
                       env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0 and '1 skipped' in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]
    assert f"no Chromium at {tmp_path/'no'/'chromium'}" in p.stdout and 'apt-get install chromium' in p.stdout


def test_check_notebook():
    nb = {'cells': [{'cell_type': 'markdown'}, {'cell_type': 'code', 'execution_count': 1, 'outputs': []},
                    {'cell_type': 'code', 'execution_count': 2, 'outputs': [{'output_type': 'error', 'ename': 'ZeroDivisionError', 'evalue': 'division by zero'}]},
                    {'cell_type': 'code', 'execution_count': None, 'outputs': []}]}
    assert check_notebook(nb) == ['cell 2: ZeroDivisionError: division by zero', 'cell 3 did not run']
