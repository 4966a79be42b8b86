# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Root filesystem attacks, as root: nothing is ever written or mounted outside the root.

- images whose layers plant `etc -> /`, absolute and `..` symlinks in one layer and write,
  whiteout or hard-link through them in a later one, while chroot_rootfs also mounts
  hostPaths and the generated /etc files onto paths that go through those symlinks;
- a symlink swapped in while the mounts are set up (CVE-2021-30465): another process keeps
  exchanging a mount target directory with a symlink to a host directory (renameat2
  RENAME_EXCHANGE) while chroot_rootfs mounts and unmounts, over and over; a watcher reads
  /proc/self/mountinfo the whole time;
- hostPath `/`, `/etc`, `/proc`, `/var/lib/...` and the runtime sockets are refused unless
  allowed explicitly, through the module and through the pod role's filter path.

(tests/integration/test_chroot_rootfs.py covers single-layer hostile archives and a static
mount target symlink; these are the cross-layer and racing variants.)
"""
import os
import subprocess
import sys
import threading
import time

import pytest

from _hostile import requires_root, run_module
from harness import mount_workdir, umount_all

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'unit', 'plugins', 'module_utils'))

from test__image import docker_archive, member, oci_layout  # noqa: E402

from ansible_collections.barepod.linux.plugins.filter import pod as podf  # noqa: E402
from ansible_collections.barepod.linux.plugins.module_utils import _rootfs  # noqa: E402
from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError  # noqa: E402
from ansible_collections.barepod.linux.plugins.module_utils._rootfs import (  # noqa: E402
    mounts_under, parse_mountinfo)

pytestmark = [pytest.mark.reliability, requires_root]

RENAME_EXCHANGE = 2
AT_FDCWD = -100


@pytest.fixture
def work():
    with mount_workdir('bprootatk-') as d:
        yield d


def snapshot(d, skip=()):
    out = {}
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = [n for n in dirnames if os.path.join(dirpath, n) not in skip]
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if p in skip:
                continue
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino, st.st_nlink)
    return out


def all_mountpoints():
    with open('/proc/self/mountinfo') as f:
        return set(m['mountpoint'] for m in parse_mountinfo(f.read()))


# Other tests and tools on this host (CI shards, benchmarks, molecule, docker) mount pods of their
# own meanwhile, so "outside" is not "any new mount": it is a new mount under this test's work
# dir but not under the root (the sentinel and victim directories live there), on /etc, or on one
# of the host paths an escaped mount target would name (`etc -> /`, `up -> ../../..`).
ESCAPED_TARGETS = ('/data', '/x', '/m', '/sub', '/hosts', '/resolv.conf', '/hostname', '/dev/shm')


def outside_mounts(new, work, root):
    def within(a, b):
        return b == a or b.startswith(a.rstrip('/') + '/')
    return sorted(m for m in new if (within(work, m) and not within(root, m)) or within('/etc', m)
                  or m in ESCAPED_TARGETS)


def host_etc_state():
    out = {}
    for n in ('hosts', 'resolv.conf', 'hostname', 'passwd', 'shadow'):
        p = os.path.join('/etc', n)
        try:
            st = os.lstat(p)
            out[n] = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            out[n] = None
    return out


# ------------------------------------------------------------------ cross-layer images

def _layers(sentinel):
    s = sentinel.lstrip('/')
    return [
        # layer 1: plain directories, and the symlinks planted for later layers
        [member('etc', 'dir'), member('etc/keep', data=b'keep'), member('data', 'dir'),
         member('abs', 'symlink', target=sentinel), member('up', 'symlink', target='../../../../../../..'),
         member('deep', 'dir'), member('deep/er', 'dir')],
        # layer 2: etc (a directory below) becomes "etc -> /"; deep/er -> the sentinel via ..
        [member('etc', 'symlink', target='/'), member('deep/er', 'symlink', target='../../../../../../' + s)],
        # layer 3: writes, whiteouts, opaque markers and hard links through the symlinks
        [member('etc/passwd', data=b'root::0:0::/:/bin/sh'), member('etc/.wh.keep'),
         member('abs/pwned', data=b'x'), member('abs/.wh.secret'), member('abs/.wh..wh..opq'),
         member('up/%s/pwned2' % s, data=b'x'), member('up/%s/.wh.secret' % s),
         member('deep/er/pwned3', data=b'x'), member('deep/er/.wh.secret'),
         member('hl', 'hardlink', target='etc/../../../../../%s/secret' % s),
         member('hl2', 'hardlink', target=sentinel + '/secret')],
    ]


@pytest.mark.parametrize('fmt', ['oci', 'docker-archive'])
def test_cross_layer_symlinks_write_and_mount_nothing_outside(work, fmt, reliability_log):
    sentinel = os.path.join(work, 'sentinel')
    os.makedirs(sentinel)
    with open(os.path.join(sentinel, 'secret'), 'w') as f:
        f.write('do not touch')
    hostdata = os.path.join(work, 'hostdata')
    os.makedirs(hostdata)
    layers = _layers(sentinel)
    img = (oci_layout(os.path.join(work, 'oci'), layers) if fmt == 'oci'
           else docker_archive(os.path.join(work, 'save.tar'), layers))
    root = os.path.join(work, 'box')
    skip = {root, os.path.join(work, '.box.barepod.json'), os.path.join(work, '.box.barepod.d')}
    before = snapshot(work, skip)
    etc_before = host_etc_state()
    mps_before = all_mountpoints()
    args = dict(path=root, image=img, hostname='web', pod_ips=['10.244.0.9'], shm_size='64Mi',
                allowed_host_paths=[hostdata],
                mounts=[dict(source=hostdata, target='/abs/sub'), dict(source=hostdata, target='/deep/er/m'),
                        dict(source=hostdata, target='/etc/data'), dict(source=hostdata, target='/up/x')])
    r = run_module('chroot_rootfs', args)
    new_mps = all_mountpoints() - mps_before
    outside = outside_mounts(new_mps, work, root)
    ok = (not r.failed or 'Traceback' not in r['_stderr']) and snapshot(work, skip) == before \
        and not outside and host_etc_state() == etc_before
    reliability_log('escape', 'image layers: etc -> /, absolute and .. symlinks used by later layers (%s)' % fmt,
                    'blocked' if ok else 'FAILED', module_failed=r.failed)
    assert 'Traceback' not in r['_stderr'], r
    assert snapshot(work, skip) == before
    with open(os.path.join(sentinel, 'secret')) as f:
        assert f.read() == 'do not touch'
    assert os.stat(os.path.join(sentinel, 'secret')).st_nlink == 1
    assert not outside, outside
    assert host_etc_state() == etc_before
    assert not os.path.exists('/passwd') and not os.path.exists('/pwned')
    if not r.failed:
        # everything re-rooted: etc -> / means the rootfs's own root
        assert open(os.path.join(root, 'passwd')).read().startswith('root::0')
        assert os.path.join(root, 'hosts') in new_mps
        # second run: converged
        r2 = run_module('chroot_rootfs', args)
        assert not r2.failed and not r2.changed, r2
    r = run_module('chroot_rootfs', dict(path=root, state='absent'))
    assert not r.failed and not os.path.exists(root), r
    assert snapshot(work, skip) == before and mounts_under(work) == []


# ------------------------------------------------------------------ CVE-2021-30465: racing symlink swaps

SWAPPER = r'''
import ctypes, os, sys, time
libc = ctypes.CDLL('libc.so.6', use_errno=True)
root, victim, deadline = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])
pairs = [(os.path.join(root, 'data'), os.path.join(root, '.swap1')),
         (os.path.join(root, 'deep'), os.path.join(root, '.swap2'))]
n = 0
while time.monotonic() < deadline:
    for target, link in pairs:
        try:
            if not os.path.lexists(link):
                os.symlink(victim, link)
            if libc.renameat2(-100, target.encode(), -100, link.encode(), 2) == 0:
                n += 1
        except OSError:
            pass
print(n)
'''


def test_symlink_swapped_in_while_mounts_are_set_up(work, reliability_log):
    victim = os.path.join(work, 'victim')
    os.makedirs(os.path.join(victim, 'er'))
    with open(os.path.join(victim, 'precious'), 'w') as f:
        f.write('p')
    hostdata = os.path.join(work, 'hostdata')
    os.makedirs(hostdata)
    with open(os.path.join(hostdata, 'payload'), 'w') as f:
        f.write('payload')
    root = os.path.join(work, 'box')
    victim_before = snapshot(victim)
    mps_before = all_mountpoints()
    seen_outside = set()
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen_outside.update(outside_mounts(all_mountpoints() - mps_before, work, root))

    args = dict(path=root, etc_files=False, shm_size='0', allowed_host_paths=[hostdata],
                mounts=[dict(source=hostdata, target='/data'), dict(source=hostdata, target='/deep/er/data'),
                        dict(type='tmpfs', target='/data/t', size='1Mi')])
    duration = 8.0
    swapper = subprocess.Popen([sys.executable, '-c', SWAPPER, root, victim, str(duration)],
                               stdout=subprocess.PIPE)
    watcher = threading.Thread(target=watch)
    watcher.start()
    cycles = outcomes_ok = outcomes_err = 0
    unexpected = []
    try:
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            cycles += 1
            for params in (args, dict(path=root, state='absent')):
                try:
                    _rootfs.run(dict(params))
                    outcomes_ok += 1
                except (BarepodError, OSError):
                    outcomes_err += 1  # refused or failed cleanly under the race
                except Exception as e:  # noqa: BLE001 - anything else is a finding
                    unexpected.append(repr(e))
            # what a run left mounted is inside the root, never on the victim
            seen_outside.update(outside_mounts(all_mountpoints() - mps_before, work, root))
    finally:
        swaps = int(swapper.communicate(timeout=30)[0] or 0)
        stop.set()
        watcher.join()
        umount_all(root)
    ok = not seen_outside and snapshot(victim) == victim_before and not unexpected
    reliability_log('escape', 'symlink swapped in during mount setup (CVE-2021-30465), %d cycles, %d swaps'
                    % (cycles, swaps), 'blocked' if ok else 'FAILED', ok=outcomes_ok, refused=outcomes_err)
    assert swaps > 100, 'the race did not run (%d swaps)' % swaps
    assert cycles >= 5 and outcomes_ok > 0
    assert not seen_outside, sorted(seen_outside)
    assert snapshot(victim) == victim_before
    assert sorted(os.listdir(victim)) == ['er', 'precious']
    assert not unexpected, unexpected[:5]


# ------------------------------------------------------------------ hostPath protection

PROTECTED = ['/', '/etc', '/etc/', '/proc', '/sys', '/dev', '/var/lib', '/var/lib/dpkg', '/var/lib/kubelet',
             '/var/lib/docker', '/var/lib/containerd', '/run/containerd/containerd.sock', '/var/run/docker.sock',
             '/run/crio/crio.sock', '/var/run', '/run', '/var', '/tmp/../etc', '//etc', '/proc/self/root']


@pytest.mark.parametrize('source', PROTECTED)
def test_protected_host_paths_refused_by_the_module(work, source, reliability_log):
    root = os.path.join(work, 'box')
    r = run_module('chroot_rootfs', dict(path=root, etc_files=False, shm_size='0',
                                         mounts=[dict(source=source, target='/host')]))
    ok = r.failed and 'mounts[0].source' in r['msg'] and not os.path.exists(root)
    reliability_log('escape', 'hostPath %s (module, no allow list)' % source, 'blocked' if ok else 'FAILED')
    assert r.failed and 'mounts[0].source' in r['msg'], r
    assert 'Traceback' not in r['_stderr']
    assert os.listdir(work) == [] and mounts_under(work) == []


def test_protected_paths_need_an_explicit_allow_entry(work, reliability_log):
    """/tmp allowed does not unlock /etc through a symlink under /tmp; naming /etc does."""
    link = os.path.join(work, 'to-etc')
    os.symlink('/etc', link)
    root = os.path.join(work, 'box')
    base = dict(path=root, etc_files=False, shm_size='0')
    r = run_module('chroot_rootfs', dict(base, allowed_host_paths=['/tmp', work],
                                         mounts=[dict(source=link, target='/host')]))
    assert r.failed and 'mounts[0].source' in r['msg'] and '(/etc)' in r['msg'], r
    reliability_log('escape', 'hostPath symlink under an allowed dir pointing at /etc', 'blocked' if r.failed else 'FAILED')
    for allowed in (['/var'], ['/'], ['/tmp']):
        r = run_module('chroot_rootfs', dict(base, allowed_host_paths=allowed,
                                             mounts=[dict(source='/var/lib/dpkg', target='/host')]))
        assert r.failed, (allowed, r)
    # explicitly allowed: accepted (check mode: nothing is mounted)
    r = run_module('chroot_rootfs', dict(base, allowed_host_paths=['/etc'], mounts=[dict(source='/etc', target='/host')]),
                   check=True)
    assert not r.failed and r.changed, r
    r = run_module('chroot_rootfs', dict(base, allowed_host_paths=['/var/lib/dpkg'],
                                         mounts=[dict(source='/var/lib/dpkg', target='/host', read_only=True)]), check=True)
    assert not r.failed, r
    assert os.listdir(work) == ['to-etc'] and mounts_under(work) == []


@pytest.mark.parametrize('source', ['/', '/etc', '/proc', '/var/lib/kubelet', '/var/run/docker.sock',
                                    '/run/containerd/containerd.sock'])
def test_protected_host_paths_refused_through_the_pod_role_path(work, source, reliability_log):
    """What roles/pod/tasks/rootfs.yml does: the filter's mounts, the role's default allow list."""
    m = dict(apiVersion='v1', kind='Pod', metadata=dict(name='hp'),
             spec=dict(containers=[dict(name='c', image='busybox', command=['sleep', '1'],
                                        volumeMounts=[dict(name='h', mountPath='/host')])],
                       volumes=[dict(name='h', hostPath=dict(path=source))]))
    ident = podf.pod_identity(m)
    c = m['spec']['containers'][0]
    mounts = podf.pod_container_mounts(c, m['spec']['volumes'])
    state = os.path.join(work, 'state')
    params = dict(pod_uid=ident['uid'], container='c', namespace=ident['namespace'], name=ident['name'],
                  rootfs_root=os.path.join(work, 'rootfs'), state_root=state, busybox=True, mounts=mounts,
                  allowed_host_paths=['/tmp'], hostname='hp')
    with pytest.raises(BarepodError) as e:
        _rootfs.run(params)
    reliability_log('escape', 'hostPath %s (pod role path, default allow list)' % source, 'blocked')
    assert 'mounts[0].source' in str(e.value)
    assert os.listdir(work) == [] and mounts_under(work) == []


def _messages(obj):
    if isinstance(obj, dict):
        out = [obj['msg']] if isinstance(obj.get('msg'), str) else []
        for v in obj.values():
            out += _messages(v)
        return out
    if isinstance(obj, list):
        return [m for v in obj for m in _messages(v)]
    return []


def test_protected_host_path_refused_by_the_pod_role_before_any_change(node, reliability_log):
    source = '/etc'
    """ansible-playbook pod_up.yml with a manifest whose hostPath is protected: the play fails
    naming the field, and the node is exactly as before (no record, rootfs, cgroup, netns)."""
    import yaml
    m = node.manifest_dict(name='hostile-hostpath')
    m['spec']['volumes'][0]['hostPath']['path'] = source
    path = os.path.join(node.tmp, 'hostile.yaml')
    with open(path, 'w') as f:
        yaml.safe_dump(m, f)
    before = node.snapshot()
    rc, _stats, res, _failures = node.playbook('pod_up.yml', [path])
    after = node.snapshot()
    failures = [m for m in _messages(res) if 'hostPath' in m]
    changed = dict((k, (before[k], after[k])) for k in before if before[k] != after[k])
    if rc == 0 or changed:
        node.files.append(path)  # the fixture's teardown runs pod_down on what was left
    ok = rc != 0 and any('mounts[0].source' in str(f) for f in failures) and not changed
    reliability_log('escape', 'hostPath %s through ansible-playbook pod_up.yml' % source, 'blocked' if ok else 'FAILED',
                    partial_state=sorted(changed))
    assert rc != 0 and any('mounts[0].source' in str(f) for f in failures), failures
    assert not changed, changed
