"""Convert between a notebook and a plain-text cell file, for editing notebooks with a text editor.

Text format: cells are separated by marker lines. `# %%` starts a code cell, `# %% [markdown]` a markdown cell
(its lines are raw markdown, or commented jupytext-style: `# ` prefixes are then removed). Everything before the
first marker is ignored.

    python tools/nbtext.py to-nb  cells.py nbs/30_metrics.ipynb   # text -> notebook (outputs dropped; the ids of
                                                                   # cells matching the existing notebook's are kept)
    python tools/nbtext.py to-txt nbs/30_metrics.ipynb cells.py   # notebook -> text

The notebook stays the source of truth: execute it afterwards (`jupyter nbconvert --execute --inplace`)
and clean it (`nbdev_clean --fname ...`).
"""
import difflib, hashlib, json, re, sys
from pathlib import Path

MARK = re.compile(r'^# %%(?: \[(markdown|md)\])?\s*$')

def _lines(text):
    lines = text.splitlines(keepends=True)
    if lines: lines[-1] = lines[-1].rstrip('\n')
    return lines

def uncomment_markdown(src:str)->str:
    "Strip jupytext-style `# ` prefixes when every line of a markdown cell carries one."
    lines = src.split('\n')
    commented = all(l == '#' or l.startswith('# ') for l in lines) and (len(lines) > 1 or lines[0].startswith('# #'))
    return '\n'.join(l[2:] for l in lines) if commented else src

def text_to_notebook(text:str)->dict:
    "Parse the text cell format into an nbformat v4 notebook dict."
    cells, kind, buf = [], None, []
    def flush():
        if kind is None: return
        src = ''.join(buf).strip('\n')
        if kind == 'markdown': src = uncomment_markdown(src)
        cell_id = hashlib.sha1(f'{len(cells)}:{src}'.encode()).hexdigest()[:8]  # stable: exports don't churn
        cell = {'cell_type': kind, 'id': cell_id, 'metadata': {}, 'source': _lines(src)}
        if kind == 'code': cell.update(execution_count=None, outputs=[])
        cells.append(cell)
    for line in text.splitlines(keepends=True):
        m = MARK.match(line.rstrip('\n'))
        if m:
            flush(); kind, buf = ('markdown' if m.group(1) else 'code'), []
        else: buf.append(line)
    flush()
    return {'cells': cells, 'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}},
            'nbformat': 4, 'nbformat_minor': 5}

def keep_cell_ids(old:dict, new:dict)->dict:
    "Give `new`'s cells the ids of the `old` cells they replace (aligned by source), so that exports don't churn."
    src = lambda c: c['source'] if isinstance(c['source'], str) else ''.join(c['source'])
    oc, nc = old['cells'], new['cells']
    fresh = [c['id'] for c in nc]
    sm = difflib.SequenceMatcher(a=[src(c) for c in oc], b=[src(c) for c in nc], autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == 'equal' or (tag == 'replace' and i2 - i1 == j2 - j1):
            for i, j in zip(range(i1, i2), range(j1, j2)):
                if oc[i]['cell_type'] == nc[j]['cell_type'] and 'id' in oc[i]: nc[j]['id'] = oc[i]['id']
    if len({c['id'] for c in nc}) != len(nc):  # an old id collides with a new hash id: keep the fresh ids
        for c, i in zip(nc, fresh): c['id'] = i
    return new

def notebook_to_text(nb:dict)->str:
    "Render a notebook's cells (sources only) in the text cell format."
    out = []
    for c in nb['cells']:
        src = c['source'] if isinstance(c['source'], str) else ''.join(c['source'])
        out.append(('# %% [markdown]\n' if c['cell_type'] == 'markdown' else '# %%\n') + src.rstrip('\n') + '\n\n')
    return ''.join(out)

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] not in ('to-nb', 'to-txt'): sys.exit(__doc__)
    cmd, src, dst = argv
    if cmd == 'to-nb':
        nb = text_to_notebook(Path(src).read_text(encoding='utf-8'))
        if Path(dst).is_file(): nb = keep_cell_ids(json.loads(Path(dst).read_text(encoding='utf-8')), nb)
        Path(dst).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')
    else:
        Path(dst).write_text(notebook_to_text(json.loads(Path(src).read_text(encoding='utf-8'))), encoding='utf-8')

if __name__ == '__main__': main()
