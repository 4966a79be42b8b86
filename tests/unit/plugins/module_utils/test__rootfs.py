# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""chroot_rootfs logic without root and without mounts: hostPath rule, mountinfo parsing,
kubelet's hosts/resolv.conf formats, the plan (check mode, idempotence, a changed source,
removal of what only one binary brought) and argument validation."""

import json
import os
import shutil

import pytest

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
from ansible_collections.barepod.linux.plugins.module_utils._rootfs import (
    RootfsManager, check_host_path, host_dns, hosts_content, manifest_path, parse_mountinfo, parse_size,
    resolv_content, unmount_order)

# ------------------------------------------------------------------ hostPath rule


@pytest.mark.parametrize('src', ['/', '/proc', '/proc/1', '/sys', '/dev', '/etc', '/etc/ssl', '/boot',
                                 '/var/lib', '/run', '/var', '/usr/..'])
def test_protected_host_paths_refused(src):
    if not os.path.exists(src):
        pytest.skip('%s does not exist here' % src)
    with pytest.raises(BarepodError) as e:
        check_host_path('mounts[0].source', src, [])
    assert 'mounts[0].source' in str(e.value)


def test_symlink_to_protected_is_judged_by_target(tmp_path):
    os.symlink('/etc', str(tmp_path / 'innocent'))
    with pytest.raises(BarepodError, match='/etc'):
        check_host_path('src', str(tmp_path / 'innocent'), [])


def test_allowlist(tmp_path):
    a = tmp_path / 'a'
    b = tmp_path / 'b'
    a.mkdir()
    b.mkdir()
    assert check_host_path('s', str(a), []) == str(a)
    assert check_host_path('s', str(a), [str(a)]) == str(a)
    with pytest.raises(BarepodError, match='outside allowed_host_paths'):
        check_host_path('s', str(b), [str(a)])
    # a protected path is unlocked only by naming it (or something inside it)
    with pytest.raises(BarepodError):
        check_host_path('s', '/etc', ['/'])
    assert check_host_path('s', '/etc', ['/etc']) == '/etc'
    if os.path.isdir('/etc/ssl'):
        assert check_host_path('s', '/etc/ssl', ['/etc/ssl']) == '/etc/ssl'
        with pytest.raises(BarepodError):
            check_host_path('s', '/etc', ['/etc/ssl'])
    with pytest.raises(BarepodError, match='absolute'):
        check_host_path('s', 'tmp', [])
    with pytest.raises(BarepodError, match='does not exist'):
        check_host_path('s', str(tmp_path / 'missing'), [])


def test_runtime_socket_refused_even_when_run_allowed(tmp_path):
    run = tmp_path / 'run'
    (run / 'containerd').mkdir(parents=True)
    (run / 'containerd' / 'containerd.sock').write_text('')
    (run / 'mine').mkdir()
    prot = (str(run), str(run / 'containerd' / 'containerd.sock'))
    # allowing the run dir unlocks it, but not the socket inside it
    assert check_host_path('s', str(run / 'mine'), [str(run)], prot) == str(run / 'mine')
    with pytest.raises(BarepodError, match='containerd.sock'):
        check_host_path('s', str(run / 'containerd' / 'containerd.sock'), [str(run)], prot)
    # binding the parent of the socket would expose it
    with pytest.raises(BarepodError, match='expose'):
        check_host_path('s', str(run / 'containerd'), [str(run)], prot)
    assert check_host_path('s', str(run / 'containerd'), [str(run / 'containerd')], prot)


# ------------------------------------------------------------------ parsers


MOUNTINFO = '''22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:5 / /srv/root\\040box/dev/shm rw,nosuid,nodev,noexec - tmpfs shm rw,size=65536k
41 22 8:1 /tmp /srv/root\\040box/data ro,relatime shared:1 - ext4 /dev/sda1 rw
42 41 0:6 / /srv/root\\040box/data/inner rw - tmpfs tmpfs rw
43 22 8:1 /tmp /srv/root\\040box/data rw - ext4 /dev/sda1 rw
'''


def test_parse_mountinfo_and_order():
    ms = parse_mountinfo(MOUNTINFO)
    assert ms[1]['mountpoint'] == '/srv/root box/dev/shm'
    assert ms[1]['fstype'] == 'tmpfs' and 'size=65536k' in ms[1]['super']
    assert 'ro' in ms[2]['options'] and ms[2]['root'] == '/tmp'
    order = [m['id'] for m in unmount_order([m for m in ms if m['mountpoint'] != '/'])]
    assert order == [42, 40, 43, 41]


def test_parse_size():
    assert parse_size('s', '64Mi') == 64 << 20
    assert parse_size('s', '1G') == 10 ** 9
    assert parse_size('s', 4096) == 4096
    for bad in ('64 MB', '-1', 'lots', '1.5Gi'):
        with pytest.raises(BarepodError, match='s'):
            parse_size('s', bad)


def test_hosts_as_kubelet_writes_it():
    assert hosts_content('nginx', ['10.200.0.4']) == (
        '# Kubernetes-managed hosts file.\n'
        '127.0.0.1\tlocalhost\n'
        '::1\tlocalhost ip6-localhost ip6-loopback\n'
        'fe00::0\tip6-localnet\n'
        'fe00::0\tip6-mcastprefix\n'
        'fe00::1\tip6-allnodes\n'
        'fe00::2\tip6-allrouters\n'
        '10.200.0.4\tnginx\n')
    assert hosts_content('web-0', ['10.0.0.9'], 'web').endswith('10.0.0.9\tweb-0.web\tweb-0\n')
    # before networking there is no pod IP line
    assert hosts_content('core-k8s', []).endswith('fe00::2\tip6-allrouters\n')
    aliases = hosts_content('p', ['10.0.0.1'], host_aliases=[{'ip': '127.0.0.1', 'hostnames': ['foo.local', 'bar']}])
    assert aliases.endswith('\n# Entries added by HostAliases.\n127.0.0.1\tfoo.local\tbar\n')


def test_resolv_conf(tmp_path):
    assert resolv_content(['10.96.0.10'], ['default.svc.cluster.local', 'svc.cluster.local'], ['ndots:5']) == (
        'search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n')
    stub = tmp_path / 'resolv.conf'
    stub.write_text('# systemd stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n')
    up = tmp_path / 'upstream.conf'
    up.write_text('nameserver 192.0.2.1\nnameserver 192.0.2.2\nsearch corp\n')
    assert host_dns(str(stub), str(up)) == (['192.0.2.1', '192.0.2.2'], ['corp'], [])
    assert host_dns(str(stub), str(tmp_path / 'none')) == (['127.0.0.53'], ['lan'], ['edns0', 'trust-ad'])


# ------------------------------------------------------------------ plan / apply (no mounts)

def make_bins(tmp_path):
    """Copies of two host programs (so the test can change a 'source')."""
    d = tmp_path / 'host'
    d.mkdir()
    for b in ('ls', 'cat'):
        shutil.copy2(shutil.which(b), str(d / b))
    return d


def params(root, **kw):
    p = dict(path=str(root) if root is not None else None, state='present', binaries=[], busybox=False,
             busybox_path='/bin/busybox', image=None, image_format='auto', mounts=[], shm_size='0', etc_files=False,
             hostname=None,
             subdomain=None, pod_ips=None, host_aliases=None, dns=None, allowed_host_paths=[])
    p.update(kw)
    return p


def snapshot(d):
    out = {}
    for dirpath, dirnames, filenames in os.walk(str(d)):
        for n in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, n))
            out[os.path.join(dirpath, n)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def test_check_mode_plans_and_changes_nothing(tmp_path):
    host = make_bins(tmp_path)
    root = tmp_path / 'pods' / 'box'
    res = RootfsManager(params(root, binaries=[str(host / 'ls')]), check_mode=True).run()
    assert res['changed']
    acts = dict((a['target'], a['action']) for a in res['actions'])
    assert acts[str(root)] == 'create'
    assert acts[str(host / 'ls')] == 'add'
    assert any(t.endswith('libc.so.6') for t in acts)
    assert acts['/proc'] == 'add' and acts['/dev'] == 'add' and acts['/sys'] == 'add'
    assert not (tmp_path / 'pods').exists()


def test_converge_idempotent_recopy_and_removal(tmp_path):
    host = make_bins(tmp_path)
    root = tmp_path / 'pods' / 'box'
    ls, cat = str(host / 'ls'), str(host / 'cat')
    p = params(root, binaries=[ls, cat])
    res = RootfsManager(p).run()
    assert res['changed']
    copied = root / ls.lstrip('/')
    assert copied.read_bytes() == open(ls, 'rb').read()
    assert os.stat(str(copied)).st_mtime_ns == os.stat(ls).st_mtime_ns
    man = json.load(open(manifest_path(str(root))))
    assert sorted(man['files'][ls.replace(str(tmp_path), str(tmp_path))]['by']) == [ls]
    libc = [f for f in man['files'] if f.endswith('/libc.so.6')][0]
    assert sorted(man['files'][libc]['by']) == sorted([ls, cat])

    # second run: nothing planned, nothing written (the manifest neither)
    before = snapshot(tmp_path / 'pods')
    res = RootfsManager(p).run()
    assert not res['changed'] and res['actions'] == []
    assert snapshot(tmp_path / 'pods') == before

    # a changed source is copied again (and only it)
    with open(cat, 'ab') as f:
        f.write(b'\0')
    res = RootfsManager(p).run()
    assert [(a['action'], a['target']) for a in res['actions']] == [('replace', cat)]
    assert (root / cat.lstrip('/')).read_bytes() == open(cat, 'rb').read()

    # a file changed inside the rootfs is restored
    (root / ls.lstrip('/')).write_bytes(b'tampered')
    res = RootfsManager(p).run()
    assert [(a['action'], a['target']) for a in res['actions']] == [('replace', ls)]

    # dropping `cat` removes only what only it brought (libc stays: ls needs it)
    res = RootfsManager(params(root, binaries=[ls])).run()
    assert [(a['action'], a['target']) for a in res['actions']] == [('remove', cat)]
    assert not (root / cat.lstrip('/')).exists()
    assert (root / libc.lstrip('/')).exists()


def test_image_then_binaries_idempotent(tmp_path):
    from test__image import LOWER, UPPER, oci_layout
    img = oci_layout(tmp_path / 'oci', [LOWER, UPPER])
    root = tmp_path / 'pods' / 'box'
    p = params(root, image=img, binaries=['ls'])
    res = RootfsManager(p).run()
    assert [a['action'] for a in res['actions']][:2] == ['create', 'extract']
    assert (root / 'c' / 'new').read_bytes() == b'new'
    before = snapshot(tmp_path / 'pods')
    assert not RootfsManager(p).run()['changed']
    assert snapshot(tmp_path / 'pods') == before
    # a file of the image deleted in the rootfs: the image is extracted again
    os.unlink(str(root / 'a' / 'f2'))
    res = RootfsManager(p).run()
    assert [a['action'] for a in res['actions']] == ['extract']
    assert (root / 'a' / 'f2').read_bytes() == b'TWO'
    # dropping the image removes its files, keeps the binaries
    res = RootfsManager(params(root, binaries=['ls'])).run()
    assert ('remove', '/c/new') in [(a['action'], a['target']) for a in res['actions']]
    assert not (root / 'c' / 'new').exists()
    assert (root / shutil.which('ls').lstrip('/')).exists()


@pytest.mark.skipif(not os.path.exists('/bin/busybox'), reason='busybox-static not installed')
def test_busybox_applet_links(tmp_path):
    root = tmp_path / 'pods' / 'bb'
    RootfsManager(params(root, busybox=True)).run()
    assert (root / 'bin' / 'busybox').is_file()
    assert os.readlink(str(root / 'bin' / 'sh')) == '/bin/busybox'
    assert os.readlink(str(root / 'bin' / 'ls')) == '/bin/busybox'
    assert not RootfsManager(params(root, busybox=True)).run()['changed']


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize('kw,field', [
    (dict(binaries=['/nonexistent/bin/foo']), 'binaries[0]'),
    (dict(binaries=['no-such-command-barepod']), 'binaries'),
    (dict(binaries=['bin/ls']), 'binaries[0]'),
    (dict(mounts=[dict(type='bind', source='/etc', target='/data')]), 'mounts[0].source'),
    (dict(mounts=[dict(type='bind', source='/tmp', target='data')]), 'mounts[0].target'),
    (dict(mounts=[dict(type='bind', source='/tmp', target='/data', options=['suid', 'exec'])]),
     'mounts[0].options'),
    (dict(mounts=[dict(type='tmpfs', target='/x', size='lots')]), 'mounts[0].size'),
    (dict(mounts=[dict(type='overlay', target='/x')]), 'mounts[0].type'),
    (dict(mounts=[dict(type='bind', source='/tmp', target='/../../x')]), 'mounts[0].target'),
    (dict(etc_files=True, hostname='Bad_Name'), 'hostname'),
    (dict(etc_files=True, pod_ips=['10.0.0.300']), 'pod_ips'),
    (dict(busybox=True, busybox_path='/nonexistent/busybox'), 'busybox_path'),
    (dict(image='/nonexistent/image.tar'), 'image'),
    (dict(shm_size='huge'), 'shm_size'),
    (dict(etc_files=True, dns=dict(nameservers=['10.0.0.1'], options=['ndots:5\nnameserver 6.6.6.6'])),
     'dns.options'),
    (dict(etc_files=True, dns=dict(searches=['a b'])), 'dns.searches'),
    (dict(etc_files=True, host_aliases=[dict(ip='10.0.0.1', hostnames=['ok', 'evil\n1.2.3.4 bank'])]),
     'host_aliases[0].hostnames'),
    (dict(etc_files=True, hostname='p', subdomain='Bad Sub'), 'subdomain'),
])
def test_bad_input_names_field_and_changes_nothing(tmp_path, kw, field):
    root = tmp_path / 'pods' / 'box'
    with pytest.raises(BarepodError) as e:
        RootfsManager(params(root, **kw)).run()
    assert field in str(e.value)
    assert not (tmp_path / 'pods').exists()


def test_bad_rootfs_paths(tmp_path):
    f = tmp_path / 'file'
    f.write_text('x')
    os.symlink(str(tmp_path), str(tmp_path / 'link'))
    for bad, why in ((str(f), 'not a directory'), (str(tmp_path / 'link'), 'symlink'),
                     ('relative/box', 'absolute'), ('/', 'refusing'), ('/srv', 'refusing')):
        with pytest.raises(BarepodError) as e:
            RootfsManager(params(bad)).run()
        assert 'path' in str(e.value) and why in str(e.value)
    with pytest.raises(BarepodError, match='symlink'):
        RootfsManager(params(str(tmp_path / 'link'), state='absent')).run()


def test_absent_when_gone(tmp_path):
    res = RootfsManager(params(tmp_path / 'pods' / 'none', state='absent')).run()
    assert not res['changed']


def test_pod_record_section(tmp_path):
    from ansible_collections.barepod.linux.plugins.module_utils._rootfs import run
    from ansible_collections.barepod.linux.plugins.module_utils._state import PodRecord
    state = tmp_path / 'state'
    root = tmp_path / 'pods' / 'busybox'
    p = params(root, binaries=['ls'], namespace='default', name='core-k8s', state_root=str(state), pod_uid='u1')
    res = run(p, check_mode=True)
    assert res['changed'] and res['actions'][-1]['action'] == 'record'
    assert not state.exists()
    res = run(p)
    rec = PodRecord('default', 'core-k8s', str(state))
    assert rec.section('rootfs') == {'busybox': {'path': str(root), 'manifest': manifest_path(str(root)),
                                                 'mounts': []}}
    assert rec.load()['uid'] == 'u1'
    assert not run(p)['changed']
    p['state'] = 'absent'
    assert run(p)['changed']
    assert rec.section('rootfs') is None
    with pytest.raises(BarepodError, match='name'):
        run(params(root, namespace='default', name='Bad/Name', state_root=str(state)))


def test_failed_run_keeps_tracking_and_next_run_converges(tmp_path, monkeypatch):
    from test__image import LOWER, oci_layout
    from ansible_collections.barepod.linux.plugins.module_utils import _rootfs
    img = oci_layout(tmp_path / 'oci', [LOWER])
    root = tmp_path / 'pods' / 'box'
    p = params(root, image=img, binaries=['ls'])

    def boom(*a, **k):
        raise OSError(5, 'injected failure')
    monkeypatch.setattr(_rootfs, 'apply_image', boom)
    with pytest.raises(OSError):
        RootfsManager(p).run()
    man = json.load(open(manifest_path(str(root))))
    assert man['image']['fingerprint'] is None  # extraction not finished: redo it next time
    monkeypatch.undo()
    res = RootfsManager(p).run()
    assert 'extract' in [a['action'] for a in res['actions']]
    assert (root / 'c' / 'sub' / 'deep').read_bytes() == b'deep'
    assert not RootfsManager(p).run()['changed']


def test_script_brings_its_interpreter(tmp_path):
    script = tmp_path / 'host' / 'hello'
    script.parent.mkdir()
    script.write_text('#!/bin/sh -e\necho hello\n')
    script.chmod(0o755)
    root = tmp_path / 'pods' / 'box'
    res = RootfsManager(params(root, binaries=[str(script)]), check_mode=True).run()
    targets = [a['target'] for a in res['actions']]
    assert str(script) in targets and '/bin/sh' in targets
    assert any(t.endswith('libc.so.6') for t in targets)
    bad = tmp_path / 'host' / 'bad'
    bad.write_text('#!/nonexistent/interp\n')
    with pytest.raises(BarepodError, match='binaries\\[0\\].*nonexistent/interp'):
        RootfsManager(params(root, binaries=[str(bad)])).run()


def test_image_with_symlinked_bin_then_binary_converges_in_one_run(tmp_path):
    from test__image import member, write_tar
    ls = shutil.which('ls')
    assert os.path.realpath(ls) == '/usr/bin/ls'
    members = [member('usr', 'dir'), member('usr/bin', 'dir'), member('bin', 'symlink', target='usr/bin'),
               member('usr/bin/ls', data=b'image ls')]
    img = write_tar(tmp_path / 'img.tar', members)
    root = tmp_path / 'pods' / 'box'
    p = params(root, image=img, binaries=['/bin/ls'])
    RootfsManager(p).run()
    assert os.path.islink(str(root / 'bin'))
    assert (root / 'usr' / 'bin' / 'ls').read_bytes() == open(ls, 'rb').read()
    assert not RootfsManager(p).run()['changed']
    # a new image version: extracted again, and the binary is put back in the same run
    write_tar(tmp_path / 'img.tar', members + [member('new', data=b'n')])
    assert RootfsManager(p).run()['changed']
    assert (root / 'usr' / 'bin' / 'ls').read_bytes() == open(ls, 'rb').read()
    assert not RootfsManager(p).run()['changed']


def test_default_path_from_pod_uid_and_container(tmp_path):
    from ansible_collections.barepod.linux.plugins.module_utils._rootfs import run
    p = params(None, pod_uid='6a4b1c9e-0000-4000-8000-000000000001', container='busybox',
               rootfs_root=str(tmp_path / 'rootfs'))
    res = run(p, check_mode=True)
    assert res['path'] == str(tmp_path / 'rootfs' / '6a4b1c9e-0000-4000-8000-000000000001' / 'busybox')
    with pytest.raises(BarepodError, match='path'):
        run(params(None, pod_uid='u1'))
    with pytest.raises(BarepodError, match='container'):
        run(params(None, pod_uid='u1', container='Bad/..'))


def test_mounts_under_reads_mountinfo_every_time(tmp_path):
    """The parse of an unchanged mountinfo is reused; a changed one is parsed again."""
    from ansible_collections.barepod.linux.plugins.module_utils._rootfs import mounts_under
    mi = tmp_path / 'mountinfo'
    line = '%d 1 0:5%d / %s rw - tmpfs tmpfs rw\n'
    mi.write_text(line % (30, 1, '/r/a'))
    assert [m['mountpoint'] for m in mounts_under('/r', str(mi))] == ['/r/a']
    first = mounts_under('/r', str(mi))
    first[0]['mountpoint'] = 'mutated by a caller'
    assert [m['mountpoint'] for m in mounts_under('/r', str(mi))] == ['/r/a']
    mi.write_text(line % (30, 1, '/r/a') + line % (31, 2, '/r/b'))
    assert [m['mountpoint'] for m in mounts_under('/r', str(mi))] == ['/r/a', '/r/b']
    assert [m['mountpoint'] for m in mounts_under('/other', str(mi))] == []
    mi.write_text('')
    assert mounts_under('/r', str(mi)) == []
