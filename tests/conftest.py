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


def ansible_shim():
    """A directory holding only the `ansible` package of this venv, to put on PYTHONPATH of
    another interpreter: what AnsiballZ ships to a node (ansible.module_utils), nothing else."""
    import ansible
    shim = os.path.join(REPO, 'build', 'ansible-shim')
    link = os.path.join(shim, 'ansible')
    target = os.path.dirname(ansible.__file__)
    os.makedirs(shim, exist_ok=True)
    if not (os.path.islink(link) and os.readlink(link) == target):
        tmp = '%s.%d' % (link, os.getpid())
        os.symlink(target, tmp)
        os.replace(tmp, link)  # atomic: concurrent runs never see it missing
    return shim


def module_python():
    """The interpreter modules run under: $BAREPOD_TEST_PYTHON (a managed node's Python, see
    tests/integration/test_python_floor.py) or this one."""
    return os.environ.get('BAREPOD_TEST_PYTHON') or sys.executable


# Managed-node Pythons the modules are tested under (tests/integration/test_python_floor.py):
# the floor (_module.MIN_PYTHON) and the newest. $BAREPOD_PYTHON_3_9 (etc.) names one; else it is
# looked for on PATH and in pyenv's versions directory.
NEWEST_PYTHON = (3, 13)
PYENV_ROOT = os.environ.get('PYENV_ROOT') or os.path.expanduser('~/.pyenv')


def _python_version(path):
    try:
        out = subprocess.run([path, '-c', 'import sys; print("%d.%d" % sys.version_info[:2])'],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return tuple(int(x) for x in out.stdout.decode().split('.'))


def find_python(version):
    """An interpreter of that (major, minor) version, or None."""
    import glob
    name = 'python%d.%d' % version
    env = os.environ.get('BAREPOD_PYTHON_%d_%d' % version)
    candidates = [env] if env else []
    candidates += [shutil.which(name)] + sorted(glob.glob(os.path.join(PYENV_ROOT, 'versions', '%d.%d.*' % version, 'bin', name)),
                                                reverse=True)
    candidates += ['/usr/bin/' + name, '/usr/local/bin/' + name]
    for c in candidates:
        if c and os.access(c, os.X_OK) and _python_version(c) == tuple(version):
            return c
    return None


def _pin(requirement):
    with open(os.path.join(REPO, 'requirements.txt')) as f:
        for line in f:
            line = line.split('#')[0].strip()
            if line.lower().startswith(requirement.lower() + '=='):
                return line
    raise AssertionError('%s is not pinned in requirements.txt' % requirement)


def node_python(version):
    """A venv under build/ with a managed node's Python `version` and what a node gets (the pinned
    pyroute2, PyYAML): its python path. Built once (a stamp names the pins). Missing interpreter:
    skip here, fail under CI=true (the floor is then untested)."""
    base = find_python(version)
    if base is None:
        msg = 'no Python %d.%d interpreter found (PATH, %s/versions, $BAREPOD_PYTHON_%d_%d)' % (version + (PYENV_ROOT,) + version)
        if os.environ.get('CI') == 'true':
            pytest.fail(msg)
        pytest.skip(msg)
    venv = os.path.join(REPO, 'build', 'node-python-%d.%d' % version)
    pins = [_pin('pyroute2'), _pin('PyYAML')]
    stamp = os.path.join(venv, '.barepod-installed')
    want = '%s\n%s\n' % (os.path.realpath(base), ' '.join(pins))
    try:
        with open(stamp) as f:
            if f.read() == want:
                return os.path.join(venv, 'bin', 'python')
    except OSError:
        pass
    shutil.rmtree(venv, ignore_errors=True)
    for argv in ([base, '-m', 'venv', venv],
                 [os.path.join(venv, 'bin', 'python'), '-m', 'pip', 'install', '-q', '--disable-pip-version-check'] + pins):
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600, check=False)
        if p.returncode != 0:
            pytest.fail('building %s failed: %s\n%s' % (venv, ' '.join(argv), p.stdout.decode(errors='replace')))
    with open(stamp, 'w') as f:
        f.write(want)
    return os.path.join(venv, 'bin', 'python')


def run_module(name, args, check=False, diff=False, timeout=120, env=None, netns=None, pass_fds=(), python=None):
    """Run plugins/modules/<name>.py in a fresh interpreter as Ansible would; return its JSON.

    python: the interpreter (default module_python()); another than this one gets only the
    `ansible` package of this venv on its path, as a managed node gets it from AnsiballZ.

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
    python = python or module_python()
    shim = [ansible_shim()] if python != sys.executable else []
    e['PYTHONPATH'] = os.pathsep.join([COLLECTIONS_ROOT] + shim + [e.get('PYTHONPATH', '')])
    if shim:
        e['PYTHONDONTWRITEBYTECODE'] = '1'  # no other version's caches in the controller's venv or plugins/
    if env:
        e.update(env)
    try:
        prefix = ['ip', 'netns', 'exec', netns] if netns else []
        p = subprocess.run(
            prefix + [python, '-m', 'ansible_collections.barepod.linux.plugins.modules.' + name, argsfile],
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
