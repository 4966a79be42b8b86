"""Shared pytest plumbing for barepod.linux.

- Makes `ansible_collections.barepod.linux` importable (the checkout linked by `make setup`
  under .venv/collections, or a temporary link made here).
- `run_module(name, args, check=False, diff=False)` runs a module the way Ansible does:
  a fresh Python process reading {"ANSIBLE_MODULE_ARGS": ...}, returning its JSON result.
- `netns` makes throwaway network namespaces and always deletes them.
- `SandboxPod(tmp)` is a pod built with the ns_sandbox module in throwaway dirs, torn down by
  pid; `wait_log` and `log_sections` read what its containers print.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # tests/harness.py, also when this file is loaded by path

from harness import ANSIBLE_PLAYBOOK, REPO, ansible_env, collections_root  # noqa: E402,F401 - re-exported

COLLECTIONS_ROOT = collections_root()
if COLLECTIONS_ROOT not in sys.path:
    sys.path.insert(0, COLLECTIONS_ROOT)


def is_root():
    return os.geteuid() == 0


requires_root = pytest.mark.skipif(not is_root(), reason='needs root (integration test)')


def pytest_collection_modifyitems(config, items):
    for item in items:
        if '/tests/integration/' in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            if not is_root():
                item.add_marker(pytest.mark.skip(reason='needs root (integration test)'))


class ModuleResult(dict):
    @property
    def failed(self):
        return bool(self.get('failed'))

    @property
    def changed(self):
        return bool(self.get('changed'))


def run_module(name, args, check=False, diff=False, timeout=120, env=None, netns=None, pass_fds=()):
    """Run plugins/modules/<name>.py in a fresh interpreter as Ansible would; return its JSON.

    netns: run it inside that `ip netns` namespace (a throwaway "node"), never the host's.
    pass_fds: open file descriptors the module inherits (as from a careless caller: the raw
    material of the CVE-2024-21626 working-directory escape the reliability tests try).
    """
    payload = dict(args)
    payload['_ansible_check_mode'] = check
    payload['_ansible_diff'] = diff
    with tempfile.NamedTemporaryFile('w', suffix='.json', delete=False) as f:
        json.dump({'ANSIBLE_MODULE_ARGS': payload}, f)
        argsfile = f.name
    e = dict(os.environ)
    e['PYTHONPATH'] = COLLECTIONS_ROOT + os.pathsep + e.get('PYTHONPATH', '')
    if env:
        e.update(env)
    try:
        prefix = ['ip', 'netns', 'exec', netns] if netns else []
        p = subprocess.run(
            prefix + [sys.executable, '-m', 'ansible_collections.barepod.linux.plugins.modules.' + name, argsfile],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            timeout=timeout, env=e, cwd='/', pass_fds=tuple(pass_fds), check=False)
    finally:
        os.unlink(argsfile)
    out = p.stdout.decode(errors='replace')
    start = out.find('{')
    try:
        res = json.loads(out[start:]) if start >= 0 else None
    except ValueError:
        res = None
    if res is None:
        raise AssertionError('module %s printed no JSON (rc=%s)\nstdout: %s\nstderr: %s'
                             % (name, p.returncode, out, p.stderr.decode(errors='replace')))
    r = ModuleResult(res)
    r['_rc'] = p.returncode
    r['_stderr'] = p.stderr.decode(errors='replace')
    return r


def ansible_playbook(argv, timeout=300):
    """Run `argv` (an ansible-playbook command line, possibly behind nsenter) with this
    checkout's collection and the json callback -> (returncode, parsed result)."""
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ansible_env(), timeout=timeout, check=False)
    out = p.stdout.decode()
    try:
        res = json.loads(out[out.index('{'):])
    except ValueError:
        raise AssertionError('no JSON from ansible-playbook (rc=%d)\n%s\n%s' % (p.returncode, out, p.stderr.decode()))
    return p.returncode, res


def failed_tasks(res):
    """The tasks of a json-callback result that failed on any host."""
    return [t for play in res['plays'] for t in play['tasks'] if any(h.get('failed') for h in t['hosts'].values())]


BUSYBOX = '/bin/busybox'


def busybox_rootfs(path, dirs=('proc', 'dev', 'sys', 'tmp', 'etc', 'mnt')):
    """A container root filesystem made by hand (not by chroot_rootfs, which some tests
    exercise instead): the host's busybox-static with every applet linked, and empty `dirs`."""
    os.makedirs(os.path.join(path, 'bin'))
    shutil.copy(BUSYBOX, os.path.join(path, 'bin', 'busybox'))
    applets = subprocess.check_output([BUSYBOX, '--list']).decode().split()
    for a in applets:
        if a != 'busybox':
            os.symlink('busybox', os.path.join(path, 'bin', a))
    for d in dirs:
        os.makedirs(os.path.join(path, d), exist_ok=True)
    return path


@pytest.fixture
def module_runner():
    return run_module


def unique(prefix='bp'):
    return '%s%s' % (prefix, uuid.uuid4().hex[:8])


class SandboxPod(object):
    """A pod built with the ns_sandbox module in throwaway state/netns/log dirs under `tmp`.

    run(...) overrides the pod's own args, may pass leaked fds to the module and failpoints in
    its environment; teardown() (also on leaving it as a context manager) stops it through the
    module logic, then kills only the pids the module reported, unmounts the throwaway netns
    dir and removes `tmp`."""

    def __init__(self, tmp, grace_period=1, timeout=30):
        self.tmp = tmp
        self.name = unique('bp')
        self.base = dict(name=self.name, state_root=os.path.join(tmp, 'state'),
                         netns_dir=os.path.join(tmp, 'netns'), log_root=os.path.join(tmp, 'logs'),
                         grace_period=grace_period)
        self.timeout = timeout
        self.pids = set()

    def rootfs(self, name='rootfs'):
        return busybox_rootfs(os.path.join(self.tmp, name))

    def run(self, check=False, diff=False, pass_fds=(), _env_failpoints=None, **args):
        a = dict(self.base)
        a.update(args)
        env = dict(BAREPOD_FAILPOINTS=_env_failpoints) if _env_failpoints else None
        r = run_module('ns_sandbox', a, check=check, diff=diff, timeout=self.timeout, env=env, pass_fds=pass_fds)
        if r.get('pid'):
            self.pids.add(r['pid'])
        for c in r.get('containers') or []:
            if c.get('pid'):
                self.pids.add(c['pid'])
        return r

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.teardown()

    def teardown_pods(self):
        from ansible_collections.barepod.linux.plugins.module_utils._sandbox import SandboxManager
        SandboxManager(dict(self.base, state='absent', grace_period=0)).run()

    def teardown(self):
        from ansible_collections.barepod.linux.plugins.module_utils._common import pid_alive
        try:
            self.teardown_pods()
        finally:
            for pid in self.pids:
                if pid_alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            if 'netns_dir' in self.base:  # only the throwaway one, never /run/netns
                subprocess.run(['umount', '-l', self.base['netns_dir']], stderr=subprocess.DEVNULL, check=False)
            shutil.rmtree(self.tmp, ignore_errors=True)


def wait_log(path, marker='DONE', timeout=15):
    """The text of the log at `path` once it holds `marker`; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    text = ''
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            text = ''
        if marker in text:
            return text
        time.sleep(0.05)
    raise AssertionError('marker %r not in log %s:\n%s' % (marker, path, text))


def log_sections(text):
    """A container's output split at the `---` lines it prints between its checks."""
    return [s.strip() for s in text.split('---')]


@pytest.fixture
def netns():
    """Factory: netns() -> name of a new `ip netns` namespace, deleted after the test."""
    made = []

    def make(prefix='bpt'):
        name = unique(prefix)
        subprocess.run(['ip', 'netns', 'add', name], check=True)
        made.append(name)
        return name

    yield make
    for name in made:
        subprocess.run(['ip', 'netns', 'del', name], stderr=subprocess.DEVNULL, check=False)


@pytest.fixture
def reliability_log():
    """record(category, item, outcome, **details): one line of evidence for `make reliability`.

    category: 'fault' | 'input' | 'escape' | 'leak'; outcome: 'survived' | 'rejected' | 'blocked'
    | 'clean' | 'FAILED' ... Lines go to $BAREPOD_RELIABILITY_LOG (JSON lines) when it is set;
    the report script turns them into the table. Assertions stay in the tests themselves.
    """
    path = os.environ.get('BAREPOD_RELIABILITY_LOG')

    def record(category, item, outcome, **details):
        if not path:
            return
        line = dict(category=category, item=item, outcome=outcome)
        line.update(details)
        with open(path, 'a') as f:
            f.write(json.dumps(line, sort_keys=True, default=str) + '\n')

    return record
