# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image formats, layer order, whiteouts, and hostile archives that must not write outside
the root (a sentinel directory next to it must stay untouched)."""

import hashlib
import io
import json
import os
import tarfile

import pytest
from harness import tar_bytes, tar_member

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
from ansible_collections.barepod.linux.plugins.module_utils._image import Image, apply_image, detect_format
from ansible_collections.barepod.linux.plugins.module_utils._safefs import SafeRoot, clean


# ------------------------------------------------------------------ fixture builders

member = tar_member


def write_tar(path, members, gz=False):
    with open(str(path), 'wb') as f:
        f.write(tar_bytes(members, gz))
    return str(path)


def oci_layout(dirpath, layers, gz=True, as_tar=None):
    """An OCI image layout with an index -> manifest -> layers (optionally packed in a tar)."""
    blobs = os.path.join(str(dirpath), 'blobs', 'sha256')
    os.makedirs(blobs)

    def blob(data):
        d = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, d), 'wb') as f:
            f.write(data)
        return 'sha256:' + d, len(data)

    layer_descs = []
    for members in layers:
        dg, size = blob(tar_bytes(members, gz))
        layer_descs.append({'mediaType': 'application/vnd.oci.image.layer.v1.tar' + ('+gzip' if gz else ''),
                            'digest': dg, 'size': size})
    cfg, cfg_size = blob(b'{"architecture":"amd64","os":"linux"}')
    manifest = json.dumps({'schemaVersion': 2, 'config': {'mediaType': 'application/vnd.oci.image.config.v1+json',
                                                          'digest': cfg, 'size': cfg_size},
                           'layers': layer_descs}).encode()
    mdg, msize = blob(manifest)
    index = {'schemaVersion': 2, 'manifests': [
        {'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': mdg, 'size': msize,
         'platform': {'architecture': 'amd64', 'os': 'linux'}}]}
    with open(os.path.join(str(dirpath), 'index.json'), 'w') as f:
        json.dump(index, f)
    with open(os.path.join(str(dirpath), 'oci-layout'), 'w') as f:
        f.write('{"imageLayoutVersion": "1.0.0"}')
    if as_tar:
        with tarfile.open(str(as_tar), 'w') as tf:
            for n in sorted(os.listdir(str(dirpath))):
                tf.add(os.path.join(str(dirpath), n), n)
        return str(as_tar)
    return str(dirpath)


def docker_archive(path, layers, style='legacy'):
    """`docker save` output: legacy (<id>/layer.tar) or Docker 25+ (blobs/sha256/<digest>)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as tf:
        names = []
        for members in layers:
            data = tar_bytes(members)
            digest = hashlib.sha256(data).hexdigest()
            name = ('%s/layer.tar' if style == 'legacy' else 'blobs/sha256/%s') % digest
            names.append(name)
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        man = json.dumps([{'Config': 'cfg.json', 'RepoTags': ['busybox:latest'], 'Layers': names}]).encode()
        ti = tarfile.TarInfo('manifest.json')
        ti.size = len(man)
        tf.addfile(ti, io.BytesIO(man))
    with open(str(path), 'wb') as f:
        f.write(buf.getvalue())
    return str(path)


LOWER = [member('a', 'dir'), member('a/f1', data=b'one'), member('a/f2', data=b'two'), member('b', 'dir'),
         member('b/g', data=b'g'), member('c', 'dir'), member('c/old', data=b'old'), member('c/sub', 'dir'),
         member('c/sub/deep', data=b'deep'), member('bin', 'dir'), member('bin/sh', data=b'#!sh', mode=0o755)]
UPPER = [member('a/.wh.f1'), member('.wh.b'), member('c', 'dir'), member('c/.wh..wh..opq'),
         member('c/new', data=b'new'), member('a/f2', data=b'TWO')]


def tree(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = '/' + os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = '-> ' + os.readlink(p)
            elif os.path.isdir(p):
                out[rel] = 'dir'
            else:
                out[rel] = open(p, 'rb').read()
    return out


def check_layered(root, paths):
    t = tree(root)
    assert '/a/f1' not in t and '/b' not in t and '/b/g' not in t
    assert t['/a/f2'] == b'TWO'
    assert t['/c/new'] == b'new'
    assert '/c/old' not in t and '/c/sub' not in t
    assert t['/bin/sh'] == b'#!sh'
    assert paths == sorted(['/a', '/a/f2', '/bin', '/bin/sh', '/c', '/c/new'])


# ------------------------------------------------------------------ formats

def test_oci_layout_dir_whiteouts(tmp_path):
    img = oci_layout(tmp_path / 'oci', [LOWER, UPPER])
    root = tmp_path / 'root'
    root.mkdir()
    image = Image(img)
    assert image.format == 'oci'
    paths = apply_image(SafeRoot(str(root)), image, [])
    check_layered(str(root), paths)


def test_oci_layout_tar_uncompressed(tmp_path):
    img = oci_layout(tmp_path / 'oci', [LOWER, UPPER], gz=False, as_tar=tmp_path / 'oci.tar')
    assert detect_format(img) == 'oci'
    root = tmp_path / 'root'
    root.mkdir()
    check_layered(str(root), apply_image(SafeRoot(str(root)), Image(img), []))


@pytest.mark.parametrize('style', ['legacy', 'oci'])
def test_docker_save_archive(tmp_path, style):
    img = docker_archive(tmp_path / 'saved.tar', [LOWER, UPPER], style)
    assert detect_format(img) == 'docker-archive'
    root = tmp_path / 'root'
    root.mkdir()
    check_layered(str(root), apply_image(SafeRoot(str(root)), Image(img), []))


def test_plain_tar_gz_and_dir(tmp_path):
    img = write_tar(tmp_path / 'rootfs.tar.gz', LOWER, gz=True)
    assert detect_format(img) == 'tar'
    root = tmp_path / 'root'
    root.mkdir()
    paths = apply_image(SafeRoot(str(root)), Image(img), [])
    assert tree(str(root))['/c/sub/deep'] == b'deep'
    assert '/c/sub/deep' in paths
    # the result as a 'dir' image into another root
    root2 = tmp_path / 'root2'
    root2.mkdir()
    image = Image(str(root))
    assert image.format == 'dir'
    apply_image(SafeRoot(str(root2)), image, [])
    assert tree(str(root2)) == tree(str(root))
    assert os.stat(str(root2 / 'bin' / 'sh')).st_mode & 0o777 == 0o755


def test_fingerprint_changes_with_content(tmp_path):
    img = write_tar(tmp_path / 'r.tar', LOWER)
    fp = Image(img).fingerprint()
    assert Image(img).fingerprint() == fp
    write_tar(tmp_path / 'r.tar', LOWER + [member('extra', data=b'x')])
    assert Image(img).fingerprint() != fp


def test_bad_images(tmp_path):
    with pytest.raises(BarepodError, match='image'):
        Image(str(tmp_path / 'nope.tar'))
    junk = tmp_path / 'junk.tar'
    junk.write_bytes(b'not a tar at all' * 100)
    with pytest.raises(BarepodError, match='image'):
        Image(str(junk))
    with pytest.raises(BarepodError, match='image'):
        Image('relative.tar')
    d = tmp_path / 'bad-oci'
    d.mkdir()
    (d / 'oci-layout').write_text('{}')
    (d / 'index.json').write_text('{"manifests": [{"digest": "sha256:../../etc"}]}')
    root = tmp_path / 'root'
    root.mkdir()
    with pytest.raises(BarepodError):
        apply_image(SafeRoot(str(root)), Image(str(d)), [])


# ------------------------------------------------------------------ hostile archives

HOSTILE = [
    member('/abs-file', data=b'abs'),
    member('../../../../escape-dotdot', data=b'dotdot'),
    member('etc', 'symlink', target='/'),
    member('etc/passwd-from-image', data=b'through-etc-symlink'),
    member('up', 'symlink', target='../../../../../'),
    member('up/through-up', data=b'through-up'),
    member('sentinel-link', 'symlink', target='SENTINEL'),
    member('sentinel-link/pwned', data=b'pwned'),
    member('hl', 'hardlink', target='../../../../SENTINEL/secret'),
    member('hl-abs', 'hardlink', target='SENTINEL/secret'),
    member('dev-null', 'chr'),
    member('up/.wh.secret'),
    member('sentinel-link/.wh..wh..opq'),
]


def _hostile_setup(tmp_path):
    sentinel = tmp_path / 'sentinel'
    sentinel.mkdir()
    (sentinel / 'secret').write_text('do not touch')
    root = tmp_path / 'box' / 'root'
    root.mkdir(parents=True)
    members = []
    for ti, data in HOSTILE:
        if 'SENTINEL' in ti.linkname:
            ti.linkname = ti.linkname.replace('SENTINEL', str(sentinel))
        members.append((ti, data))
    return sentinel, root, members


def _snapshot(d):
    out = {}
    for dirpath, dirnames, filenames in os.walk(str(d)):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_nlink)
    return out


@pytest.mark.parametrize('fmt', ['tar', 'oci', 'docker-archive'])
def test_hostile_image_writes_nothing_outside(tmp_path, fmt):
    sentinel, root, members = _hostile_setup(tmp_path)
    if fmt == 'tar':
        img = write_tar(tmp_path / 'evil.tar', members)
    elif fmt == 'oci':
        img = oci_layout(tmp_path / 'oci', [members[:8], members[8:]])
    else:
        img = docker_archive(tmp_path / 'evil-save.tar', [members[:8], members[8:]])
    def outside():
        return dict((p, v) for p, v in _snapshot(tmp_path).items()
                    if not p.startswith(str(root)) and not p.startswith(str(tmp_path / 'oci'))
                    and not p.endswith('.tar'))

    outside_before = outside()
    warnings = []
    paths = apply_image(SafeRoot(str(root)), Image(img), warnings)
    outside_after = outside()
    assert outside_after == outside_before
    assert sorted(os.listdir(str(sentinel))) == ['secret']
    assert (sentinel / 'secret').read_text() == 'do not touch'
    t = tree(str(root))
    # everything landed inside the root, re-rooted
    assert t['/abs-file'] == b'abs'
    assert t['/escape-dotdot'] == b'dotdot'
    assert t['/passwd-from-image'] == b'through-etc-symlink'  # etc -> / means the root's /
    assert t['/through-up'] == b'through-up'
    assert any('device node' in w for w in warnings)
    assert all(p.startswith('/') and '..' not in p for p in paths)


def test_safe_root_resolves_inside(tmp_path):
    root = tmp_path / 'r'
    (root / 'x').mkdir(parents=True)
    os.symlink('/', str(root / 'etc'))
    os.symlink('../../../..', str(root / 'x' / 'up'))
    fs = SafeRoot(str(root))
    assert fs.resolve('/etc/passwd') == os.path.join(str(root), 'passwd')
    assert fs.resolve('x/up/etc') == str(root)
    fs.write_file('/etc/shadow', io.BytesIO(b's'), 0o600)
    assert (root / 'shadow').read_bytes() == b's'
    # writing at a path that *is* a symlink replaces the link, never writes through it
    os.symlink(str(tmp_path / 'outside-file'), str(root / 'link'))
    fs.write_file('/link', io.BytesIO(b'in'), 0o644)
    assert not os.path.islink(str(root / 'link')) and not (tmp_path / 'outside-file').exists()
    assert clean('../../a/./b/..') == '/a'


# ------------------------------------------------------------------ property: never outside

try:
    from hypothesis import HealthCheck, given, settings, strategies as st
except ImportError:  # pragma: no cover
    given = None

if given is not None:
    SEG = st.sampled_from(['a', 'b', 'etc', '..', '.', '', 'SENT'])
    NAME = st.lists(SEG, min_size=1, max_size=5).map(lambda parts: ('/' if parts[0] == '' else '') + '/'.join(parts))
    TARGET = st.one_of(NAME, st.sampled_from(['/', '../../../..', 'SENTINEL', 'SENTINEL/secret', '/etc', '..']))
    MEMBER = st.tuples(st.sampled_from(['file', 'dir', 'symlink', 'hardlink', 'whiteout', 'opaque']), NAME, TARGET)

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(MEMBER, min_size=1, max_size=12))
    def test_property_random_archives_stay_inside(members):
        import tempfile
        import shutil
        base = tempfile.mkdtemp(prefix='bprootfs-prop-')
        try:
            sentinel = os.path.join(base, 'SENTINEL')
            os.makedirs(sentinel)
            with open(os.path.join(sentinel, 'secret'), 'w') as f:
                f.write('s')
            root = os.path.join(base, 'deep', 'root')
            os.makedirs(root)
            tms = []
            for kind, name, target in members:
                target = target.replace('SENTINEL', sentinel)
                if kind == 'whiteout':
                    d, b = os.path.split(name)
                    tms.append(member(os.path.join(d, '.wh.' + (b or 'x'))))
                elif kind == 'opaque':
                    tms.append(member(os.path.join(name, '.wh..wh..opq')))
                else:
                    tms.append(member(name, kind, data=b'd', target=target))
            img = write_tar(os.path.join(base, 'x.tar'), tms)
            before = _snapshot(sentinel)
            try:
                apply_image(SafeRoot(root), Image(img, 'tar'), [])
            except BarepodError as e:
                assert 'symbolic links' in str(e)  # a symlink loop is refused; anything else applies
            assert _snapshot(sentinel) == before
            assert sorted(os.listdir(base)) == ['SENTINEL', 'deep', 'x.tar']
            assert os.listdir(os.path.join(base, 'deep')) == ['root']
        finally:
            shutil.rmtree(base, ignore_errors=True)


def test_hard_link_below_its_own_target_is_skipped_not_a_crash(tmp_path):
    """Found by the property test: a file `a`, then a hard link `a/a` to `a`. Making the link's
    parent turns the file `a` into a directory (as for any member below a non-directory), so the
    target is a directory by the time it is linked: skipped with a warning, not an EPERM from
    link(2) on a directory."""
    root = tmp_path / 'root'
    root.mkdir()
    img = write_tar(tmp_path / 'x.tar', [member('a', data=b'd'), member('a/a', 'hardlink', target='a'),
                                         member('b', data=b'e'), member('c/b', 'hardlink', target='b')])
    warnings = []
    apply_image(SafeRoot(str(root)), Image(img, 'tar'), warnings)
    assert (root / 'a').is_dir() and not (root / 'a' / 'a').exists()
    assert any('a/a' in w for w in warnings), warnings
    assert os.stat(str(root / 'c' / 'b')).st_ino == os.stat(str(root / 'b')).st_ino   # ordinary links still work


def test_detect_format_stops_at_first_rootfs_name(tmp_path):
    # a rootfs that happens to hold /manifest.json is still a plain tar
    img = write_tar(tmp_path / 'r.tar', [member('bin', 'dir'), member('manifest.json', data=b'[]')])
    assert detect_format(img) == 'tar'
    img = write_tar(tmp_path / 'r2.tar', [member('./', 'dir'), member('./etc', 'dir')])
    assert detect_format(img) == 'tar'


def test_file_replacing_directory_across_layers(tmp_path):
    img = oci_layout(tmp_path / 'oci', [[member('d', 'dir'), member('d/x', data=b'x'), member('d/y', 'dir'),
                                         member('d/y/z', data=b'z'), member('keep', data=b'k')],
                                        [member('d', data=b'now a file'), member('l', 'symlink', target='keep')]])
    root = tmp_path / 'root'
    root.mkdir()
    paths = apply_image(SafeRoot(str(root)), Image(img), [])
    assert paths == ['/d', '/keep', '/l']
    assert (root / 'd').read_bytes() == b'now a file'
    assert os.readlink(str(root / 'l')) == 'keep'


def test_multi_arch_nested_index_picks_host_platform(tmp_path):
    from ansible_collections.barepod.linux.plugins.module_utils._image import host_arch
    d = oci_layout(tmp_path / 'oci', [[member('right', data=b'host arch')]])
    blobs = os.path.join(d, 'blobs', 'sha256')
    real = json.load(open(os.path.join(d, 'index.json')))['manifests'][0]
    wrong_layer = tar_bytes([member('wrong', data=b'other arch')])
    wl = hashlib.sha256(wrong_layer).hexdigest()
    open(os.path.join(blobs, wl), 'wb').write(wrong_layer)
    wm = json.dumps({'schemaVersion': 2, 'layers': [{'digest': 'sha256:' + wl}]}).encode()
    wmd = hashlib.sha256(wm).hexdigest()
    open(os.path.join(blobs, wmd), 'wb').write(wm)
    other = 'arm64' if host_arch() != 'arm64' else 'amd64'
    real['platform'] = {'architecture': host_arch(), 'os': 'linux'}
    nested = json.dumps({'schemaVersion': 2, 'manifests': [
        {'digest': 'sha256:' + wmd, 'platform': {'architecture': other, 'os': 'linux'}}, real]}).encode()
    nd = hashlib.sha256(nested).hexdigest()
    open(os.path.join(blobs, nd), 'wb').write(nested)
    json.dump({'schemaVersion': 2, 'manifests': [
        {'mediaType': 'application/vnd.oci.image.index.v1+json', 'digest': 'sha256:' + nd}]},
        open(os.path.join(d, 'index.json'), 'w'))
    root = tmp_path / 'root'
    root.mkdir()
    assert apply_image(SafeRoot(str(root)), Image(d), []) == ['/right']
