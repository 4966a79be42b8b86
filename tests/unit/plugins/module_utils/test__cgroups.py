"""_cgroups: detection, normalisation, paths, and the limit manager / audit on FIXTURE trees.

Everything here is a fixture test (no root, no kernel cgroups): a tmp dir made to look like a
cgroup2 mount (cgroup.controllers, cgroup.subtree_control files) or like v1 controller mounts.
Real kernel behaviour is covered by tests/integration/test_cgroup_limit.py and test_cgroup_info.py.
"""
import os

import pytest

from ansible_collections.barepod.linux.plugins.module_utils import _cgroups as cg
from ansible_collections.barepod.linux.plugins.module_utils import _cgaudit as cga
from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError

MOUNTINFO_HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
MOUNTINFO_V2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
MOUNTINFO_SPACE = "30 23 0:26 / /tmp/my\\040root rw - cgroup2 cgroup2 rw\n"


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)


def test_parse_mountinfo_and_detect_hybrid(tmp_path):
    mi = tmp_path / 'mountinfo'
    mi.write_text(MOUNTINFO_HYBRID)
    lay = cg.detect('/sys/fs/cgroup', str(mi))
    assert lay.mode == 'hybrid'
    assert lay.v1['cpu'] == lay.v1['cpuacct'] == '/sys/fs/cgroup/cpu,cpuacct'
    assert lay.unified == '/sys/fs/cgroup/unified'
    assert 'systemd' not in lay.v1
    assert lay.location('memory') == ('v1', '/sys/fs/cgroup/memory')


def test_detect_v2(tmp_path):
    mi = tmp_path / 'mountinfo'
    mi.write_text(MOUNTINFO_V2)
    lay = cg.detect('/sys/fs/cgroup', str(mi))
    assert lay.mode == 'v2' and lay.unified == '/sys/fs/cgroup' and not lay.v1


def test_detect_escaped_mountpoint():
    assert cg.parse_mountinfo(MOUNTINFO_SPACE)[0][0] == '/tmp/my root'


def test_detect_none_is_an_error(tmp_path):
    mi = tmp_path / 'mountinfo'
    mi.write_text(MOUNTINFO_V2)
    with pytest.raises(BarepodError) as e:
        cg.detect(str(tmp_path), str(mi))
    assert 'cgroup_root' in str(e.value)


def test_detect_forced_v1(tmp_path):
    for d in ('memory', 'cpu,cpuacct', 'pids', 'unrelated'):
        (tmp_path / d).mkdir()
    lay = cg.detect(str(tmp_path), hierarchy='v1')
    assert set(lay.v1) == {'memory', 'cpu', 'cpuacct', 'pids'}


@pytest.mark.parametrize('fname,raw,norm', [
    ('memory.limit_in_bytes', '9223372036854771712\n', 'max'),
    ('memory.limit_in_bytes', '-1', 'max'),
    ('memory.limit_in_bytes', '10', 0),
    ('memory.limit_in_bytes', '209715200', 209715200),
    ('memory.limit_in_bytes', '209715201', 209715200),
    ('memory.max', 'max\n', 'max'),
    ('memory.max', '4097', 4096),
    ('memory.swap.max', '0', 0),
    ('cpu.cfs_quota_us', '-1\n', 'max'),
    ('cpu.cfs_quota_us', '50000', 50000),
    ('cpu.max', 'max 100000\n', 'max 100000'),
    ('cpu.max', '50000 100000', '50000 100000'),
    ('cpu.shares', '1', 2),
    ('cpu.shares', '300000', 262144),
    ('pids.max', 'max\n', 'max'),
    ('pids.max', '100', 100),
    ('cpuset.cpus', '0,1,2,5\n', '0-2,5'),
    ('cpuset.cpus', '0-1', '0-1'),
    ('memory.oom_control', 'oom_kill_disable 1\nunder_oom 0\noom_kill 0\n', 1),
    ('memory.oom_control', '1', 1),
])
def test_normalise(fname, raw, norm):
    assert cg.normalise(fname, raw, 4096) == norm


@pytest.mark.parametrize('bad', ['../etc', 'a/../../b', '/abs', 'a b', 'x/./y'])
def test_relpath_rejects(bad):
    with pytest.raises(BarepodError) as e:
        cg.validate_relpath('parent', bad)
    assert 'parent' in str(e.value)


@pytest.mark.parametrize('rel,expected', [
    ('kubepods/burstable/pod123/c', ('Burstable', '123', 'c')),
    ('kubepods/besteffort/podabc', ('BestEffort', 'abc', None)),
    ('kubepods/pod9-8', ('Guaranteed', '9-8', None)),
    ('kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a_2b.slice/cri-containerd-x.scope',
     ('Burstable', '1a-2b', 'cri-containerd-x.scope')),
    ('system.slice/ssh.service', (None, None, None)),
])
def test_parse_pod_path(rel, expected):
    assert cg.parse_pod_path(rel) == expected


def test_cpulist_bad():
    with pytest.raises(BarepodError):
        cg.parse_cpulist('cpuset_cpus', '0-')
    with pytest.raises(BarepodError):
        cg.parse_cpulist('cpuset_cpus', '3-1')


# ------------------------------------------------------------------ fixture v2 tree

@pytest.fixture
def v2tree(tmp_path):
    """FIXTURE: a tmp dir laid out like a cgroup2 mount with memory cpu pids cpuset available."""
    root = tmp_path / 'cg2'
    write(str(root / 'cgroup.controllers'), 'cpuset cpu io memory pids\n')
    write(str(root / 'cgroup.subtree_control'), '')
    write(str(root / 'cgroup.procs'), '1\n')
    return str(root)


class CountingWriter(object):
    def __init__(self, monkeypatch):
        self.writes = []
        real = cg.write_file

        def w(path, value):
            self.writes.append((path, str(value)))
            real(path, value)
        monkeypatch.setattr(cg, 'write_file', w)


def params(root, **kw):
    p = dict(pod_uid='u1', parent='kubepods', cgroup_root=root, hierarchy='v2', state='present',
             containers=[{'name': 'c', 'resources': {'limits': {'memory': '200Mi', 'cpu': '500m'},
                                                     'requests': {'memory': '100Mi', 'cpu': '250m'}}}])
    p.update(kw)
    return p


def test_v2_fixture_limits_idempotent(v2tree, monkeypatch):
    counter = CountingWriter(monkeypatch)
    res = cg.run_limit(params(v2tree, pids_max='100', swap='0', cpuset_cpus='0', cpuset_mems='0'))
    assert res['changed']
    d = os.path.join(v2tree, 'kubepods/burstable/podu1')
    assert open(os.path.join(d, 'memory.max')).read() == str(200 * 2 ** 20)
    # shares 256 -> 35 with runc's quadratic formula (the old linear one gave 10)
    assert open(os.path.join(d, 'cpu.weight')).read() == '35'
    assert open(os.path.join(d, 'cpu.max')).read() == '50000 100000'
    assert open(os.path.join(d, 'pids.max')).read() == '100'
    assert open(os.path.join(d, 'memory.swap.max')).read() == '0'
    assert open(os.path.join(d, 'cpuset.cpus')).read() == '0'
    # controllers enabled from the root down to the pod's parent
    for anc in ('', 'kubepods', 'kubepods/burstable'):
        sc = open(os.path.join(v2tree, anc, 'cgroup.subtree_control')).read()
        assert set(sc.replace('+', '').split()) == {'cpu', 'cpuset', 'memory', 'pids'}
    assert res['settings']['memory.max'] == 200 * 2 ** 20
    n = len(counter.writes)
    assert n > 0
    res2 = cg.run_limit(params(v2tree, pids_max='100', swap='0', cpuset_cpus='0', cpuset_mems='0'))
    assert not res2['changed'] and res2['actions'] == []
    assert len(counter.writes) == n, 'second run must write nothing'


def test_v2_weight_uses_quadratic(v2tree):
    res = cg.run_limit(params(v2tree, containers=[{'name': 'c', 'resources': {'requests': {'cpu': '1'}}}]))
    assert res['settings']['cpu.weight'] == 100


def test_v2_fixture_check_mode_changes_nothing(v2tree):
    before = sorted(os.walk(v2tree))
    res = cg.run_limit(params(v2tree), check_mode=True)
    assert res['changed'] and any(a['action'] == 'mkdir' for a in res['actions'])
    assert sorted(os.walk(v2tree)) == before


def test_v2_fixture_diff_has_old_and_new(v2tree):
    cg.run_limit(params(v2tree))
    res = cg.run_limit(params(v2tree, containers=[{'name': 'c', 'resources': {'limits': {'memory': '300Mi'}}}]))
    path = os.path.join(v2tree, 'kubepods/burstable/podu1/memory.max')
    assert res['diff']['before'][path] == 200 * 2 ** 20
    assert res['diff']['after'][path] == 300 * 2 ** 20


def test_v2_missing_controller_is_an_error(v2tree):
    with open(os.path.join(v2tree, 'cgroup.controllers'), 'w') as f:
        f.write('cpu memory\n')
    with pytest.raises(BarepodError) as e:
        cg.run_limit(params(v2tree, pids_max='10'))
    assert 'pids' in str(e.value) and 'not available' in str(e.value)
    assert not os.path.exists(os.path.join(v2tree, 'kubepods'))


def test_v2_oom_kill_disable_is_v1_only(v2tree):
    with pytest.raises(BarepodError) as e:
        cg.run_limit(params(v2tree, oom_kill_disable=True))
    assert 'oom_kill_disable' in str(e.value)
    assert not os.path.exists(os.path.join(v2tree, 'kubepods'))


@pytest.mark.parametrize('kw,field', [
    (dict(memory_limit='10Mx'), 'memory_limit'),
    (dict(memory_limit='-1Mi'), 'memory_limit'),
    (dict(parent='../../etc'), 'parent'),
    (dict(parent='/etc'), 'parent'),
    (dict(pod_uid='../x'), 'pod_uid'),
    (dict(container='Bad_Name'), 'container'),
    (dict(pids_max='zero'), 'pids_max'),
    (dict(cpuset_cpus='0-'), 'cpuset_cpus'),
    (dict(containers=[{'name': 'c', 'resources': {'limits': {'cpu': '1.5.3'}}}]),
     'containers[0].resources.limits.cpu'),
    (dict(controllers=['rdma']), 'controllers'),
    (dict(pids=[999999999]), 'pids'),
])
def test_bad_input_changes_nothing(v2tree, kw, field):
    before = sorted(os.walk(v2tree))
    with pytest.raises(BarepodError) as e:
        cg.run_limit(params(v2tree, **kw))
    assert field in str(e.value)
    assert sorted(os.walk(v2tree)) == before


def test_v2_absent_fixture(v2tree):
    cg.run_limit(params(v2tree))
    res = cg.run_limit(params(v2tree, state='absent'))
    assert res['changed']
    assert not os.path.exists(os.path.join(v2tree, 'kubepods/burstable/podu1'))
    res = cg.run_limit(params(v2tree, state='absent'))
    assert not res['changed']


def test_v2_absent_refuses_with_processes(v2tree):
    cg.run_limit(params(v2tree))
    write(os.path.join(v2tree, 'kubepods/burstable/podu1/cgroup.procs'), '4242\n')
    with pytest.raises(BarepodError) as e:
        cg.run_limit(params(v2tree, state='absent'))
    assert '4242' in str(e.value) and 'on_processes' in str(e.value)
    assert os.path.isdir(os.path.join(v2tree, 'kubepods/burstable/podu1'))


def test_pod_record(v2tree, tmp_path):
    state = str(tmp_path / 'state')
    cg.run_limit(params(v2tree, namespace='default', name='greedy', state_root=state))
    cg.run_limit(params(v2tree, namespace='default', name='greedy', state_root=state, container='c'))
    from ansible_collections.barepod.linux.plugins.module_utils._state import PodRecord
    sect = PodRecord('default', 'greedy', state).section('cgroups')
    assert sect['path'] == 'kubepods/burstable/podu1'
    assert sect['containers']['c']['path'] == 'kubepods/burstable/podu1/c'
    assert sect['qos_class'] == 'Burstable'
    res = cg.run_limit(params(v2tree, namespace='default', name='greedy', state_root=state))
    assert not res['changed']
    cg.run_limit(params(v2tree, namespace='default', name='greedy', state_root=state, state='absent'))
    assert PodRecord('default', 'greedy', state).section('cgroups') is None


# ------------------------------------------------------------------ audit on a fixture tree

def make_v2_pod(root, rel, memory_max='max', procs='', cpu_max='max 100000', weight='100', events=None):
    d = os.path.join(root, rel)
    write(os.path.join(d, 'memory.max'), memory_max + '\n')
    write(os.path.join(d, 'memory.current'), '4096\n')
    write(os.path.join(d, 'memory.peak'), '8192\n')
    write(os.path.join(d, 'memory.events'), events or 'low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n')
    write(os.path.join(d, 'cpu.max'), cpu_max + '\n')
    write(os.path.join(d, 'cpu.weight'), weight + '\n')
    write(os.path.join(d, 'cpu.stat'), 'usage_usec 10\nuser_usec 5\nsystem_usec 5\nnr_periods 0\n'
                                       'nr_throttled 3\nthrottled_usec 7\n')
    write(os.path.join(d, 'pids.max'), 'max\n')
    write(os.path.join(d, 'pids.current'), '1\n')
    write(os.path.join(d, 'cgroup.procs'), procs)


def test_audit_fixture(v2tree):
    make_v2_pod(v2tree, 'kubepods')
    make_v2_pod(v2tree, 'kubepods/podg1', memory_max=str(2 ** 30))
    make_v2_pod(v2tree, 'kubepods/podg1/app', memory_max=str(2 ** 30), procs='10\n11\n',
                events='oom 1\noom_kill 2\n')
    make_v2_pod(v2tree, 'kubepods/besteffort/podb1', procs='12\n')
    make_v2_pod(v2tree, 'kubepods/burstable/podleak', memory_max=str(2 ** 20))
    make_v2_pod(v2tree, 'kubepods/burstable/podcpu', memory_max=str(2 ** 20), procs='13\n',
                cpu_max='50000 100000', weight='1')
    res = cga.run_info(dict(cgroup_root=v2tree, hierarchy='v2', path='kubepods', node_memory='1Gi',
                           memory_limit_ceiling='512Mi', report='all'))
    s = res['summary']
    assert s['pods'] == 4 and s['memory_limited'] == 3 and s['memory_unlimited'] == 1
    assert s['memory_limits_total'] == 2 ** 30 + 2 * 2 ** 20
    reasons = sorted((v['reason'], v['path']) for v in res['violations'])
    assert reasons == sorted([
        ('no_memory_limit', 'kubepods/besteffort/podb1'),
        ('empty_pod_cgroup', 'kubepods/burstable/podleak'),
        ('memory_limit_above_ceiling', 'kubepods/podg1'),
        ('memory_limit_above_ceiling', 'kubepods/podg1/app'),
        ('cpu_limit_without_request', 'kubepods/burstable/podcpu'),
        ('pod_limits_exceed_node_memory', 'kubepods'),
    ])
    app = [c for c in res['cgroups'] if c['path'] == 'kubepods/podg1/app'][0]
    assert app['qos_class'] == 'Guaranteed' and app['pod_uid'] == 'g1' and app['container'] == 'app'
    assert app['procs'] == 2 and app['events']['oom_kill'] == 2
    assert app['usage']['memory_peak'] == 8192 and app['usage']['nr_throttled'] == 3
    assert app['limits']['cpu_quota'] == 'max'


def test_audit_policies_off_and_missing_subtree(v2tree):
    make_v2_pod(v2tree, 'kubepods/besteffort/podb1')
    res = cga.run_info(dict(cgroup_root=v2tree, hierarchy='v2', node_memory='1Gi', require_memory_limit=False,
                           check_empty_pods=False))
    assert res['violations'] == []
    res = cga.run_info(dict(cgroup_root=v2tree, hierarchy='v2', node_memory='1Gi', path='nothere'))
    assert res['exists'] is False and res['summary']['cgroups'] == 0


def test_audit_bad_path(v2tree):
    with pytest.raises(BarepodError) as e:
        cga.run_info(dict(cgroup_root=v2tree, hierarchy='v2', node_memory='1Gi', path='../x'))
    assert 'path' in str(e.value)


def test_node_memory_total(tmp_path):
    p = tmp_path / 'meminfo'
    p.write_text('MemTotal:       16303528 kB\nMemFree: 1 kB\n')
    assert cga.node_memory_total(str(p)) == 16303528 * 1024


def test_walk_max_depth(tmp_path):
    (tmp_path / 'a/b/c').mkdir(parents=True)
    assert sorted(cg.walk(str(tmp_path))) == ['', 'a', 'a/b', 'a/b/c']
    assert sorted(cg.walk(str(tmp_path), max_depth=1)) == ['', 'a']
