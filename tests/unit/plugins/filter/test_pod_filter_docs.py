"""Every pod_* filter has its own documentation (plugins/filter/<name>.yml, issue 17 item 6):
ansible-doc renders it, its options and `positional` match the Python signature, and every
example in it runs."""
import glob
import inspect
import json
import os
import subprocess

import pytest
import yaml

from conftest import ANSIBLE_PLAYBOOK, COLLECTIONS_ROOT, REPO, ansible_playbook, failed_tasks

from ansible_collections.barepod.linux.plugins.filter import pod

FILTERS = pod.FilterModule().filters()
DOC_DIR = os.path.join(REPO, 'plugins', 'filter')


def load_doc(name):
    with open(os.path.join(DOC_DIR, name + '.yml')) as f:
        return yaml.safe_load(f)


def test_one_doc_file_per_filter_and_no_shared_page():
    assert sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(DOC_DIR, 'pod_*.yml'))) == sorted(FILTERS)
    # the Python file documents no filter of its own (a shared page would hide the per-filter ones)
    assert not hasattr(pod, 'DOCUMENTATION')


@pytest.mark.parametrize('name', sorted(FILTERS))
def test_options_and_positional_match_the_signature(name):
    doc = load_doc(name)['DOCUMENTATION']
    assert doc['name'] == name
    params = list(inspect.signature(FILTERS[name]).parameters.values())
    args = params[1:]  # the first is the piped value, _input
    assert set(doc['options']) == set(['_input'] + [p.name for p in args]), doc['options']
    assert doc['options']['_input'].get('required') is True
    positional = [s.strip() for s in (doc.get('positional') or '').split(',') if s.strip()]
    assert positional == [p.name for p in args]
    for p in args:
        required = p.default is inspect.Parameter.empty
        assert bool(doc['options'][p.name].get('required')) == required, p.name


def test_ansible_doc_renders_every_filter():
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'), ANSIBLE_COLLECTIONS_PATH=COLLECTIONS_ROOT)
    names = ['barepod.linux.' + n for n in sorted(FILTERS)]
    p = subprocess.run([os.path.join(os.path.dirname(ANSIBLE_PLAYBOOK), 'ansible-doc'), '-t', 'filter', '--json'] + names,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, check=False, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    out = json.loads(p.stdout.decode())
    for n in names:
        doc = out[n]['doc']
        assert doc['name'] == n.split('.')[-1] and doc['short_description'], n
        assert out[n]['examples'].strip(), n
        assert 'raw' not in str(doc['options']['_input'].get('type'))


def test_every_example_runs(tmp_path):
    tasks = []
    for name in sorted(FILTERS):
        examples = yaml.safe_load(load_doc(name)['EXAMPLES'])
        assert examples, name
        used = [t for t in examples if 'barepod.linux.' + name in json.dumps(t)]
        assert used, '%s: no example calls the filter' % name
        tasks.extend(examples)
    book = tmp_path / 'examples.yml'
    book.write_text(yaml.safe_dump([dict(name='The pod_* filters\' examples', hosts='localhost', gather_facts=False,
                                         connection='local', tasks=tasks)]))
    rc, res = ansible_playbook([ANSIBLE_PLAYBOOK, '-i', 'localhost,', str(book)])
    assert rc == 0, json.dumps(failed_tasks(res), indent=1)[:4000]
    ran = [t['task']['name'] for t in res['plays'][0]['tasks']]
    assert ran == [t['name'] for t in tasks]
    for t in res['plays'][0]['tasks']:
        h = t['hosts']['localhost']
        assert not h.get('failed') and not h.get('skipped'), t
