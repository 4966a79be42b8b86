# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""chroot_rootfs as root, through the module as Ansible runs it: real copies, real chroot,
real mounts, and nothing left behind (every test works in its own throwaway directory and
unmounts it even on failure)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'unit', 'plugins', 'module_utils'))

from conftest import run_module  # noqa: E402
from harness import mount_workdir  # noqa: E402

from ansible_collections.barepod.linux.plugins.module_utils._rootfs import mounts_under  # noqa: E402

BUSYBOX = '/bin/busybox'


@pytest.fixture
def work():
    """A throwaway directory (not /var/lib/barepod); everything under it unmounted and removed."""
    with mount_workdir('bprootfs-') as d:
        yield d


def chroot(root, *argv, **kw):
    return subprocess.run(['chroot', root] + list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=30, **kw)


def snapshot(d):
    out = {}
    for dirpath, dirnames, filenames in os.walk(d):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def mountpoints(d):
    return sorted(m['mountpoint'] for m in mounts_under(d))


def test_host_binaries_chroot_ls_shows_only_the_rootfs(work):
    root = os.path.join(work, 'box')
    r = run_module('chroot_rootfs', dict(path=root, binaries=['/bin/sh', '/bin/ls'], etc_files=False, shm_size='0'))
    assert not r.failed, r
    assert r.changed
    p = chroot(root, '/bin/ls', '/')
    assert p.returncode == 0, p.stderr
    listing = set(p.stdout.decode().split())
    assert listing == set(os.listdir(root))
    assert listing <= {'bin', 'lib', 'lib64', 'usr', 'proc', 'dev', 'sys'}
    assert 'home' not in listing and 'etc' not in listing
    p = chroot(root, '/bin/sh', '-c', 'echo ok from sh')
    assert p.stdout == b'ok from sh\n'


@pytest.mark.skipif(not os.path.exists(BUSYBOX), reason='busybox-static not installed')
def test_busybox_rootfs_with_data_bind_ro_bind_shm_and_etc(work):
    root = os.path.join(work, 'pods', 'bb')
    hostdir = os.path.join(work, 'hosttmp')
    os.makedirs(hostdir)
    for n in ('a', 'b', 'c'):
        open(os.path.join(hostdir, n), 'w').close()
    args = dict(path=root, busybox=True, hostname='core-k8s', pod_ips=['10.244.0.5'],
                dns=dict(nameservers=['10.96.0.10'], searches=['default.svc.cluster.local'], options=['ndots:5']),
                mounts=[dict(source=hostdir, target='/data'),
                        dict(source=hostdir, target='/data-ro', read_only=True)])
    r = run_module('chroot_rootfs', args, diff=True)
    assert not r.failed, r
    assert r.changed and r['diff']['before']['exists'] is False

    p = chroot(root, '/bin/busybox', 'sh', '-c', 'echo ok')
    assert p.stdout == b'ok\n', p.stderr
    p = chroot(root, '/bin/sh', '-c', 'ls /data')
    assert p.stdout.decode().split() == ['a', 'b', 'c']
    # writes through /data reach the host dir; /data-ro refuses them
    assert chroot(root, '/bin/sh', '-c', 'echo hi > /data/from-container').returncode == 0
    assert open(os.path.join(hostdir, 'from-container')).read() == 'hi\n'
    p = chroot(root, '/bin/sh', '-c', 'echo no > /data-ro/x')
    assert p.returncode != 0 and b'Read-only file system' in p.stderr
    assert not os.path.exists(os.path.join(hostdir, 'x'))
    # /dev/shm: tmpfs, 64 MiB, nosuid,nodev,noexec
    shm = [m for m in mounts_under(root) if m['mountpoint'].endswith('/dev/shm')][0]
    assert shm['fstype'] == 'tmpfs' and 'size=65536k' in shm['super']
    assert {'nosuid', 'nodev', 'noexec'} <= set(shm['options'])
    # generated files as kubelet writes them, bind-mounted
    hosts = chroot(root, '/bin/cat', '/etc/hosts').stdout.decode()
    assert hosts.startswith('# Kubernetes-managed hosts file.\n') and hosts.endswith('10.244.0.5\tcore-k8s\n')
    assert chroot(root, '/bin/cat', '/etc/resolv.conf').stdout == (
        b'search default.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n')
    assert chroot(root, '/bin/cat', '/etc/hostname').stdout == b'core-k8s\n'
    assert os.path.join(root, 'etc/hosts') in mountpoints(root)

    # second run: changed=false, no file or mount changes at all
    before, mounts_before = snapshot(work), mountpoints(root)
    r2 = run_module('chroot_rootfs', args)
    assert not r2.failed and not r2.changed and r2['actions'] == []
    assert snapshot(work) == before and mountpoints(root) == mounts_before

    # a new pod IP rewrites hosts in place: the running bind mount sees it
    args['pod_ips'] = ['10.244.0.6']
    r3 = run_module('chroot_rootfs', args)
    assert [a['action'] for a in r3['actions']] == ['write']
    assert chroot(root, '/bin/cat', '/etc/hosts').stdout.decode().endswith('10.244.0.6\tcore-k8s\n')

    # dropping the read-only mount unmounts it
    args['mounts'] = args['mounts'][:1]
    r4 = run_module('chroot_rootfs', args)
    assert [(a['action'], a['target']) for a in r4['actions']] == [('unmount', '/data-ro')]
    assert os.path.join(root, 'data-ro') not in mountpoints(root)

    # absent: a mount the "container" made is removed too; the host dir is untouched
    os.makedirs(os.path.join(root, 'mnt-by-container'))
    subprocess.run(['mount', '-t', 'tmpfs', 'tmpfs', os.path.join(root, 'mnt-by-container')], check=True)
    r5 = run_module('chroot_rootfs', dict(path=root, state='absent'), diff=True)
    assert not r5.failed, r5
    assert r5.changed
    assert mountpoints(work) == []
    assert not os.path.exists(root)
    assert not os.path.exists(os.path.join(work, 'pods', '.bb.barepod.json'))
    assert not os.path.exists(os.path.join(work, 'pods', '.bb.barepod.d'))
    assert sorted(os.listdir(hostdir)) == ['a', 'b', 'c', 'from-container']
    r6 = run_module('chroot_rootfs', dict(path=root, state='absent'))
    assert not r6.failed and not r6.changed


def test_check_mode_leaves_nothing(work):
    root = os.path.join(work, 'box')
    hostdir = os.path.join(work, 'hosttmp')
    os.makedirs(hostdir)
    r = run_module('chroot_rootfs', dict(path=root, binaries=['/bin/ls'], hostname='p',
                                         mounts=[dict(source=hostdir, target='/data')]), check=True, diff=True)
    assert not r.failed, r
    assert r.changed
    acts = set((a['action'], a['target']) for a in r['actions'])
    assert ('mount', '/data') in acts and ('mount', '/dev/shm') in acts and ('create', root) in acts
    assert r['diff']['after']['mounts'] == ['/data', '/dev/shm', '/etc/hostname', '/etc/hosts', '/etc/resolv.conf']
    assert sorted(os.listdir(work)) == ['hosttmp']
    assert mountpoints(work) == []


def test_mount_target_symlink_stays_inside(work):
    """A rootfs whose /data is a symlink to a host directory (absolute) must get its mount
    inside the rootfs, never on the host directory (CVE-2021-30465 class)."""
    root = os.path.join(work, 'box')
    victim = os.path.join(work, 'victim')
    hostdir = os.path.join(work, 'hosttmp')
    os.makedirs(victim)
    os.makedirs(hostdir)
    open(os.path.join(hostdir, 'payload'), 'w').close()
    img = os.path.join(work, 'img')
    os.makedirs(img)
    os.symlink(victim, os.path.join(img, 'data'))
    os.symlink('/', os.path.join(img, 'etc'))
    r = run_module('chroot_rootfs', dict(path=root, image=img, hostname='p',
                                         mounts=[dict(source=hostdir, target='/data')]))
    assert not r.failed, r
    assert os.listdir(victim) == []
    assert victim not in mountpoints(work)
    inside = os.path.join(root, victim.lstrip('/'))
    assert inside in mountpoints(root) and os.listdir(inside) == ['payload']
    # etc -> / inside the rootfs: /etc/hosts lands at <root>/hosts, not the host's /etc/hosts
    assert os.path.join(root, 'hosts') in mountpoints(root)
    assert '/etc/hosts' not in [m['mountpoint'] for m in mounts_under('/etc')]


def test_hostile_image_writes_nothing_outside(work):
    import tarfile
    import io
    sentinel = os.path.join(work, 'sentinel')
    os.makedirs(sentinel)
    with open(os.path.join(sentinel, 'secret'), 'w') as f:
        f.write('keep')
    img = os.path.join(work, 'evil.tar')
    with tarfile.open(img, 'w') as tf:
        def add(name, kind='file', data=b'x', target=''):
            ti = tarfile.TarInfo(name)
            if kind == 'file':
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
                return
            ti.type = {'sym': tarfile.SYMTYPE, 'hard': tarfile.LNKTYPE}[kind]
            ti.linkname = target
            tf.addfile(ti)
        add('/abs', data=b'abs')
        add('../../../../../dotdot')
        add('etc', 'sym', target='/')
        add('etc/via-etc')
        add('s', 'sym', target=sentinel)
        add('s/pwned')
        add('up', 'sym', target='../../../../../../../')
        add('up/' + sentinel.lstrip('/') + '/pwned2')
        add('hl', 'hard', target=os.path.join(sentinel, 'secret'))
        add('hl2', 'hard', target='../../../../../../' + sentinel.lstrip('/') + '/secret')
    before = snapshot(sentinel)
    st_secret = os.stat(os.path.join(sentinel, 'secret'))
    root = os.path.join(work, 'box')
    r = run_module('chroot_rootfs', dict(path=root, image=img, etc_files=False, shm_size='0'))
    assert not r.failed, r
    assert snapshot(sentinel) == before
    assert os.stat(os.path.join(sentinel, 'secret')).st_nlink == st_secret.st_nlink == 1
    assert sorted(os.listdir(sentinel)) == ['secret']
    assert open(os.path.join(root, 'abs')).read() == 'abs'
    assert os.path.exists(os.path.join(root, 'dotdot'))
    assert os.path.exists(os.path.join(root, 'via-etc'))
    assert not os.path.exists(os.path.join(work, 'dotdot')) and not os.path.exists('/via-etc')
    assert not os.path.exists('/abs') and not os.path.exists('/dotdot')


def test_docker_save_image_and_absent(work):
    from test__image import LOWER, UPPER, docker_archive
    img = docker_archive(os.path.join(work, 'save.tar'), [LOWER, UPPER])
    root = os.path.join(work, 'box')
    args = dict(path=root, image=img, binaries=['/bin/ls'], etc_files=False)
    r = run_module('chroot_rootfs', args)
    assert not r.failed, r
    assert open(os.path.join(root, 'c', 'new')).read() == 'new'
    assert not os.path.exists(os.path.join(root, 'a', 'f1'))
    p = chroot(root, '/bin/ls', '/c', '/a')
    assert p.returncode == 0 and p.stdout.decode().split() == ['/a:', 'f2', '/c:', 'new']
    before = snapshot(work)
    assert not run_module('chroot_rootfs', args).changed
    assert snapshot(work) == before
    r = run_module('chroot_rootfs', dict(path=root, state='absent'))
    assert r.changed and not os.path.exists(root) and mountpoints(work) == []


@pytest.mark.parametrize('args,field', [
    (dict(binaries=['/nonexistent/prog']), 'binaries[0]'),
    (dict(mounts=[dict(source='/etc', target='/data')]), 'mounts[0].source'),
    (dict(mounts=[dict(source='/var/run/docker.sock', target='/sock')]), 'mounts[0].source'),
    (dict(mounts=[dict(source='/', target='/host')]), 'mounts[0].source'),
    (dict(mounts=[dict(source='/tmp', target='/data', options=['rbind'])]), 'mounts[0].options'),
    (dict(mounts=[dict(source='/tmp', target='/data')], allowed_host_paths=['/srv/only-this']), 'mounts[0].source'),
    (dict(mounts=[dict(source='/var', target='/data')]), 'mounts[0].source'),
    (dict(busybox=True, busybox_path='/nonexistent/busybox'), 'busybox_path'),
    (dict(image='/nonexistent/img.tar'), 'image'),
])
def test_bad_input_is_refused_without_change(work, args, field):
    root = os.path.join(work, 'box')
    a = dict(path=root)
    a.update(args)
    r = run_module('chroot_rootfs', a)
    assert r.failed and field in r['msg'], r
    assert 'Traceback' not in r['_stderr']
    assert os.listdir(work) == [] and mountpoints(work) == []


def test_rootfs_path_symlink_or_file_refused(work):
    f = os.path.join(work, 'file')
    open(f, 'w').close()
    os.symlink('/', os.path.join(work, 'link'))
    for path in (f, os.path.join(work, 'link'), 'relative/box'):
        for state in ('present', 'absent'):
            r = run_module('chroot_rootfs', dict(path=path, state=state, binaries=['/bin/ls']))
            assert r.failed and 'path' in r['msg'], r
    assert sorted(os.listdir(work)) == ['file', 'link']
    assert os.path.islink(os.path.join(work, 'link')) and os.path.isdir('/bin')


def test_absent_refuses_to_cross_a_foreign_mount_it_cannot_unmount(work):
    """state=absent unmounts deepest first, then deletes; a mount point stays untouched data."""
    root = os.path.join(work, 'box')
    hostdir = os.path.join(work, 'keep')
    os.makedirs(hostdir)
    with open(os.path.join(hostdir, 'precious'), 'w') as f:
        f.write('p')
    assert not run_module('chroot_rootfs', dict(path=root, etc_files=False, shm_size='0',
                                                mounts=[dict(source=hostdir, target='/a/b/data')])).failed
    # nested mounts made afterwards (a container), one on top of another
    inner = os.path.join(root, 'a', 'b', 'data')
    subprocess.run(['mount', '-t', 'tmpfs', 'tmpfs', os.path.join(root, 'proc')], check=True)
    subprocess.run(['mount', '--bind', hostdir, os.path.join(root, 'sys')], check=True)
    r = run_module('chroot_rootfs', dict(path=root, state='absent'))
    assert not r.failed, r
    assert not os.path.exists(root)
    assert open(os.path.join(hostdir, 'precious')).read() == 'p'
    assert inner not in mountpoints(work) and mountpoints(work) == []


def test_manifest_is_outside_rootfs(work):
    root = os.path.join(work, 'box')
    r = run_module('chroot_rootfs', dict(path=root, binaries=['/bin/ls'], etc_files=False, shm_size='0'))
    assert r['manifest'] == os.path.join(work, '.box.barepod.json')
    man = json.load(open(r['manifest']))
    assert man['path'] == root and '/proc' in man['files']


def test_image_reextracted_under_live_mounts_never_writes_through_them(work):
    """A changed image is extracted again while /data (a hostPath) and /etc/hosts are mounted:
    the image's /data and /etc entries must not be written into the host directory."""
    import tarfile
    import io
    hostdir = os.path.join(work, 'hostdata')
    os.makedirs(hostdir)
    with open(os.path.join(hostdir, 'mine'), 'w') as f:
        f.write('host')
    img = os.path.join(work, 'img.tar')

    def build(version):
        with tarfile.open(img, 'w') as tf:
            for name, data in (('data/from-image', b'img'), ('data/mine', b'overwrite?'),
                               ('etc/hosts', b'image hosts\n'), ('version', version)):
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            ti = tarfile.TarInfo('data/.wh.mine')
            tf.addfile(ti, io.BytesIO(b''))
    build(b'1')
    root = os.path.join(work, 'box')
    args = dict(path=root, image=img, hostname='p', shm_size='0', mounts=[dict(source=hostdir, target='/data')])
    r = run_module('chroot_rootfs', args)
    assert not r.failed, r
    assert sorted(os.listdir(hostdir)) == ['mine'] and open(os.path.join(hostdir, 'mine')).read() == 'host'
    build(b'2')
    r = run_module('chroot_rootfs', args)
    assert not r.failed, r
    assert [a['action'] for a in r['actions']] == ['extract']
    assert 'skipped' in json.dumps(r.get('warnings')), r.get('warnings')
    assert sorted(os.listdir(hostdir)) == ['mine'] and open(os.path.join(hostdir, 'mine')).read() == 'host'
    assert open(os.path.join(root, 'version')).read() == '2'
    assert open(os.path.join(root, 'etc', 'hosts')).read().startswith('# Kubernetes-managed hosts file.')
    assert not run_module('chroot_rootfs', args).changed


def test_absent_check_mode_and_diff(work):
    root = os.path.join(work, 'box')
    hostdir = os.path.join(work, 'hosttmp')
    os.makedirs(hostdir)
    args = dict(path=root, binaries=['/bin/ls'], hostname='p', mounts=[dict(source=hostdir, target='/data')])
    r = run_module('chroot_rootfs', args)
    assert not r.failed, r
    args['hostname'] = 'q'
    r = run_module('chroot_rootfs', args, check=True, diff=True)
    assert r['diff']['before']['etc']['/etc/hostname'] == 'p\n'
    assert r['diff']['after']['etc']['/etc/hostname'] == 'q\n'
    assert open(os.path.join(work, '.box.barepod.d', 'hostname')).read() == 'p\n'
    mounts_before = mountpoints(work)
    r = run_module('chroot_rootfs', dict(path=root, state='absent'), check=True, diff=True)
    assert r.changed and ('remove', root) in [(a['action'], a['target']) for a in r['actions']]
    assert os.path.join(root, 'data') in r['diff']['before']['mounts']
    assert os.path.isdir(root) and mountpoints(work) == mounts_before
    assert run_module('chroot_rootfs', dict(path=root, state='absent')).changed
    assert not os.path.exists(root) and mountpoints(work) == []


@pytest.mark.skipif(shutil.which('strace') is None, reason='strace not installed')
def test_converged_run_makes_zero_mutating_syscalls(work):
    """The second run, traced: not one open-for-write, rename, mkdir, unlink, chmod, chown,
    utimens or mount under the work directory."""
    from conftest import COLLECTIONS_ROOT
    root = os.path.join(work, 'box')
    hostdir = os.path.join(work, 'h')
    os.makedirs(hostdir)
    args = dict(path=root, busybox=True, binaries=['/bin/ls'], hostname='p', pod_ips=['10.0.0.2'],
                mounts=[dict(source=hostdir, target='/data', read_only=True)])
    assert not run_module('chroot_rootfs', args).failed
    argsfile = os.path.join(work, 'args.json')
    with open(argsfile, 'w') as f:
        json.dump({'ANSIBLE_MODULE_ARGS': args}, f)
    env = dict(os.environ, PYTHONPATH=COLLECTIONS_ROOT)
    calls = ('openat,open,creat,rename,renameat,renameat2,mkdir,mkdirat,unlink,unlinkat,rmdir,chmod,fchmod,'
             'fchmodat,fchown,fchownat,chown,utimensat,mount,umount2,symlinkat,linkat,truncate,ftruncate')
    p = subprocess.run(['strace', '-f', '-qq', '-e', 'trace=' + calls, sys.executable, '-m',
                        'ansible_collections.barepod.linux.plugins.modules.chroot_rootfs', argsfile],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd='/', timeout=120)
    out = p.stdout.decode()
    assert json.loads(out[out.find('{'):])['changed'] is False
    traced = [line for line in p.stderr.decode().splitlines() if work in line and 'args.json' not in line]
    assert traced, 'strace saw nothing'
    mutating = [line for line in traced
                if 'O_WRONLY' in line or 'O_RDWR' in line or 'O_CREAT' in line
                or not (line.startswith('openat(') or line.startswith('open(') or '] openat(' in line)]
    assert mutating == []


def test_absent_detaches_a_busy_mount_lazily(work):
    root = os.path.join(work, 'box')
    hostdir = os.path.join(work, 'h')
    os.makedirs(hostdir)
    assert not run_module('chroot_rootfs', dict(path=root, etc_files=False, shm_size='0',
                                                mounts=[dict(source=hostdir, target='/data')])).failed
    busy = subprocess.Popen(['sleep', '60'], cwd=os.path.join(root, 'data'))  # keeps the mount busy
    try:
        r = run_module('chroot_rootfs', dict(path=root, state='absent'))
        assert not r.failed, r
        assert 'busy' in json.dumps(r.get('warnings'))
        assert not os.path.exists(root) and mountpoints(work) == []
        assert os.path.isdir(hostdir)
    finally:
        busy.kill()
        busy.wait()


def test_nested_mounts_parent_first_and_never_create_inside_a_host_dir(work):
    root = os.path.join(work, 'box')
    a, b = os.path.join(work, 'a'), os.path.join(work, 'b')
    os.makedirs(os.path.join(a, 'sub'))
    os.makedirs(b)
    open(os.path.join(b, 'in-b'), 'w').close()
    # listed child first: mounted parent first anyway
    args = dict(path=root, etc_files=False, shm_size='0',
                mounts=[dict(source=b, target='/data/sub'), dict(source=a, target='/data')])
    r = run_module('chroot_rootfs', args)
    assert not r.failed, r
    assert os.listdir(os.path.join(root, 'data', 'sub')) == ['in-b']
    assert not run_module('chroot_rootfs', args).changed
    # a mount point that would have to be created inside the host directory a: refused
    args['mounts'].append(dict(source=b, target='/data/new'))
    r = run_module('chroot_rootfs', args)
    assert r.failed and 'mounts' in r['msg'] and '/data/new' in r['msg'], r
    assert sorted(os.listdir(a)) == ['sub']
    assert r['_rc'] != 0 and 'Traceback' not in r['_stderr']


def test_concurrent_runs_take_turns(work):
    import threading
    root = os.path.join(work, 'box')
    hostdir = os.path.join(work, 'h')
    os.makedirs(hostdir)
    args = dict(path=root, busybox=True, hostname='p', mounts=[dict(source=hostdir, target='/data')])
    results = []
    threads = [threading.Thread(target=lambda: results.append(run_module('chroot_rootfs', args))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.failed for r in results] == [False] * 3, results
    assert sorted(r.changed for r in results) == [False, False, True]
    assert mountpoints(root).count(os.path.join(root, 'data')) == 1
