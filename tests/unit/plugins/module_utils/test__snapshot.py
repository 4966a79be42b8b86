# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Snapshots: chain ids, overlay options and mountinfo, the layer stream (gzip, diff_id),
and hostile layers unpacked into a snapshot: nothing is ever written outside it (a sentinel
directory beside the store stays untouched). No root needed (whiteout conversion, which needs
mknod and trusted.* xattrs, is covered by tests/integration/test_snapshot.py)."""

import gzip
import hashlib
import io
import json
import os

import pytest
from harness import tar_bytes, tar_member

from ansible_collections.barepod.linux.plugins.module_utils import _imagestore as st
from ansible_collections.barepod.linux.plugins.module_utils import _snapshot as sn
from ansible_collections.barepod.linux.plugins.module_utils._safefs import SafeRoot


member = tar_member


def sha(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def store_with(tmp_path, layers, gz=True, diff_ids=None, name='example.com/test:1'):
    """An image store holding one image of `layers` (lists of members); returns the store."""
    store = st.ImageStore(str(tmp_path / 'images'))
    raws = [tar_bytes(m) for m in layers]
    with store.lock():
        with store.ingest() as ing:
            blobs = [ing.add_bytes(gzip.compress(r, mtime=0) if gz else r, what='layer') for r in raws]
            cfg = dict(architecture='amd64', os='linux', config={},
                       rootfs=dict(type='layers', diff_ids=diff_ids or [sha(r) for r in raws]))
            manifest = st._manifest_for(ing, json.dumps(cfg).encode(), blobs)
            rec = store.record_from_manifest(ing, manifest, manifest, 'test')
            store.commit(ing, [name], rec)
    return store


@pytest.fixture
def sentinel(tmp_path):
    d = tmp_path / 'outside'
    d.mkdir()
    (d / 'keep').write_text('untouched\n')
    yield d
    assert sorted(os.listdir(str(d))) == ['keep'], 'something was written outside the snapshot'
    assert (d / 'keep').read_text() == 'untouched\n'


# ------------------------------------------------------------------ pure parts

def test_chain_ids_follow_the_oci_rule():
    a, b, c = ('sha256:' + x * 64 for x in 'abc')
    ab = 'sha256:' + hashlib.sha256(('%s %s' % (a, b)).encode()).hexdigest()
    abc = 'sha256:' + hashlib.sha256(('%s %s' % (ab, c)).encode()).hexdigest()
    assert sn.chain_ids([a, b, c]) == [a, ab, abc]
    assert sn.chain_ids([]) == []


def test_overlay_options_top_first_and_refused_paths():
    assert sn.overlay_options(['/s/2/fs', '/s/1/fs'], '/c/upper', '/c/work') == \
        'lowerdir=/s/2/fs:/s/1/fs,upperdir=/c/upper,workdir=/c/work'
    for bad in ('/a,b', '/a:b'):
        with pytest.raises(sn.SnapshotError):
            sn.overlay_options([bad], '/u', '/w')
    with pytest.raises(sn.SnapshotError, match='too many layers'):
        sn.overlay_options(['/var/lib/barepod/images/snapshots/%064d/fs' % i for i in range(60)], '/u', '/w')


def test_overlay_mounts_from_mountinfo():
    text = ('22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n'
            '301 22 0:77 / /run/pods/a\\040b/rootfs rw,relatime - overlay overlay '
            'rw,lowerdir=/s/2/fs:/s/1/fs,upperdir=/run/pods/.x.snap/upper,workdir=/run/pods/.x.snap/work\n')
    m = sn.overlay_mounts(text)
    assert list(m) == ['/run/pods/a b/rootfs']
    assert m['/run/pods/a b/rootfs']['lowerdir'] == ['/s/2/fs', '/s/1/fs']
    assert m['/run/pods/a b/rootfs']['upperdir'] == '/run/pods/.x.snap/upper'


def test_sidecar_is_beside_the_target():
    assert sn.sidecar('/var/lib/barepod/rootfs/u/c/') == '/var/lib/barepod/rootfs/u/.c.snap'


# ------------------------------------------------------------------ the layer stream

def test_stream_hashes_the_uncompressed_tar_and_reads_members(tmp_path):
    raw = tar_bytes([member('a', data=b'A' * 3000), member('d', 'dir'), member('d/b', data=b'B')])
    p = tmp_path / 'layer'
    # two gzip members back to back are one valid gzip stream
    p.write_bytes(gzip.compress(raw[:1000], mtime=0) + gzip.compress(raw[1000:], mtime=0))
    hr = sn.open_layer(str(p))
    got = {}
    for ti, opener in sn.layer_members(hr, 'x'):
        if ti.isreg():
            got[ti.name] = opener().read()
    assert got == {'a': b'A' * 3000, 'd/b': b'B'}
    assert hr.drain() == sha(raw)
    hr.close()
    with pytest.raises(OSError):
        hr.seek(0)


def test_truncated_gzip_layer_is_an_error(tmp_path):
    raw = tar_bytes([member('a', data=os.urandom(200000))])
    p = tmp_path / 'layer'
    p.write_bytes(gzip.compress(raw)[:-5000])
    hr = sn.open_layer(str(p))
    with pytest.raises(sn.SnapshotError):
        for _ti, opener in sn.layer_members(hr, 'x'):
            opener().read()
        hr.drain()
    hr.close()


# ------------------------------------------------------------------ snapshots

def test_unpack_verifies_diff_id_and_leaves_nothing_on_mismatch(tmp_path):
    layer = [member('etc', 'dir'), member('etc/hostname', data=b'x\n')]
    store = store_with(tmp_path, [layer], diff_ids=['sha256:' + '0' * 64])
    snap = sn.Snapshotter(store)
    _rec, layers = snap.image('example.com/test:1')
    with pytest.raises(sn.SnapshotError, match='diff_id mismatch'):
        snap.ensure(layers, [])
    assert os.listdir(snap.root) == []  # no snapshot, no temporary directory


def test_unpack_once_per_chain_id(tmp_path):
    store = store_with(tmp_path, [[member('a', data=b'1')], [member('b', data=b'2')]], gz=False)
    snap = sn.Snapshotter(store)
    _rec, layers = snap.image('example.com/test:1')
    assert snap.ensure(layers, []) == [c for _b, _d, c in layers]
    assert snap.ensure(layers, []) == []
    assert sorted(os.listdir(snap.fs_path(layers[1][2]))) == ['b']
    assert open(os.path.join(snap.fs_path(layers[0][2]), 'a')).read() == '1'
    # by image id too
    assert snap.image(_rec['config'])[1] == layers


def test_unknown_image_is_refused(tmp_path):
    store = store_with(tmp_path, [[member('a', data=b'1')]])
    with pytest.raises(sn.SnapshotError, match='not in the store'):
        sn.Snapshotter(store).image('example.com/other:1')


def test_gc_removes_snapshots_of_removed_images(tmp_path):
    store = store_with(tmp_path, [[member('a', data=b'1')]])
    snap = sn.Snapshotter(store)
    _rec, layers = snap.image('example.com/test:1')
    snap.ensure(layers, [])
    assert snap.unreferenced() == []
    with store.lock():
        store.remove_refs(['example.com/test:1'])
        assert snap.unreferenced() == [layers[0][2]]
        store.gc()
    assert os.listdir(snap.root) == []


def test_leftover_tmp_dirs_are_cleared_by_the_next_writer(tmp_path):
    store = store_with(tmp_path, [[member('a', data=b'1')]])
    snap = sn.Snapshotter(store)
    os.makedirs(os.path.join(snap.root, 'tmp-dead', 'fs'))
    _rec, layers = snap.image('example.com/test:1')
    snap.ensure(layers, [])
    assert sorted(os.listdir(snap.root)) == [layers[0][2].split(':')[1]]


HOSTILE = {
    'dotdot': [member('../../outside/evil', data=b'x'), member('a/../../../outside/evil2', data=b'x')],
    'absolute-symlink-parent': [member('etc', 'symlink', target='/'), member('etc/outside/evil', data=b'x')],
    'relative-symlink-parent': [member('up', 'symlink', target='../../../../../../..'),
                                member('up/outside/evil', data=b'x')],
    'symlink-to-sentinel': [member('s', 'symlink', target='../../../outside'), member('s/evil', data=b'x')],
    'hardlink-out': [member('h', 'hardlink', target='../../../outside/keep'),
                     member('h2', 'hardlink', target='/etc/passwd')],
    'devices': [member('dev', 'dir'), member('dev/mem', 'chr'), member('dev/sda', 'blk')],
}


@pytest.mark.parametrize('case', sorted(HOSTILE))
def test_hostile_layer_never_writes_outside(tmp_path, sentinel, case):
    store = store_with(tmp_path, [HOSTILE[case]])
    snap = sn.Snapshotter(store)
    _rec, layers = snap.image('example.com/test:1')
    warnings = []
    snap.ensure(layers, warnings)
    fs = snap.fs_path(layers[0][2])
    for dirpath, dirs, files in os.walk(fs):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            st_ = os.lstat(p)
            assert not (os.path.isfile(p) and os.path.samestat(st_, os.stat(str(sentinel / 'keep')))), p
            assert (st_.st_mode & 0o170000) not in (0o020000, 0o060000), 'device node %s made' % p
    if case == 'devices':
        assert any('device node' in w for w in warnings), warnings
    if case == 'hardlink-out':
        assert sum('hard link' in w for w in warnings) == 2, warnings


def test_hostile_layer_in_copy_mode_never_writes_outside(tmp_path, sentinel):
    layers = [HOSTILE[c] for c in sorted(HOSTILE)]
    store = store_with(tmp_path, layers)
    target = str(tmp_path / 'pods' / 'c')
    r = sn.prepare_rootfs(store, 'example.com/test:1', target, mode='copy')
    assert r['changed'] and r['mode'] == 'copy'
    assert not sn.prepare_rootfs(store, 'example.com/test:1', target, mode='copy')['changed']
    assert sn.remove_rootfs(target)
    assert os.listdir(str(tmp_path / 'pods')) == []


def test_direct_saferoot_never_writes_through_an_existing_symlink(tmp_path, sentinel):
    root = tmp_path / 'root'
    root.mkdir()
    os.symlink(str(sentinel / 'keep'), str(root / 'f'))
    fs = SafeRoot(str(root), direct=True)
    with fs.batch():
        fs.write_file('/f', io.BytesIO(b'new'))
    assert not os.path.islink(str(root / 'f')) and (root / 'f').read_bytes() == b'new'


def test_a_directory_not_made_from_an_image_is_not_replaced(tmp_path):
    store = store_with(tmp_path, [[member('a', data=b'1')]])
    target = tmp_path / 'home'
    target.mkdir()
    (target / 'precious').write_text('mine\n')
    with pytest.raises(sn.SnapshotError, match='no image put there'):
        sn.prepare_rootfs(store, 'example.com/test:1', str(target), mode='copy')
    assert (target / 'precious').read_text() == 'mine\n'
    # an empty directory (a mount point made ready by someone) is fine
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert sn.prepare_rootfs(store.root, 'example.com/test:1', str(empty), mode='copy')['changed']
    assert (empty / 'a').read_text() == '1'
    assert sn.remove_rootfs(str(empty)) and not empty.exists()
