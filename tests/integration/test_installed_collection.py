"""The collection as Ansible users get it: built with `ansible-galaxy collection build`,
installed into a fresh collections path, and used from a project directory outside the checkout.

Guards issue 17's packaging and "where files land" defects:
- the tarball carries the license and no caches, virtualenvs, build output or benchmark results;
- it installs offline (no dependency every user must fetch);
- the cgroup audit report lands in the user's project (the directory ansible-playbook runs in),
  and nothing is written inside the installed collection.
"""
import json
import os
import subprocess
import sys
import tarfile

import pytest
import yaml

from conftest import REPO

BIN = os.path.dirname(sys.executable)


def _run(argv, cwd, env, timeout=300):
    p = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    out = p.stdout.decode()
    assert p.returncode == 0, out
    return out


def _tree(root):
    out = {}
    for d, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """(tarball, collections path) with the collection built from this checkout and installed."""
    tmp = tmp_path_factory.mktemp('installed')
    env = dict(os.environ, ANSIBLE_NOCOLOR='1')
    env.pop('ANSIBLE_CONFIG', None)
    env.pop('ANSIBLE_COLLECTIONS_PATH', None)
    _run([os.path.join(BIN, 'ansible-galaxy'), 'collection', 'build', '--output-path', str(tmp / 'dist'), REPO],
         cwd=str(tmp), env=env)
    (tarball,) = [str(p) for p in (tmp / 'dist').iterdir() if p.name.endswith('.tar.gz')]
    colls = tmp / 'collections'
    _run([os.path.join(BIN, 'ansible-galaxy'), 'collection', 'install', '--offline', '-p', str(colls), tarball],
         cwd=str(tmp), env=env)
    return tarball, str(colls)


def test_tarball_has_the_license_and_no_build_output(installed):
    tarball, _ = installed
    with tarfile.open(tarball) as t:
        names = t.getnames()
        manifest = json.load(t.extractfile('MANIFEST.json'))
    assert 'LICENSE' in names
    assert manifest['collection_info']['license_file'] == 'LICENSE'
    assert manifest['collection_info']['dependencies'] == {}
    assert 'example.invalid' not in json.dumps(manifest)
    bad = [n for n in names
           if n.split('/')[0] in ('.venv', 'build', '.git', '.pytest_cache', '.hypothesis', '.ruff_cache', '.ci')
           or n.startswith(('bench/results', 'tests/output')) or '__pycache__' in n or n.endswith(('.pyc', '.tar.gz'))]
    assert bad == []
    for must in ('plugins/modules/ns_sandbox.py', 'roles/pod/tasks/main.yml', 'playbooks/cgroup_audit.yml'):
        assert must in names


def test_cgroup_audit_report_lands_in_the_users_project(installed, tmp_path):
    _, colls = installed
    coll = os.path.join(colls, 'ansible_collections', 'barepod', 'linux')
    before = _tree(coll)
    # a cgroup v2 tree with one Guaranteed pod, as the audit reads it
    root = tmp_path / 'cgroup'
    for rel, mem in (('kubepods', 'max'), ('kubepods/podg1', str(1 << 30)), ('kubepods/podg1/app', str(1 << 30))):
        d = root / rel
        d.mkdir(parents=True)
        for name, text in (('memory.max', mem), ('memory.current', '4096'), ('memory.events', 'oom 0\noom_kill 0'),
                           ('cpu.max', 'max 100000'), ('cpu.weight', '100'), ('pids.max', 'max'),
                           ('pids.current', '1'), ('cgroup.procs', '100' if rel.endswith('app') else '')):
            (d / name).write_text(text + '\n')
    (root / 'cgroup.controllers').write_text('cpu memory pids\n')
    project = tmp_path / 'project'
    project.mkdir()
    inv = {'all': {'hosts': {'node-1': {
        'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable,
        'cgroup_audit_cgroup_root': str(root), 'cgroup_audit_hierarchy': 'v2', 'cgroup_audit_node_memory': '4Gi'}}}}
    (project / 'inventory.yml').write_text(yaml.safe_dump(inv))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=colls, ANSIBLE_NOCOLOR='1', HOME=str(tmp_path / 'home'))
    env.pop('ANSIBLE_CONFIG', None)
    # PWD deliberately stale: the project is where ansible-playbook runs, not what a shell said
    env['PWD'] = '/'
    _run([os.path.join(BIN, 'ansible-playbook'), '-i', 'inventory.yml', 'barepod.linux.cgroup_audit'],
         cwd=str(project), env=env)
    report = project / 'build' / 'cgroup_audit'
    data = json.loads((report / 'cgroup_audit.json').read_text())
    assert [n['node'] for n in data['nodes']] == ['node-1'] and data['totals']['pods'] == 1
    assert (report / 'cgroup_audit.md').exists()
    assert _tree(coll) == before, 'the playbook wrote inside the installed collection'


def test_no_output_default_points_into_the_collection():
    """Every default path a role or playbook writes to is the user's, never playbook_dir/role_path
    (which are inside the installed collection)."""
    offenders = []
    files = [os.path.join(REPO, 'roles', r, sub) for r in os.listdir(os.path.join(REPO, 'roles'))
             for sub in ('defaults/main.yml', 'meta/argument_specs.yml')]
    files += [os.path.join(REPO, 'playbooks', p) for p in os.listdir(os.path.join(REPO, 'playbooks'))]
    for path in files:
        if not os.path.exists(path):
            continue
        for i, line in enumerate(open(path), 1):
            key = line.split(':', 1)[0].strip()
            if ('playbook_dir' in line or 'role_path' in line) and key.endswith(('_dir', '_file', 'default')) \
                    and 'examples/' not in line and 'tools/' not in line:
                offenders.append('%s:%d: %s' % (os.path.relpath(path, REPO), i, line.strip()))
    assert offenders == []
