"""The README's "Adding a method" runs as written.

Its code blocks are taken from README.md: the Python block introduced by `mymethod.py` becomes that file, the
`pyproject.toml` block is installed the way pip would leave it (the module plus a `*.dist-info` folder with the
entry points it declares, on PYTHONPATH), the other Python block runs, and the `m3reid-train` command runs as written
in a folder holding a tiny synthetic dataset where the demo keeps its data (`synthetic_data/hitszvcm_demo`).
`M3REID_README` may point at another file holding the section (to check a draft).
"""
import os, re, shlex, subprocess, sys
from pathlib import Path

import pytest

from m3reid.data.synthetic import make_synthetic_hitszvcm

if sys.version_info >= (3, 11): import tomllib
else: import tomli as tomllib

README = Path(os.environ.get('M3REID_README', Path(__file__).parents[1]/'README.md'))
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')


def section(text:str, title:str='Adding a method')->str:
    m = re.search(rf'^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)', text, flags=re.M | re.S)
    if m is None: pytest.fail(f"{README} has no '## {title}' section")
    return m.group(1)


def blocks(text:str)->list: # [(language, code, the prose line before it)]
    out = []
    for m in re.finditer(r'^```(\w*)\n(.*?)^```', text, flags=re.M | re.S):
        before = [l for l in text[:m.start()].splitlines() if l.strip()]
        out.append((m.group(1), m.group(2), before[-1] if before else ''))
    return out


def install_from_pyproject(site:Path, pyproject:str):
    "What `pip install -e .` leaves for importlib.metadata: `<name>-<version>.dist-info` with METADATA and entry points."
    project = tomllib.loads(pyproject)['project']
    dist = site/f"{project['name']}-{project['version']}.dist-info"
    dist.mkdir()
    (dist/'METADATA').write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    eps = ''.join(f'[{group}]\n' + ''.join(f'{k} = {v}\n' for k, v in entries.items()) + '\n'
                  for group, entries in project.get('entry-points', {}).items())
    (dist/'entry_points.txt').write_text(eps)
    return project


def commands(bash:str)->list: # each command as an argv, continuation lines joined
    return [shlex.split(c) for c in bash.replace('\\\n', ' ').splitlines() if c.strip() and not c.lstrip().startswith('#')]


def test_adding_a_method_runs_as_written(tmp_path):
    bl = blocks(section(README.read_text()))
    assert [b[0] for b in bl] == ['python', 'toml', 'python', 'bash'], [b[0] for b in bl]
    (_, module, intro), (_, pyproject, _), (_, check, _), (_, bash, _) = bl
    name = re.search(r'`(\w+)\.py`', intro).group(1)
    site = tmp_path/'site'; site.mkdir()
    (site/f'{name}.py').write_text(module)
    project = install_from_pyproject(site, pyproject)
    assert tomllib.loads(pyproject)['tool']['setuptools']['py-modules'] == [name]   # pip installs the module itself
    assert project['entry-points']['m3reid.methods'] == {'mymethod': f'{name}:build'}
    env = dict(ENV, PYTHONPATH=os.pathsep.join([str(site), ENV.get('PYTHONPATH', '')]))

    r = subprocess.run([sys.executable, '-c', check], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{project['name']} {project['version']}" in r.stdout and "'embedding_dim': 512" in r.stdout

    cmds = commands(bash)
    assert [c[0] for c in cmds] == ['m3reid-train']
    argv = cmds[0]
    data = Path(argv[argv.index('--dataset_dir') + 1])
    assert not data.is_absolute()
    make_synthetic_hitszvcm(tmp_path/data, num_train_ids=6, num_test_ids=4, img_size=(32, 16), seed=0)
    exe = Path(sys.executable).parent/'m3reid-train'
    r = subprocess.run([str(exe) if exe.exists() else 'm3reid-train', *argv[1:]], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((tmp_path/'ckptlog'/'HITSZVCM').iterdir())
    assert len(runs) == 1 and (runs[0]/'metrics.json').is_file()
