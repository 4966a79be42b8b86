"""cgroup_limit on this host's REAL cgroups: v1 memory/cpu/cpuacct/cpuset/pids limits and process
placement, real placement on the cgroup2 hierarchy (/sys/fs/cgroup/unified), the chapter's 10-byte
experiment, kernel refusals (EBUSY), and state=absent with processes left.

Every test works below its own uniquely named parent cgroup (barepod-test-<rand>) in every
hierarchy, removed afterwards even on failure (processes moved out, children removed first).
The v2 limit files are exercised on a fixture tree in tests/unit/plugins/module_utils/test__cgroups.py.
"""
import os
import signal
import subprocess
import sys
import uuid

import pytest

from conftest import run_module
from harness import read_until

CGROOT = '/sys/fs/cgroup'


def hierarchies():
    out = []
    with open('/proc/self/mountinfo') as f:
        for line in f:
            parts = line.split()
            i = parts.index('-')
            if parts[i + 1] in ('cgroup', 'cgroup2') and parts[4].startswith(CGROOT + '/'):
                out.append(parts[4])
    return out


class Scratch(object):
    """A uniquely named cgroup parent and the processes spawned into it; a context manager that
    kills them and removes the parent on exit (cleanup)."""

    def __init__(self):
        self.parent = 'barepod-test-%s' % uuid.uuid4().hex[:8]
        self.procs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()

    def path(self, hierarchy, *rel):
        return os.path.join(CGROOT, hierarchy, self.parent, *rel)

    def spawn(self, argv, **kw):
        p = subprocess.Popen(argv, stdin=kw.pop('stdin', subprocess.DEVNULL), **kw)
        self.procs.append(p)
        return p

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for h in hierarchies():
            top = os.path.join(h, self.parent)
            if not os.path.isdir(top):
                continue
            for dirpath, _d, _f in os.walk(top, topdown=False):
                try:
                    with open(os.path.join(dirpath, 'cgroup.procs')) as f:
                        pids = f.read().split()
                except OSError:
                    pids = []
                for pid in pids:
                    try:
                        with open(os.path.join(h, 'cgroup.procs'), 'w') as f:
                            f.write(pid)
                    except OSError:
                        pass
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass


def read(path):
    with open(path) as f:
        return f.read().strip()


def cgroup_of(pid):
    """{hierarchy-controllers: path} from /proc/<pid>/cgroup."""
    out = {}
    with open('/proc/%d/cgroup' % pid) as f:
        for line in f:
            _, ctrls, path = line.rstrip('\n').split(':', 2)
            out[ctrls] = path
    return out


def kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


@pytest.fixture
def scratch():
    with Scratch() as s:
        yield s


UID = '0a1b2c3d-0000-4000-8000-00000000beef'
GREEDY = [{'name': 'any-old-name-will-do',
           'resources': {'limits': {'memory': '200Mi', 'cpu': '500m'}, 'requests': {'memory': '100Mi', 'cpu': '250m'}}}]


def args(scratch, **kw):
    a = dict(pod_uid=UID, parent=scratch.parent)
    a.update(kw)
    return a


def test_v1_limits_written_and_idempotent(scratch):
    r = run_module('cgroup_limit', args(scratch, containers=GREEDY, pids_max='64', cpuset_cpus='0'), diff=True)
    assert not r.failed, r.get('msg')
    assert r.changed and r['qos_class'] == 'Burstable'
    pod = 'burstable/pod' + UID
    assert read(scratch.path('memory', pod, 'memory.limit_in_bytes')) == str(200 * 2 ** 20)
    assert read(scratch.path('cpu', pod, 'cpu.shares')) == '256'
    assert read(scratch.path('cpu', pod, 'cpu.cfs_quota_us')) == '50000'
    assert read(scratch.path('cpu', pod, 'cpu.cfs_period_us')) == '100000'
    assert read(scratch.path('pids', pod, 'pids.max')) == '64'
    assert read(scratch.path('cpuset', pod, 'cpuset.cpus')) == '0'
    assert os.path.isdir(scratch.path('cpuacct', pod)) and os.path.isdir(scratch.path('unified', pod))
    lim = scratch.path('memory', pod, 'memory.limit_in_bytes')
    assert r['diff']['before'][lim] is None and r['diff']['after'][lim] == 200 * 2 ** 20
    # second run: nothing planned, nothing written
    r2 = run_module('cgroup_limit', args(scratch, containers=GREEDY, pids_max='64', cpuset_cpus='0'))
    assert not r2.changed and r2['actions'] == []
    assert r2['settings']['memory.limit_in_bytes'] == 200 * 2 ** 20


def test_v1_second_run_writes_nothing_instrumented(scratch, monkeypatch):
    from ansible_collections.barepod.linux.plugins.module_utils import _cgroups as cg
    writes = []
    real = cg.write_file
    monkeypatch.setattr(cg, 'write_file', lambda p, v: (writes.append(p), real(p, v)))
    p = dict(args(scratch, containers=GREEDY, memory_limit='1000001', swappiness=0, swap='0'), state='present')
    cg.run_limit(p)
    n = len(writes)
    assert n >= 5
    res = cg.run_limit(p)
    assert not res['changed'] and len(writes) == n
    # the kernel rounded 1000001 down to a page multiple, and we compared after that rounding
    assert res['settings']['memory.limit_in_bytes'] == 1000001 // 4096 * 4096
    assert res['settings']['memory.memsw.limit_in_bytes'] == 1000001 // 4096 * 4096


def test_unlimited_normalisation(scratch):
    r = run_module('cgroup_limit', args(scratch, memory_limit='max', containers=[{'name': 'c', 'resources': {}}]))
    assert not r.failed, r.get('msg')
    pod = 'besteffort/pod' + UID
    assert read(scratch.path('memory', pod, 'memory.limit_in_bytes')) == '9223372036854771712'
    assert read(scratch.path('cpu', pod, 'cpu.shares')) == '2'          # BestEffort
    r = run_module('cgroup_limit', args(scratch, memory_limit='max', containers=[{'name': 'c', 'resources': {}}]))
    assert not r.changed and r['settings']['memory.limit_in_bytes'] == 'max'


def test_check_mode_creates_nothing(scratch):
    r = run_module('cgroup_limit', args(scratch, containers=GREEDY), check=True, diff=True)
    assert r.changed and r['diff']['after']
    for h in hierarchies():
        assert not os.path.exists(os.path.join(h, scratch.parent))


def test_processes_placed_in_v1_and_unified(scratch):
    p = scratch.spawn(['sleep', '60'])
    r = run_module('cgroup_limit', args(scratch, containers=GREEDY, container='any-old-name-will-do', pids=[p.pid]))
    assert not r.failed, r.get('msg')
    want = '/%s/burstable/pod%s/any-old-name-will-do' % (scratch.parent, UID)
    cg = cgroup_of(p.pid)
    for ctrl in ('memory', 'cpu', 'cpuacct', 'cpuset', 'pids'):
        assert cg[ctrl] == want, (ctrl, cg)
    assert cg[''] == want, 'real placement on the cgroup2 hierarchy'
    assert p.pid in r['usage']['procs']
    r = run_module('cgroup_limit', args(scratch, containers=GREEDY, container='any-old-name-will-do', pids=[p.pid]))
    assert not r.changed


def test_chapter_experiment_10_bytes(scratch):
    """The chapter: a shell in a memory cgroup limited to 10 bytes cannot run ls; after lifting
    the limit the same shell works again. oom_kill_disable keeps the kernel's OOM killer from
    killing the shell (without it the kernel kills it: memory.oom_control oom_kill 1)."""
    sh = scratch.spawn(['busybox', 'sh', '-i'], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    r = run_module('cgroup_limit', args(scratch, pod_uid='chroot0', memory_limit='10', swappiness=0,
                                        oom_kill_disable=True, pids=[sh.pid]))
    assert not r.failed, r.get('msg')
    memdir = scratch.path('memory', 'besteffort', 'podchroot0')
    assert r['settings']['memory.limit_in_bytes'] == 0          # 10 bytes round down to 0 pages
    assert read(os.path.join(memdir, 'memory.swappiness')) == '0'
    sh.stdin.write(b'ls /; echo "rc=$?"\n')
    sh.stdin.flush()
    out = read_until(sh, b'Cannot allocate memory', 5)
    assert 'rc=0' not in out, out
    if 'Cannot allocate memory' not in out:
        # the charge is waiting in the memcg OOM path instead of failing at once
        assert 'under_oom 1' in read(os.path.join(memdir, 'memory.oom_control')), out
    # lift the limit: the shell survives and works again
    r = run_module('cgroup_limit', args(scratch, pod_uid='chroot0', memory_limit='max', swappiness=0,
                                        oom_kill_disable=True))
    assert r.changed and not r.failed
    assert read(os.path.join(memdir, 'memory.limit_in_bytes')) == '9223372036854771712'
    if 'Cannot allocate memory' not in out:
        out += read_until(sh, b'Cannot allocate memory', 10)
    # busybox ash says "sh: can't fork: Cannot allocate memory", the chapter's bash
    # "bash: fork: Cannot allocate memory"
    assert 'Cannot allocate memory' in out and 'rc=0' not in out, out
    sh.stdin.write(b'ls /; echo "rc2=$?"\n')
    sh.stdin.flush()
    out2 = read_until(sh, b'rc2=', 10)
    assert 'rc2=0' in out2 and 'proc' in out2, out2
    assert sh.poll() is None


def test_limit_below_usage_reports_kernel_ebusy(scratch):
    r = run_module('cgroup_limit', args(scratch, pod_uid='hog'))
    assert not r.failed, r.get('msg')
    # the process joins the memory cgroup before it allocates (v1 does not move charges on attach)
    filler = scratch.spawn([sys.executable, '-c', 'import sys,time; b=bytearray(64<<20); b[::4096]=b"x"*(len(b)//4096);'
                            ' sys.stdout.write("ready\\n"); sys.stdout.flush(); time.sleep(60)'],
                           stdout=subprocess.PIPE, preexec_fn=lambda: _join(scratch, 'besteffort/podhog'))
    assert filler.stdout.readline().strip() == b'ready'
    memdir = scratch.path('memory', 'besteffort', 'podhog')
    assert int(read(os.path.join(memdir, 'memory.usage_in_bytes'))) > 60 << 20
    r = run_module('cgroup_limit', args(scratch, pod_uid='hog', memory_limit='1Mi'))
    assert r.failed
    assert 'Device or resource busy' in r['msg'] and 'EBUSY' in r['msg'] and 'below the current usage' in r['msg']
    assert 'memory.limit_in_bytes' in r['msg']
    assert read(os.path.join(memdir, 'memory.limit_in_bytes')) == '9223372036854771712', 'nothing changed'


def _join(scratch, rel):
    with open(scratch.path('memory', rel, 'cgroup.procs'), 'w') as f:
        f.write(str(os.getpid()))


@pytest.mark.parametrize('kw,field', [
    (dict(memory_limit='10Mx'), 'memory_limit'),
    (dict(memory_limit='-1'), 'memory_limit'),
    (dict(containers=[{'name': 'c', 'resources': {'limits': {'cpu': '1.5.3'}}}]), 'cpu'),
    (dict(parent='../..'), 'parent'),
    (dict(controllers=['rdma']), 'controllers'),
])
def test_bad_input_changes_nothing(scratch, kw, field):
    a = args(scratch)
    a.update(kw)
    r = run_module('cgroup_limit', a)
    assert r.failed and field in r['msg'] and 'Traceback' not in r['msg']
    for h in hierarchies():
        assert not os.path.exists(os.path.join(h, scratch.parent))


def test_absent_with_processes_fail_move_kill(scratch):
    p = scratch.spawn(['sleep', '60'])
    a = args(scratch, containers=GREEDY)
    assert not run_module('cgroup_limit', dict(a, pids=[p.pid])).failed
    r = run_module('cgroup_limit', dict(a, state='absent'))
    assert r.failed and str(p.pid) in r['msg'] and 'on_processes' in r['msg']
    assert os.path.isdir(scratch.path('memory', 'burstable', 'pod' + UID))
    r = run_module('cgroup_limit', dict(a, state='absent', on_processes='move'))
    assert not r.failed and r.changed, r.get('msg')
    assert cgroup_of(p.pid)['memory'] == '/%s/burstable' % scratch.parent
    assert p.poll() is None
    assert not os.path.exists(scratch.path('memory', 'burstable', 'pod' + UID))
    # kill
    assert not run_module('cgroup_limit', dict(a, pids=[p.pid])).failed
    r = run_module('cgroup_limit', dict(a, state='absent', on_processes='kill'))
    assert not r.failed and r.changed, r.get('msg')
    assert p.wait(timeout=10) == -signal.SIGKILL
    for h in hierarchies():
        assert not os.path.exists(os.path.join(h, scratch.parent, 'burstable', 'pod' + UID))
    r = run_module('cgroup_limit', dict(a, state='absent'))
    assert not r.failed and not r.changed


def test_pod_record_section(scratch, tmp_path):
    a = args(scratch, containers=GREEDY, namespace='default', name='core-k8s-greedy', state_root=str(tmp_path))
    assert run_module('cgroup_limit', a).changed
    import json
    rec = json.load(open(tmp_path / 'default_core-k8s-greedy' / 'record.json'))
    assert rec['cgroups']['paths']['memory'] == scratch.path('memory', 'burstable', 'pod' + UID)
    assert rec['uid'] == UID
    assert not run_module('cgroup_limit', a).changed
    assert run_module('cgroup_limit', dict(a, state='absent')).changed
    rec = json.load(open(tmp_path / 'default_core-k8s-greedy' / 'record.json'))
    assert 'cgroups' not in rec


def test_v1_memsw_ordering_when_raising_and_lowering(scratch):
    """memory.memsw.limit_in_bytes must stay >= memory.limit_in_bytes: raising writes memsw
    first, lowering writes memory first; either way the kernel accepts the pair."""
    pod = 'besteffort/pod' + UID
    for mem in ('100Mi', '300Mi', '50Mi'):
        r = run_module('cgroup_limit', args(scratch, memory_limit=mem, swap='0'))
        assert not r.failed, r.get('msg')
        want = str(int(mem[:-2]) << 20)
        assert read(scratch.path('memory', pod, 'memory.limit_in_bytes')) == want
        assert read(scratch.path('memory', pod, 'memory.memsw.limit_in_bytes')) == want
        assert not run_module('cgroup_limit', args(scratch, memory_limit=mem, swap='0')).changed
