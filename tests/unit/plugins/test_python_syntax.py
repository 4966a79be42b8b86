"""Every file in plugins/ compiles under the oldest managed-node Pythons (issue 17, item 2).

The floor the modules run on is _module.MIN_PYTHON (3.9); ansible-test sanity holds module_utils to
3.8 syntax, so both compile it. Compiling only catches syntax (match, parenthesised context
managers, walrus in the wrong place...); the 3.9+ library calls are caught by running the modules
under the floor in tests/integration/test_python_floor.py.
"""

import os
import subprocess

import pytest

from conftest import REPO, find_python
from ansible_collections.barepod.linux.plugins.module_utils import _module

COMPILE_ALL = r'''
import sys
bad = []
for path in sys.argv[1:]:
    with open(path, 'rb') as f:
        src = f.read()
    try:
        compile(src, path, 'exec', dont_inherit=True)
    except SyntaxError as e:
        bad.append('%s:%s: %s' % (path, e.lineno, e.msg))
print('\n'.join(bad))
sys.exit(1 if bad else 0)
'''


def plugin_files():
    out = []
    for root, dirs, files in os.walk(os.path.join(REPO, 'plugins')):
        dirs[:] = [d for d in dirs if d != '__pycache__']
        out += [os.path.join(root, f) for f in files if f.endswith('.py')]
    return sorted(out)


@pytest.mark.parametrize('version', [(3, 8), _module.MIN_PYTHON], ids=lambda v: '%d.%d' % v)
def test_every_plugin_file_compiles(version):
    python = find_python(version)
    if python is None:
        msg = 'no Python %d.%d interpreter found' % version
        if os.environ.get('CI') == 'true':
            pytest.fail(msg)
        pytest.skip(msg)
    files = plugin_files()
    assert len(files) > 40
    p = subprocess.run([python, '-c', COMPILE_ALL] + files, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    assert p.returncode == 0, p.stdout.decode(errors='replace')


def test_every_module_documents_the_floor():
    import glob
    import yaml
    want = 'Python %d.%d or newer on the managed node' % _module.MIN_PYTHON
    paths = sorted(glob.glob(os.path.join(REPO, 'plugins', 'modules', '*.py')))
    assert paths
    for path in paths:
        ns = {}
        with open(path) as f:
            src = f.read()
        exec(compile(src.split('\nEXAMPLES')[0], path, 'exec'), ns)  # the DOCUMENTATION string only
        doc = yaml.safe_load(ns['DOCUMENTATION'])
        assert any(want in r for r in doc.get('requirements') or ()), path
    with open(os.path.join(REPO, 'README.md')) as f:
        assert 'Python %d.%d or newer' % _module.MIN_PYTHON in f.read()
