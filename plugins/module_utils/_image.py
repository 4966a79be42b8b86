# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Local container images: read their layers and apply them to a root directory safely.

Formats (detected from the content):
- `dir`: a plain directory tree (one layer);
- `tar`: a plain root filesystem tar (gzip/bzip2/xz or not; one layer);
- `oci`: an OCI image layout (directory or tar): index.json -> manifest -> layers;
- `docker-archive`: what `docker save` writes: manifest.json -> Layers.

Layers are applied in order with the OCI whiteout rules (`.wh.<name>` deletes <name> from
lower layers, `.wh..wh..opq` hides everything the lower layers put in that directory).
Member names are re-rooted (leading '/' and '..' never leave the root), parents are
resolved inside the root (an earlier `etc -> /` symlink leads to <root>/, never to the host
/), hard links must point at a file inside the root, device nodes are skipped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import stat
import tarfile

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
from ansible_collections.barepod.linux.plugins.module_utils._safefs import UnderMount, clean

WHITEOUT_PREFIX = '.wh.'
WHITEOUT_OPAQUE = '.wh..wh..opq'
FORMATS = ('auto', 'dir', 'tar', 'oci', 'docker-archive')
IMAGE_TOP = frozenset(['manifest.json', 'index.json', 'oci-layout', 'repositories', 'blobs'])
_HEX_TOP = re.compile(r'^[0-9a-f]{64}(\.json)?\Z')


def _tar_members(path):
    try:
        return tarfile.open(path, 'r:*')
    except (tarfile.TarError, IOError, OSError) as e:
        raise BarepodError('%s is not a readable tar archive: %s' % (path, e), field='image', value=path)


def detect_format(path):
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, 'index.json')) and os.path.exists(os.path.join(path, 'oci-layout')):
            return 'oci'
        if os.path.isfile(os.path.join(path, 'manifest.json')):
            return 'docker-archive'
        return 'dir'
    if not os.path.isfile(path):
        raise BarepodError('%s does not exist' % path, field='image', value=path)
    # an image archive holds only these at its top level; the first other name means a plain
    # root filesystem tar (so a big rootfs.tar.gz is not read to its end to find out)
    names = set()
    with _tar_members(path) as tf:
        for m in tf:
            name = clean(m.name)
            top = name.lstrip('/').split('/')[0]
            if not top:
                continue
            if top not in IMAGE_TOP and not _HEX_TOP.match(top):
                return 'tar'
            names.add(name)
    if '/manifest.json' in names:
        return 'docker-archive'
    if '/index.json' in names and '/oci-layout' in names:
        return 'oci'
    return 'tar'


class _Source(object):
    """Uniform access to files of a directory or a tar (for oci / docker-archive)."""

    def __init__(self, path):
        self.path = path
        self.tar = None if os.path.isdir(path) else _tar_members(path)
        self._index = None

    def close(self):
        if self.tar is not None:
            self.tar.close()

    def open(self, name):
        if self.tar is None:
            p = os.path.join(self.path, clean(name).lstrip('/'))
            if not os.path.realpath(p).startswith(os.path.realpath(self.path) + '/'):
                raise BarepodError('image file %s points outside the image' % name, field='image', value=self.path)
            return open(p, 'rb')
        if self._index is None:
            self._index = {}
            for m in self.tar.getmembers():
                self._index[clean(m.name)] = m
        m = self._index.get(clean(name))
        for _hop in range(16):
            if m is None or not (m.issym() or m.islnk()):
                break
            target = m.linkname if m.islnk() else posixpath.join(posixpath.dirname(m.name), m.linkname)
            m = self._index.get(clean(target))
        if m is None or not m.isfile():
            raise BarepodError('image %s has no file %s' % (self.path, name), field='image', value=self.path)
        return self.tar.extractfile(m)

    def json(self, name):
        with self.open(name) as f:
            try:
                return json.loads(f.read().decode('utf-8'))
            except ValueError as e:
                raise BarepodError('image %s: %s is not valid JSON: %s' % (self.path, name, e),
                                   field='image', value=self.path)


def _blob_name(digest):
    if not isinstance(digest, str) or ':' not in digest:
        raise BarepodError('bad digest %r' % (digest,), field='image', value=digest)
    alg, hexd = digest.split(':', 1)
    if '/' in alg or '/' in hexd or alg in ('.', '..') or hexd in ('.', '..'):
        raise BarepodError('bad digest %r' % (digest,), field='image', value=digest)
    return 'blobs/%s/%s' % (alg, hexd)


GOARCH = {'x86_64': 'amd64', 'aarch64': 'arm64', 'armv7l': 'arm', 'i686': '386', 'ppc64le': 'ppc64le',
          's390x': 's390x', 'riscv64': 'riscv64'}


def host_arch():
    return GOARCH.get(os.uname().machine, os.uname().machine)


def _oci_layers(src, arch=None):
    """Layer blob names of the manifest for `arch` (the host's by default) from an OCI index
    (nested indexes, as multi-arch images have, are followed)."""
    arch = arch or host_arch()
    doc = src.json('index.json')
    for _level in range(4):
        manifests = doc.get('manifests') or []
        if not manifests:
            raise BarepodError('OCI index of %s lists no manifest' % src.path, field='image', value=src.path)
        chosen = manifests[0]
        for m in manifests:
            plat = m.get('platform') or {}
            if plat.get('architecture') == arch and plat.get('os', 'linux') == 'linux':
                chosen = m
                break
        doc = src.json(_blob_name(chosen.get('digest')))
        if 'layers' in doc:
            return [_blob_name(layer.get('digest')) for layer in doc['layers']]
    raise BarepodError('OCI index of %s nests too deep' % src.path, field='image', value=src.path)


def _docker_layers(src):
    doc = src.json('manifest.json')
    if not isinstance(doc, list) or not doc or not isinstance(doc[0], dict) or 'Layers' not in doc[0]:
        raise BarepodError('%s: manifest.json has no Layers' % src.path, field='image', value=src.path)
    return list(doc[0]['Layers'])


class Image(object):
    """A local image: iterate its layers as tarfile-like streams of members."""

    def __init__(self, path, fmt='auto'):
        if not isinstance(path, str) or not path.startswith('/'):
            raise BarepodError('must be an absolute path, got %r' % (path,), field='image', value=path)
        if not os.path.exists(path):
            raise BarepodError('%s does not exist' % path, field='image', value=path)
        self.path = path
        self.format = detect_format(path) if fmt == 'auto' else fmt
        if self.format not in FORMATS:
            raise BarepodError('unknown format %r' % (fmt,), field='image_format', value=fmt)

    def fingerprint(self):
        """Identity of the image content as it is on disk (size/mtime/mode of every file)."""
        h = hashlib.sha256()
        h.update(self.format.encode())
        if os.path.isdir(self.path):
            for dirpath, dirnames, filenames in os.walk(self.path):
                dirnames.sort()
                for n in sorted(filenames + dirnames):
                    p = os.path.join(dirpath, n)
                    st = os.lstat(p)
                    link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else ''
                    h.update(('%s\0%o\0%d\0%d\0%d\0%d\0%s\n' % (
                        os.path.relpath(p, self.path), st.st_mode, st.st_uid, st.st_gid, st.st_size,
                        st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else 0, link)
                    ).encode('utf-8', 'surrogateescape'))
        else:
            st = os.stat(self.path)
            h.update(('%s\0%d\0%d\0%d' % (os.path.realpath(self.path), st.st_size, st.st_mtime_ns,
                                          st.st_ino)).encode('utf-8', 'surrogateescape'))
        return h.hexdigest()

    def layers(self):
        """Yield (layer_name, members) with members an iterable of (TarInfo, opener)."""
        if self.format == 'dir':
            yield '<dir>', _dir_members(self.path)
            return
        if self.format == 'tar':
            with _tar_members(self.path) as tf:
                yield os.path.basename(self.path), _tar_iter(tf)
            return
        src = _Source(self.path)
        try:
            names = _oci_layers(src) if self.format == 'oci' else _docker_layers(src)
            for name in names:
                f = src.open(name)
                try:
                    data = f
                    if src.tar is not None:
                        # members of an outer tar are not seekable enough for every codec
                        data = io.BytesIO(f.read())
                    try:
                        tf = tarfile.open(fileobj=data, mode='r:*')
                    except tarfile.TarError as e:
                        raise BarepodError('layer %s of %s is not a tar (gzip/bzip2/xz) archive: %s'
                                           % (name, self.path, e), field='image', value=self.path)
                    with tf:
                        yield name, _tar_iter(tf)
                finally:
                    f.close()
        finally:
            src.close()


def _tar_iter(tf):
    for m in tf:
        yield m, (lambda m=m: tf.extractfile(m))


def _dir_members(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(dirnames) + sorted(filenames):
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            ti = tarfile.TarInfo(os.path.relpath(p, root))
            ti.mode = stat.S_IMODE(st.st_mode)
            ti.uid, ti.gid = st.st_uid, st.st_gid
            ti.mtime = st.st_mtime
            if stat.S_ISDIR(st.st_mode):
                ti.type = tarfile.DIRTYPE
            elif stat.S_ISLNK(st.st_mode):
                ti.type = tarfile.SYMTYPE
                ti.linkname = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                ti.type = tarfile.REGTYPE
                ti.size = st.st_size
            elif stat.S_ISFIFO(st.st_mode):
                ti.type = tarfile.FIFOTYPE
            else:
                ti.type = tarfile.CHRTYPE
            yield ti, (lambda p=p: open(p, 'rb'))


def _descendants(paths, d):
    prefix = d.rstrip('/') + '/'
    return [p for p in paths if p.startswith(prefix)]


def _apply_member(fs, ti, path, opener, paths, warnings):
    """Apply one non-whiteout member; return False when it was skipped."""
    mtime_ns = int(ti.mtime * 1e9) if ti.mtime else None
    if ti.isdir():
        fs.mkdir(path, ti.mode, ti.uid, ti.gid)
    elif ti.isreg():
        f = opener()
        try:
            fs.write_file(path, f, ti.mode, ti.uid, ti.gid, mtime_ns)
        finally:
            f.close()
    elif ti.issym():
        fs.symlink(path, ti.linkname, ti.uid, ti.gid, mtime_ns)
    elif ti.islnk():
        if not fs.hardlink(path, clean(ti.linkname)):
            warnings.append('image: hard link %s -> %s skipped (no such file in the image)'
                            % (path, ti.linkname))
            return False
    elif ti.isfifo():
        fs.mkfifo(path, ti.mode)
    else:
        warnings.append('image: device node %s skipped' % path)
        return False
    return True


def apply_layer(fs, members, paths, warnings):
    """Apply one layer's members to SafeRoot `fs`. `paths` (dict path -> None) tracks what
    the image has put in the root so far, in order; it is updated in place. Members on a
    mount point below the root (a bind-mounted hostPath) are skipped with a warning."""
    this_layer = set()
    opaque = []
    parents = set()  # directories with something below them in `paths` (a superset)
    for p in paths:
        q = posixpath.dirname(p)
        while q not in parents and q != '/':
            parents.add(q)
            q = posixpath.dirname(q)
    for ti, opener in members:
        path = clean(ti.name)
        try:
            if path == '/':
                if ti.isdir():
                    fs.mkdir('/', ti.mode, ti.uid, ti.gid)
                continue
            d, base = posixpath.split(path)
            if base == WHITEOUT_OPAQUE:
                opaque.append(d)
                continue
            if base.startswith(WHITEOUT_PREFIX):
                victim = clean(posixpath.join(d, base[len(WHITEOUT_PREFIX):]))
                if victim == '/':
                    warnings.append('image: whiteout %s of the root itself ignored' % ti.name)
                    continue
                fs.remove(victim)
                for p in [victim] + _descendants(paths, victim):
                    paths.pop(p, None)
                continue
            if not _apply_member(fs, ti, path, opener, paths, warnings):
                continue
        except UnderMount as e:
            # hidden by a mount (a hostPath, a generated /etc file): the image still provides
            # the path, it is just not written through the mount
            warnings.append('image: %s skipped: %s' % (path, e))
            if posixpath.basename(path).startswith(WHITEOUT_PREFIX):
                continue
        if not ti.isdir() and path in parents:
            # a non-directory replaced a directory: what was below it is gone
            for p in _descendants(paths, path):
                paths.pop(p, None)
        this_layer.add(path)
        paths[path] = None
        q = posixpath.dirname(path)
        while q not in parents and q != '/':
            parents.add(q)
            q = posixpath.dirname(q)
    if opaque:
        keep = set()
        for q in this_layer:
            while q not in ('/', ''):
                q = posixpath.dirname(q)
                keep.add(q)
        for d in opaque:
            for p in _descendants(paths, d):
                if p in this_layer or p in keep:
                    continue
                try:
                    if fs.lstat(p) is not None:
                        fs.remove(p)
                except UnderMount as e:
                    warnings.append('image: %s kept: %s' % (p, e))
                    continue
                paths.pop(p, None)
    return paths


def apply_image(fs, image, warnings):
    """Apply every layer in order; return the sorted list of paths the image provides."""
    paths = {}
    for _name, members in image.layers():
        with fs.batch():
            apply_layer(fs, members, paths, warnings)
    return sorted(paths)
