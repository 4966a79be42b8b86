"""The harness the tests and the benchmarks share: sh(), and a throwaway "node".

Importable without pytest or conftest (tests/reliability/_worker.py runs in a subprocess where no
conftest is loaded, and bench/ scripts are plain programs): tests/ is on sys.path under pytest;
tests/reliability/_node.py and bench/_collection.py put it there otherwise.

- sh(*argv) runs a command and returns its stdout; run(*argv) returns the CompletedProcess.
  Both raise (AssertionError unless told otherwise) naming the command, its exit code and the
  tails of its output when it fails and check is on.
- umount_all(d) detaches every mount under d; mount_workdir(prefix) is a throwaway directory
  that is unmounted and removed on exit (the rootfs tests' `work`).
- Node is a network namespace (`ip netns add`), every pod state root in a tmp dir, cgroups under
  a uniquely named parent, and a marker in the environment of everything started for it
  (BAREPOD_RELNODE=<id>: the modules inherit it from ansible-playbook and the pause processes
  from the modules), so its processes are found and killed by pid, never by name. It runs
  playbooks under `nsenter --net=<node>`, counts what pods leave on it (snapshot) and removes all
  of it (cleanup), even after a failed test.
"""
import contextlib
import ctypes
import glob
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANSIBLE_PLAYBOOK = os.path.join(REPO, '.venv', 'bin', 'ansible-playbook')
CGROUP_ROOT = '/sys/fs/cgroup'
MARKER = 'BAREPOD_RELNODE'
CONTROLLERS = ('cpu', 'cpuacct', 'cpuset', 'memory', 'pids')
CLONE_NEWNET = 0x40000000

_COLLECTIONS = []


def collections_root():
    """A directory holding ansible_collections/barepod/linux -> this checkout: the one `make setup`
    links under .venv/collections, or (without it) a temporary link, made once per process."""
    if not _COLLECTIONS:
        root = os.path.join(REPO, '.venv', 'collections')
        if not os.path.exists(os.path.join(root, 'ansible_collections', 'barepod', 'linux', 'galaxy.yml')):
            root = tempfile.mkdtemp(prefix='barepod-coll-')
            os.makedirs(os.path.join(root, 'ansible_collections', 'barepod'))
            os.symlink(REPO, os.path.join(root, 'ansible_collections', 'barepod', 'linux'))
        _COLLECTIONS.append(root)
    return _COLLECTIONS[0]


# ---------------------------------------------------------------------- commands

def run(*argv, check=True, input=None, timeout=None, env=None, error=AssertionError):
    """Run argv (text in and out, stdin closed unless `input` is given) -> the CompletedProcess.
    With check, a non-zero exit raises `error` naming the command, its rc, stdout and stderr."""
    p = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                       input=input, stdin=subprocess.DEVNULL if input is None else None, timeout=timeout, env=env,
                       check=False)
    if check and p.returncode != 0:
        raise error('%s failed (rc=%s)\nstdout: %s\nstderr: %s'
                    % (' '.join(argv), p.returncode, p.stdout[-3000:], p.stderr[-3000:]))
    return p


def sh(*argv, **kw):
    """run(*argv, **kw).stdout"""
    return run(*argv, **kw).stdout


def in_ns(ns, *argv, **kw):
    """sh() inside the `ip netns` namespace ns."""
    return sh('ip', 'netns', 'exec', ns, *argv, **kw)


def ansible_env(**extra):
    """The environment ansible-playbook runs with: this checkout's collection, the json callback."""
    return dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'), ANSIBLE_STDOUT_CALLBACK='json',
                ANSIBLE_COLLECTIONS_PATH=collections_root(), ANSIBLE_NOCOLOR='1', **extra)


def module_tasks_run(res):
    """The barepod modules a playbook run (json callback result) executed, not skipped, in order;
    loop tasks count once."""
    out = []
    for play in res['plays']:
        for t in play['tasks']:
            h = t['hosts'].get('localhost', {})
            if h.get('action', '').startswith('barepod.linux.') and not h.get('skipped'):
                out.append(h['action'])
    return out


def read_until(proc, marker, timeout):
    """What `proc` (started with stdout=PIPE) prints until `marker` (bytes) shows, its stdout
    closes or `timeout` seconds pass; decoded."""
    buf = b''
    deadline = time.monotonic() + timeout
    while marker not in buf and time.monotonic() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], 0.2)
        if r:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
    return buf.decode(errors='replace')


def enter_netns(path):
    """Move this process (its thread) into the network namespace bound at `path` (setns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), 'setns %s' % path)
    finally:
        os.close(fd)


def umount_all(d, tries=5):
    """Detach every mount under `d`, deepest first, again while any is left (a lazy unmount can
    uncover a mount stacked below it)."""
    from ansible_collections.barepod.linux.plugins.module_utils._rootfs import mounts_under, unmount_order
    libc = ctypes.CDLL('libc.so.6', use_errno=True)
    for _ in range(tries):
        ms = unmount_order(mounts_under(d))
        if not ms:
            return
        for m in ms:
            libc.umount2(m['mountpoint'].encode(), 2)  # MNT_DETACH


@contextlib.contextmanager
def mount_workdir(prefix):
    """A throwaway directory (never under /var/lib/barepod); on exit everything mounted under it is
    detached and it is removed."""
    d = tempfile.mkdtemp(prefix=prefix)
    try:
        yield d
    finally:
        umount_all(d)
        shutil.rmtree(d, ignore_errors=True)


def _proc_environ_has(pid, needle):
    try:
        with open('/proc/%s/environ' % pid, 'rb') as f:
            return needle in f.read()
    except OSError:
        return False


def _readlink(p):
    try:
        return os.readlink(p)
    except OSError:
        return None


# ---------------------------------------------------------------------- the node

class Node(object):
    """A throwaway node. The differences between its users are parameters:

    tmp            the directory every state root goes in (removed by cleanup)
    netns_prefix   prefix of the network namespace's name; cgroup_prefix: of the cgroup parent
    hostdir        the hostPath directory pods may mount (default <tmp>/hostdata, made here)
    prepare        make the state roots now, and the netns dir a shared bind mount of itself (as
                   `ip netns add` leaves /run/netns), so a baseline snapshot already has them
    nsenter        run playbooks under `nsenter --net=<node>` (False: this process is already
                   inside the node's netns, as bench/pod.py is)
    extra_vars     more role variables (e.g. pod_subnet)
    """

    def __init__(self, tmp, netns_prefix='bpr', cgroup_prefix='barepod-rel-', hostdir=None, prepare=True,
                 nsenter=True, **extra_vars):
        self.tmp = tmp
        self.id = uuid.uuid4().hex[:8]
        self.netns = netns_prefix + self.id
        self.cg_parent = cgroup_prefix + self.id
        self.nsenter = nsenter
        if hostdir is None:
            hostdir = os.path.join(tmp, 'hostdata')
            os.makedirs(hostdir)
        self.hostdir = hostdir
        subprocess.run(['ip', 'netns', 'add', self.netns], check=True)
        self.vars = dict(
            pod_state_root=os.path.join(tmp, 'state'), pod_netns_dir=os.path.join(tmp, 'netns'),
            pod_rootfs_root=os.path.join(tmp, 'rootfs'), pod_log_root=os.path.join(tmp, 'logs'),
            pod_cni_data_dir=os.path.join(tmp, 'cni'), pod_cgroup_parent=self.cg_parent + '/kubepods',
            pod_grace_period=1, pod_host_ip='192.0.2.10', pod_allowed_host_paths=[self.hostdir], **extra_vars)
        if prepare:
            for k in ('pod_state_root', 'pod_netns_dir', 'pod_rootfs_root', 'pod_log_root', 'pod_cni_data_dir'):
                os.makedirs(self.vars[k], exist_ok=True)
            # as `ip netns add` leaves /run/netns: a shared bind mount of itself (the sandbox
            # module does the same on first use; done here so the baseline already has it)
            subprocess.run(['mount', '--bind', self.vars['pod_netns_dir'], self.vars['pod_netns_dir']], check=True)
            subprocess.run(['mount', '--make-shared', self.vars['pod_netns_dir']], check=True)
        self.ipam_dir = os.path.join(self.vars['pod_cni_data_dir'], 'barepod')
        self.files = []       # every manifest file written (pod_down of them on a graceful cleanup)
        self.manifests = {}   # name -> manifest dict
        self.last_seconds = None  # how long the last playbook's ansible-playbook ran

    # ------------------------------------------------------------------ manifests
    def manifest_dict(self, name='core-k8s', memory='200Mi'):
        """examples/demo-pod.yaml renamed, its hostPath volume on the node's hostdir."""
        with open(os.path.join(REPO, 'examples', 'demo-pod.yaml')) as f:
            m = yaml.safe_load(f)
        m['metadata']['name'] = name
        m['spec']['volumes'][0]['hostPath']['path'] = self.hostdir
        m['spec']['containers'][0]['resources']['limits']['memory'] = memory
        return m

    def manifest(self, name='core-k8s', memory='200Mi'):
        """manifest_dict() written to <tmp>/<name>.yaml -> its path."""
        m = self.manifest_dict(name, memory)
        path = os.path.join(self.tmp, name + '.yaml')
        with open(path, 'w') as f:
            yaml.safe_dump(m, f)
        if path not in self.files:
            self.files.append(path)
        self.manifests[name] = m
        return path

    # ------------------------------------------------------------------ ansible-playbook
    def env(self, failpoints=None):
        env = ansible_env()
        env[MARKER] = self.id
        env.pop('BAREPOD_FAILPOINTS', None)
        if failpoints:
            env['BAREPOD_FAILPOINTS'] = failpoints
        return env

    def playbook(self, name, files, check=False, failpoints=None, diff=False, timeout=300, **extra):
        """playbooks/<name> on the node -> (rc, stats, result, [failure messages])"""
        v = dict(self.vars, barepod_pod_files=list(files))
        v.update(extra)
        varsfile = os.path.join(self.tmp, 'vars-%s.json' % uuid.uuid4().hex[:6])
        with open(varsfile, 'w') as f:
            json.dump(v, f)
        cmd = ['nsenter', '--net=/run/netns/' + self.netns] if self.nsenter else []
        cmd += [ANSIBLE_PLAYBOOK, os.path.join(REPO, 'playbooks', name), '-e', '@' + varsfile]
        if check:
            cmd.append('--check')
        if diff:
            cmd.append('--diff')
        t = time.perf_counter()
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env(failpoints),
                           timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        self.last_seconds = time.perf_counter() - t
        os.unlink(varsfile)
        out = p.stdout.decode(errors='replace')
        try:
            res = json.loads(out[out.index('{'):])
        except ValueError:
            raise AssertionError('no JSON from ansible-playbook (rc=%d)\n%s\n%s'
                                 % (p.returncode, out[-3000:], p.stderr.decode(errors='replace')[-3000:]))
        stats = res['stats'].get('localhost', {})
        failures = []
        for play in res['plays']:
            for t in play['tasks']:
                h = t['hosts'].get('localhost', {})
                if h.get('failed'):
                    failures.append(dict(task=t['task']['name'], msg=h.get('msg'), rc=h.get('rc'),
                                         module_stderr=(h.get('module_stderr') or '')[-500:]))
        return p.returncode, stats, res, failures

    def run(self, name, files, **kw):
        """playbook() that must succeed -> (stats, result)"""
        rc, stats, res, failures = self.playbook(name, files, **kw)
        assert rc == 0, 'playbook %s failed: %s' % (name, json.dumps(failures, indent=1)[:4000])
        return stats, res

    def up(self, files, **kw):
        return self.run('pod_up.yml', files, **kw)

    def down(self, files, **kw):
        return self.run('pod_down.yml', files, **kw)

    # ------------------------------------------------------------------ observation
    def records(self):
        out = []
        for p in sorted(glob.glob(os.path.join(self.vars['pod_state_root'], '*', 'record.json'))):
            with open(p) as f:
                out.append(json.load(f))
        return out

    def processes(self):
        """{pid: 'pause'|'container'|'other'} of every live process started for this node.

        pause (and anything else a module started): the marker in its environment; containers
        (clean environment, own root): in a cgroup under the node's parent, or in the network
        namespace of one of the node's pause processes."""
        needle = ('%s=%s' % (MARKER, self.id)).encode()
        cg = ('/%s/' % self.cg_parent).encode()
        me = os.getpid()
        out, netns_of = {}, {}
        for d in os.listdir('/proc'):
            if not d.isdigit() or int(d) == me:
                continue
            try:
                with open('/proc/%s/stat' % d) as f:
                    if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                        continue
                with open('/proc/%s/cgroup' % d, 'rb') as f:
                    in_cg = cg in f.read()
            except (OSError, IndexError):
                continue
            if _proc_environ_has(d, needle):
                exe = _readlink('/proc/%s/exe' % d) or ''
                out[int(d)] = 'pause' if '/pause' in exe or 'busybox' in exe else 'other'
            elif in_cg:
                out[int(d)] = 'container'
            else:
                netns_of[int(d)] = _readlink('/proc/%s/ns/net' % d)
        pause_net = set(_readlink('/proc/%d/ns/net' % p) for p, k in out.items() if k == 'pause')
        pause_net.discard(None)
        for p, n in netns_of.items():
            if n in pause_net:
                out[p] = 'container'
        return out

    def links(self):
        p = subprocess.run(['ip', '-n', self.netns, '-o', 'link'], stdout=subprocess.PIPE, check=True)
        return sorted(line.split(':')[1].strip().split('@')[0] for line in p.stdout.decode().splitlines())

    def chains(self):
        """table/chain of both backends (legacy ones prefixed legacy:)."""
        out = []
        for prefix, save in (('', 'iptables-nft-save'), ('legacy:', 'iptables-legacy-save')):
            p = subprocess.run(['ip', 'netns', 'exec', self.netns, save], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, check=True)
            table = None
            for line in p.stdout.decode().splitlines():
                if line.startswith('*'):
                    table = line[1:]
                elif line.startswith(':'):
                    out.append('%s%s/%s' % (prefix, table, line[1:].split()[0]))
        return sorted(out)

    def rules(self, table='nat', backend='nft'):
        p = subprocess.run(['ip', 'netns', 'exec', self.netns, 'iptables-%s-save' % backend, '-t', table],
                           stdout=subprocess.PIPE, check=True)
        return [line for line in p.stdout.decode().splitlines() if line.startswith('-A')]

    def mounts(self):
        with open('/proc/self/mountinfo') as f:
            return sorted(line.split()[4] for line in f if line.split()[4].startswith(self.tmp))

    def cgroups(self):
        out = []
        for ctrl in CONTROLLERS:
            base = os.path.join(CGROUP_ROOT, ctrl, self.cg_parent)
            for d, _dirs, _files in os.walk(base):
                out.append(os.path.relpath(d, CGROUP_ROOT))
        return sorted(out)

    def ipam_files(self):
        try:
            return sorted(n for n in os.listdir(self.ipam_dir) if n[0].isdigit())
        except OSError:
            return []

    def _ls(self, key):
        try:
            return sorted(os.listdir(self.vars[key]))
        except OSError:
            return []

    def snapshot(self):
        """Everything a pod can leave behind on the node, as sorted lists."""
        procs = self.processes()
        return dict(
            processes=sorted('%s:%d' % (k, p) for p, k in procs.items()),
            mounts=self.mounts(), netns=self._ls('pod_netns_dir'), links=self.links(),
            ipam=self.ipam_files(), chains=self.chains(), cgroups=self.cgroups(),
            records=self._ls('pod_state_root'), rootfs=self._ls('pod_rootfs_root'), logs=self._ls('pod_log_root'))

    def pod_cgroups(self):
        """pod<uid> cgroup dirs (any QoS class, any controller)."""
        return [c for c in self.cgroups() if os.path.basename(c).startswith('pod')]

    # ------------------------------------------------------------------ cleanup
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()

    def cleanup(self, teardown=None):
        """Everything by pid and path, even after a failed test: first `teardown` (a callable,
        e.g. pod_down through the role; its errors only reported), then every process
        processes() finds, the mounts under tmp, the cgroup parent, the netns (links, chains and
        addresses go with it) and the directories."""
        if teardown is not None:
            try:
                teardown()
            except Exception as e:  # noqa: BLE001 - fall through to the by-pid cleanup
                print('node cleanup: teardown failed: %s' % e, file=sys.stderr)
        self.kill_all()
        for mp in sorted(self.mounts(), key=len, reverse=True):
            subprocess.run(['umount', '-l', mp], check=False, stderr=subprocess.DEVNULL)
        for ctrl in os.listdir(CGROUP_ROOT):
            base = os.path.join(CGROUP_ROOT, ctrl, self.cg_parent)
            if os.path.isdir(base) and not os.path.islink(os.path.join(CGROUP_ROOT, ctrl)):
                for d, _dirs, _files in sorted(os.walk(base), key=lambda x: len(x[0]), reverse=True):
                    try:
                        os.rmdir(d)
                    except OSError:
                        pass
        subprocess.run(['ip', 'netns', 'del', self.netns], check=False, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.tmp, ignore_errors=True)
        if os.path.relpath(self.hostdir, self.tmp).startswith('..'):
            shutil.rmtree(self.hostdir, ignore_errors=True)

    def kill_all(self):
        for _attempt in range(3):
            procs = self.processes()
            if not procs:
                return
            for pid in procs:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.2)


# ------------------------------------------------------------------ tar fixtures (image layers)

def tar_member(name, kind='file', data=b'', target='', mode=None):
    """(TarInfo, data) of one layer member: file, dir, symlink, hardlink, chr or blk."""
    import tarfile
    ti = tarfile.TarInfo(name)
    ti.mtime = 1700000000
    if kind == 'file':
        ti.type, ti.size, ti.mode = tarfile.REGTYPE, len(data), mode or 0o644
    elif kind == 'dir':
        ti.type, ti.mode = tarfile.DIRTYPE, mode or 0o755
    elif kind == 'symlink':
        ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, target, 0o777
    elif kind == 'hardlink':
        ti.type, ti.linkname = tarfile.LNKTYPE, target
    elif kind == 'chr':
        ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
    elif kind == 'blk':
        ti.type, ti.devmajor, ti.devminor = tarfile.BLKTYPE, 8, 0
    return ti, data


def tar_bytes(members, gz=False):
    """A PAX tar (gzip'd when gz) of (TarInfo, data) members."""
    import gzip
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    raw = buf.getvalue()
    return gzip.compress(raw) if gz else raw
