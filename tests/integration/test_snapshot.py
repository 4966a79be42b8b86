# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Container root filesystems from the store (as root, real overlay mounts): busybox pulled from
the test registry, two containers of it sharing one unpacked snapshot, copy-up isolation,
whiteouts converted as overlayfs reads them, gc of unused snapshots, and kill -9 during an
unpack. Every mount is undone even when a test fails."""

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from conftest import COLLECTIONS_ROOT, run_module

from registry import busybox_layout, busybox_registry

from ansible_collections.barepod.linux.plugins.module_utils import _imagestore as st
from ansible_collections.barepod.linux.plugins.module_utils import _snapshot as sn

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason='needs root (mounts)'),
    pytest.mark.skipif(not os.path.exists('/usr/bin/docker-registry') or not os.path.exists('/usr/bin/skopeo'),
                       reason='needs docker-registry and skopeo'),
]


@pytest.fixture(scope='module')
def registry(tmp_path_factory):
    with busybox_registry(tmp_path_factory.mktemp('registry')) as reg:
        yield reg


@pytest.fixture
def rootfs_dir(tmp_path):
    """A pods directory; every rootfs below it is unmounted and removed afterwards."""
    pods = tmp_path / 'pods'
    pods.mkdir()
    yield pods
    for n in os.listdir(str(pods)):
        if not n.startswith('.'):
            sn.remove_rootfs(str(pods / n))
    with open('/proc/self/mountinfo') as f:
        assert str(tmp_path) not in f.read(), 'a mount was left behind'


def pull(store, reg, name='busybox'):
    r = run_module('image', dict(name=name, store_root=store.root, registries_conf=reg.conf))
    assert r.changed and not r.failed, r
    return r['image']


def chroot(root, script):
    return subprocess.run(['chroot', root, '/bin/sh', '-c', script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          check=False).stdout.decode()


def test_two_containers_share_one_snapshot(registry, tmp_path, rootfs_dir):
    store = st.ImageStore(str(tmp_path / 'images'))
    img = pull(store, registry)
    a, b = str(rootfs_dir / 'a'), str(rootfs_dir / 'b')
    ra = sn.prepare_rootfs(store, 'busybox', a)
    assert ra['changed'] and ra['mode'] == 'overlay' and ra['image_id'] == img['id'], ra
    assert len(ra['unpacked']) == 1
    rb = sn.prepare_rootfs(store, img['id'], b)  # by image id: the same snapshot, nothing unpacked
    assert rb['changed'] and rb['unpacked'] == [] and rb['lowerdir'] == ra['lowerdir']
    assert not sn.prepare_rootfs(store, 'busybox', a)['changed']
    snapdir = ra['lowerdir'][0]
    before = sorted(os.listdir(snapdir))

    assert chroot(a, 'echo from-a > /tmp/x; rm /bin/ls; cat /tmp/x') == 'from-a\n'
    assert chroot(b, 'cat /tmp/x 2>&1; ls / >/dev/null && echo ls-ok') == 'cat: can\'t open \'/tmp/x\': No such file or directory\nls-ok\n'
    # the container's writes are in its upper dir; the shared snapshot is unchanged
    assert sorted(os.listdir(snapdir)) == before and os.path.exists(os.path.join(snapdir, 'bin', 'ls'))
    assert open(os.path.join(sn.sidecar(a), 'upper', 'tmp', 'x')).read() == 'from-a\n'

    # the image stays while a container uses it, even removed from the store
    assert run_module('image', dict(name='busybox', state='absent', store_root=store.root)).changed
    assert os.path.isdir(snapdir)
    assert sn.remove_rootfs(a) and sn.remove_rootfs(b)
    assert not sn.remove_rootfs(a)
    assert os.listdir(str(rootfs_dir)) == []
    pr = run_module('image', dict(state='pruned', store_root=store.root))
    assert pr.changed and pr['actions'][0]['orphan_snapshots'] == 1, pr
    assert os.listdir(os.path.join(str(store.root), 'snapshots')) == []
    assert not run_module('image', dict(state='pruned', store_root=store.root)).changed


def _member(name, kind='file', data=b''):
    ti = tarfile.TarInfo(name)
    ti.mtime = 1700000000
    if kind == 'dir':
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
    else:
        ti.size, ti.mode = len(data), 0o644
    return ti, data


def _layered_layout(path, layers):
    """An OCI layout of busybox plus the given layers (lists of members) on top."""
    mdig = busybox_layout(path, tag='base')
    blobs = os.path.join(path, 'blobs', 'sha256')
    man = json.load(open(os.path.join(blobs, mdig[7:])))
    cfg = json.load(open(os.path.join(blobs, man['config']['digest'][7:])))
    for members in layers:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as tf:
            for ti, data in members:
                tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
        raw = buf.getvalue()
        gz = gzip.compress(raw, mtime=0)
        d = hashlib.sha256(gz).hexdigest()
        with open(os.path.join(blobs, d), 'wb') as f:
            f.write(gz)
        man['layers'].append(dict(mediaType='application/vnd.oci.image.layer.v1.tar+gzip', digest='sha256:' + d, size=len(gz)))
        cfg['rootfs']['diff_ids'].append('sha256:' + hashlib.sha256(raw).hexdigest())
    cb = json.dumps(cfg).encode()
    man['config'] = dict(mediaType='application/vnd.oci.image.config.v1+json', digest='sha256:' + hashlib.sha256(cb).hexdigest(), size=len(cb))
    with open(os.path.join(blobs, man['config']['digest'][7:]), 'wb') as f:
        f.write(cb)
    mb = json.dumps(man).encode()
    md = hashlib.sha256(mb).hexdigest()
    with open(os.path.join(blobs, md), 'wb') as f:
        f.write(mb)
    with open(os.path.join(path, 'index.json'), 'w') as f:
        json.dump(dict(schemaVersion=2, manifests=[dict(mediaType='application/vnd.oci.image.manifest.v1+json',
                                                        digest='sha256:' + md, size=len(mb))]), f)


def _import(store, layout, name):
    r = run_module('image', dict(source='archive', path=layout, name=name, store_root=store.root))
    assert r.changed and not r.failed, r
    return r['image']


WHITEOUT_LAYERS = [
    [_member('etc', 'dir'), _member('etc/app', 'dir'), _member('etc/app/old.conf', data=b'old\n'),
     _member('etc/app/keep.conf', data=b'keep\n'), _member('etc/gone', data=b'gone\n')],
    [_member('etc', 'dir'), _member('etc/.wh.gone'), _member('etc/app', 'dir'), _member('etc/app/.wh..wh..opq'),
     _member('etc/app/new.conf', data=b'new\n'), _member('bin/.wh.ls')],
]


def _view(root):
    return chroot(root, 'ls /etc/app; test -e /etc/gone && echo gone-present; test -e /bin/ls && echo ls-present; '
                        'cat /etc/app/new.conf')


@pytest.mark.parametrize('mode', ['overlay', 'copy'])
def test_whiteouts(tmp_path, rootfs_dir, mode):
    store = st.ImageStore(str(tmp_path / 'images'))
    layout = str(tmp_path / 'wh')
    _layered_layout(layout, WHITEOUT_LAYERS)
    _import(store, layout, 'example.com/wh:1')
    root = str(rootfs_dir / 'c')
    r = sn.prepare_rootfs(store, 'example.com/wh:1', root, mode=mode)
    assert r['mode'] == mode
    assert _view(root) == 'new.conf\nnew\n'
    if mode == 'overlay':
        top = r['lowerdir'][0]
        st_ = os.lstat(os.path.join(top, 'etc', 'gone'))
        assert (st_.st_mode & 0o170000) == 0o020000 and st_.st_rdev == 0  # a 0:0 character device
        assert os.getxattr(os.path.join(top, 'etc', 'app'), 'trusted.overlay.opaque') == b'y'
        assert not os.path.exists(os.path.join(top, 'etc', 'app', '.wh..wh..opq'))


def test_kill_during_unpack_leaves_nothing_used(registry, tmp_path, rootfs_dir, reliability_log):
    store = st.ImageStore(str(tmp_path / 'images'))
    pull(store, registry)
    target = str(rootfs_dir / 'c')
    code = ('import sys\nfrom ansible_collections.barepod.linux.plugins.module_utils import _imagestore as st, _snapshot as sn\n'
            'sn.prepare_rootfs(st.ImageStore(sys.argv[1]), "busybox", sys.argv[2])\n')
    env = dict(os.environ, BAREPOD_FAILPOINTS='snapshot-unpacked=kill', PYTHONPATH=COLLECTIONS_ROOT)
    p = subprocess.run([sys.executable, '-c', code, store.root, target], env=env, check=False,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.returncode == -9, p.stderr
    snaps = os.path.join(store.root, 'snapshots')
    # only a temporary directory: no snapshot under a chain id, no mount
    assert all(n.startswith('tmp-') for n in os.listdir(snaps)), os.listdir(snaps)
    assert not sn.rootfs_status(target)['mounted']
    r = sn.prepare_rootfs(store, 'busybox', target)
    assert r['changed'] and len(r['unpacked']) == 1
    assert [n for n in os.listdir(snaps) if n.startswith('tmp-')] == []
    assert chroot(target, 'echo ok') == 'ok\n'
    assert not sn.prepare_rootfs(store, 'busybox', target)['changed']
    reliability_log('fault', 'kill -9 during layer unpack (snapshot-unpacked)', 'survived')


def test_copy_mode_killed_leaves_no_rootfs(registry, tmp_path, rootfs_dir):
    store = st.ImageStore(str(tmp_path / 'images'))
    pull(store, registry)
    target = str(rootfs_dir / 'c')
    code = ('import sys\nfrom ansible_collections.barepod.linux.plugins.module_utils import _imagestore as st, _snapshot as sn\n'
            'sn.prepare_rootfs(st.ImageStore(sys.argv[1]), "busybox", sys.argv[2], mode="copy")\n')
    env = dict(os.environ, BAREPOD_FAILPOINTS='snapshot-copied=kill', PYTHONPATH=COLLECTIONS_ROOT)
    p = subprocess.run([sys.executable, '-c', code, store.root, target], env=env, check=False,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.returncode == -9, p.stderr
    assert not os.path.exists(target)
    r = sn.prepare_rootfs(store, 'busybox', target, mode='copy')
    assert r['changed'] and chroot(target, 'echo ok') == 'ok\n'
    assert [n for n in os.listdir(str(rootfs_dir)) if '.tmp-' in n] == []
