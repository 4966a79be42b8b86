# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node's image store: platform resolution, imports of every local format, verification,
and that an interrupted or refused ingest leaves no usable image."""

import gzip
import hashlib
import io
import json
import os
import tarfile

import pytest

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
from ansible_collections.barepod.linux.plugins.module_utils import _imagestore as st


def layer(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as tf:
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


class Layout(object):
    """An OCI layout built in a test directory."""

    def __init__(self, path):
        self.path = str(path)
        self.blobs = os.path.join(self.path, 'blobs', 'sha256')
        os.makedirs(self.blobs)
        with open(os.path.join(self.path, 'oci-layout'), 'w') as f:
            f.write('{"imageLayoutVersion": "1.0.0"}')

    def blob(self, data, mt):
        if not isinstance(data, bytes):
            data = json.dumps(data).encode()
        d = 'sha256:' + hashlib.sha256(data).hexdigest()
        with open(os.path.join(self.blobs, d[7:]), 'wb') as f:
            f.write(data)
        return dict(mediaType=mt, digest=d, size=len(data))

    def image(self, arch='amd64', files=(('hello', b'hi'),), cmd=('sh',)):
        lay = self.blob(layer(files), st.MT_OCI_LAYER_GZIP)
        cfg = self.blob(dict(architecture=arch, os='linux', config=dict(Cmd=list(cmd)),
                             rootfs=dict(type='layers', diff_ids=[])), st.MT_OCI_CONFIG)
        return self.blob(dict(schemaVersion=2, mediaType=st.MT_OCI_MANIFEST, config=cfg, layers=[lay]), st.MT_OCI_MANIFEST)

    def index(self, top, name=None):
        if name:
            top = dict(top, annotations={st.REF_NAME_ANNOTATION: name})
        with open(os.path.join(self.path, 'index.json'), 'w') as f:
            json.dump(dict(schemaVersion=2, manifests=[top]), f)


HOST = st.host_platform()


def test_host_platform():
    assert st.host_platform('x86_64') == dict(os='linux', architecture='amd64', variant='')
    assert st.host_platform('aarch64') == dict(os='linux', architecture='arm64', variant='v8')
    assert st.host_platform('armv7l') == dict(os='linux', architecture='arm', variant='v7')


def test_choose_manifest():
    idx = dict(manifests=[
        dict(digest='a', platform=dict(os='linux', architecture='arm', variant='v6')),
        dict(digest='b', platform=dict(os='linux', architecture='arm', variant='v7')),
        dict(digest='c', platform=dict(os='linux', architecture='arm64')),
        dict(digest='d', platform=dict(os='linux', architecture='amd64')),
        dict(digest='e', platform=dict(os='windows', architecture='amd64')),
    ])
    assert st.choose_manifest(idx, st.host_platform('armv7l'))['digest'] == 'b'
    assert st.choose_manifest(idx, st.host_platform('aarch64'))['digest'] == 'c'
    assert st.choose_manifest(idx, st.host_platform('x86_64'))['digest'] == 'd'
    assert st.choose_manifest(idx, st.host_platform('s390x')) is None


def do_import(store, path, names=(), **kw):
    with store.lock():
        with store.ingest() as ing:
            rec, canon = st.import_archive(store, ing, str(path), names=names, **kw)
            store.commit(ing, canon, rec)
    return rec


def test_import_oci_index_resolves_platform(tmp_path):
    lay = Layout(tmp_path / 'oci')
    mine = lay.image(HOST['architecture'], files=[('which', b'mine')])
    other = lay.image('s390x' if HOST['architecture'] != 's390x' else 'amd64', files=[('which', b'other')])
    mine['platform'] = dict(os='linux', architecture=HOST['architecture'])
    other['platform'] = dict(os='linux', architecture='s390x' if HOST['architecture'] != 's390x' else 'amd64')
    idx = lay.blob(dict(schemaVersion=2, mediaType=st.MT_OCI_INDEX, manifests=[other, mine]), st.MT_OCI_INDEX)
    lay.index(idx, 'example.com/multi:1')
    store = st.ImageStore(str(tmp_path / 'store'))
    rec = do_import(store, lay.path)
    assert rec['target'] == idx['digest'] and rec['manifest'] == mine['digest']
    assert store.get('example.com/multi:1')['config'] == rec['config']
    assert store.get('example.com/multi@' + idx['digest']) is not None  # a repo digest finds it
    # only this platform's blobs (plus the index) are stored
    have = set('sha256:' + n for n in os.listdir(store.blob_dir))
    assert have == {idx['digest'], mine['digest'], rec['config']} | set(rec['layers'])
    imgs = store.images()
    assert imgs[0]['repo_tags'] == ['example.com/multi:1']
    assert imgs[0]['repo_digests'] == ['example.com/multi@' + idx['digest']]


def test_bare_tag_annotation_needs_a_name(tmp_path):
    lay = Layout(tmp_path / 'oci')
    lay.index(lay.image(HOST['architecture']), 'latest')
    store = st.ImageStore(str(tmp_path / 'store'))
    with pytest.raises(BarepodError, match='give a name'):
        do_import(store, lay.path)
    assert store.refs() == {}
    rec = do_import(store, lay.path, names=['busybox'])
    assert store.get('docker.io/library/busybox:latest') == rec


def test_corrupt_blob_leaves_nothing(tmp_path):
    lay = Layout(tmp_path / 'oci')
    man = lay.image(HOST['architecture'])
    lay.index(man, 'example.com/x:1')
    doc = json.load(open(os.path.join(lay.blobs, man['digest'][7:])))
    p = os.path.join(lay.blobs, doc['layers'][0]['digest'][7:])
    data = bytearray(open(p, 'rb').read())
    data[10] ^= 0xff
    open(p, 'wb').write(bytes(data))
    store = st.ImageStore(str(tmp_path / 'store'))
    with pytest.raises(BarepodError, match='digest mismatch for blob: expected %s, got ' % doc['layers'][0]['digest']):
        do_import(store, lay.path)
    assert store.refs() == {} and os.listdir(store.blob_dir) == [] and os.listdir(store.ingest_dir) == []


def test_killed_ingest_is_cleared_and_unused(tmp_path):
    store = st.ImageStore(str(tmp_path / 'store'))
    with store.lock():
        pass
    # what a pull killed after writing blobs to its work dir leaves behind
    dead = os.path.join(store.ingest_dir, 'ingest-dead')
    os.makedirs(dead)
    open(os.path.join(dead, 'blob-x'), 'wb').write(b'partial')
    # ... and a blob moved in whose reference was never written
    open(os.path.join(store.blob_dir, 'a' * 64), 'wb').write(b'orphan')
    assert store.refs() == {} and store.images() == []
    with store.lock():
        assert os.listdir(store.ingest_dir) == []
        assert store.gc() == ['sha256:' + 'a' * 64]


def test_docker_archive_rootfs_tar_and_dir(tmp_path):
    store = st.ImageStore(str(tmp_path / 'store'))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode='w') as tf:
        ti = tarfile.TarInfo('bin/x')
        ti.size = 2
        tf.addfile(ti, io.BytesIO(b'hi'))
    layer_tar = raw.getvalue()
    cfg = json.dumps(dict(architecture='amd64', os='linux', config=dict(Cmd=['x']))).encode()
    cid = hashlib.sha256(cfg).hexdigest()
    arch = tmp_path / 'save.tar'
    lname = hashlib.sha256(layer_tar).hexdigest() + '/layer.tar'
    with tarfile.open(str(arch), 'w') as tf:
        for name, data in (('%s.json' % cid, cfg), (lname, layer_tar),
                           ('manifest.json', json.dumps([dict(Config='%s.json' % cid, RepoTags=['app:1'], Layers=[lname])]).encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    rec = do_import(store, arch)
    assert rec['config'] == 'sha256:' + cid
    assert store.get('app:1') == rec
    man = store.read_json(rec['manifest'])
    assert man['layers'][0]['mediaType'] == st.MT_OCI_LAYER
    assert man['layers'][0]['digest'] == 'sha256:' + hashlib.sha256(layer_tar).hexdigest()

    # a plain rootfs tar (xz): stored decompressed, with a config made for it
    import lzma
    xz = tmp_path / 'rootfs.tar.xz'
    xz.write_bytes(lzma.compress(layer_tar))
    rec2 = do_import(store, xz, names=['local/rootfs'], config=dict(Cmd=['/bin/x']))
    cfg2 = store.read_json(rec2['config'])
    assert rec2['layers'] == ['sha256:' + hashlib.sha256(layer_tar).hexdigest()]  # the same blob as the archive's
    assert cfg2['config'] == dict(Cmd=['/bin/x']) and cfg2['rootfs']['diff_ids'] == rec2['layers']

    d = tmp_path / 'dir'
    (d / 'etc').mkdir(parents=True)
    (d / 'etc' / 'os-release').write_text('ID=test\n')
    rec3 = do_import(store, d, names=['local/dir'])
    with tarfile.open(store.blob_path(rec3['layers'][0])) as tf:
        assert sorted(tf.getnames()) == ['etc', 'etc/os-release']
    assert len(store.images()) == 3


def test_bad_digest_in_layout_refused(tmp_path):
    lay = Layout(tmp_path / 'oci')
    lay.index(dict(mediaType=st.MT_OCI_MANIFEST, digest='sha256:../../../etc/passwd', size=1), 'example.com/x:1')
    store = st.ImageStore(str(tmp_path / 'store'))
    with pytest.raises(BarepodError):
        do_import(store, lay.path)
    assert store.refs() == {}


def test_store_root_must_be_absolute():
    with pytest.raises(BarepodError, match='store_root'):
        st.ImageStore('relative')
