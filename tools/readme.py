"""Render `nbs/index.ipynb` as `README.md` (nbdev_readme needs Quarto, which we cannot install).

Markdown cells are copied as they are; code cells become ```python blocks followed by their text output; cells
marked `#| hide` are left out and `#| ` directive lines are dropped. Image paths and links to notebooks are made
relative to the repository root.

    python tools/readme.py           # write README.md
    python tools/readme.py --check   # exit 1 if README.md differs from what index.ipynb gives
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def _src(cell): return cell['source'] if isinstance(cell['source'], str) else ''.join(cell['source'])

def render(nb:dict)->str:
    "README text for the notebook `nb`."
    parts = []
    for cell in nb['cells']:
        src = _src(cell)
        directives = [l for l in src.splitlines() if l.startswith('#|')]
        if any(d.replace(' ', '') in ('#|hide', '#|eval:false') for d in directives): continue
        body = '\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip('\n')
        if cell['cell_type'] == 'markdown':
            body = body.replace('](images/', '](nbs/images/')
            parts.append(re.sub(r'\]\((?!https?:|nbs/|/)([^)]+\.ipynb)\)', r'](nbs/\1)', body))  # notebook links
            continue
        parts.append(f'```python\n{body}\n```')
        text = ''.join(''.join(o.get('text', '')) if o['output_type'] == 'stream' else ''.join(o.get('data', {}).get('text/plain', ''))
                       for o in cell.get('outputs', []) if o['output_type'] in ('stream', 'execute_result'))
        if text.strip(): parts.append(f'```\n{text.rstrip()}\n```')
    return '\n\n'.join(parts) + '\n'

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    text = render(json.loads((ROOT/'nbs'/'index.ipynb').read_text(encoding='utf-8')))
    readme = ROOT/'README.md'
    if '--check' in argv:
        if readme.read_text(encoding='utf-8') != text:
            sys.exit('README.md differs from nbs/index.ipynb: edit the notebook, then run `make readme`')
        return
    readme.write_text(text, encoding='utf-8')

if __name__ == '__main__': main()
