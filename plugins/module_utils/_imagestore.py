# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node-wide image store: content-addressed blobs and references to them.

Layout under ``root`` (default /var/lib/barepod/images), the blobs as in an OCI image layout::

    blobs/sha256/<hex>   manifests, indexes, configs and layers, each verified on write
    refs.json            {canonical reference: image record} -- the only thing that makes an
                         image usable; rewritten atomically, after its blobs are durable
    ingest/              work directories of pulls and imports in progress (cleared when a
                         writer takes the lock, so a killed pull or import leaves nothing used)
    snapshots/           layers unpacked once per node, by chain id (_snapshot); removed by gc()
                         with the last image that references them
    lock                 flock(2) of concurrent writers

An image record: ``target`` (the digest a reference resolves to: an index for a multi-platform
image, as its repo digest), ``manifest`` (the manifest for this node's platform), ``config``
(its digest is the image id, as ``crictl images`` shows), ``layers``, ``size`` (config + layer
bytes, as stored), ``source``. Blobs no reference holds are removed by ``gc()``.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import shutil
import tarfile
import tempfile

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError, atomic_write, dump_json, failpoint, fsync_dir
from ansible_collections.barepod.linux.plugins.module_utils import _image
from ansible_collections.barepod.linux.plugins.module_utils import _imageref
from ansible_collections.barepod.linux.plugins.module_utils import _snapshot

DEFAULT_ROOT = '/var/lib/barepod/images'

MT_OCI_INDEX = 'application/vnd.oci.image.index.v1+json'
MT_OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
MT_OCI_CONFIG = 'application/vnd.oci.image.config.v1+json'
MT_OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar'
MT_OCI_LAYER_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip'
MT_DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json'
MT_DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json'
MT_DOCKER_SCHEMA1 = ('application/vnd.docker.distribution.manifest.v1+json',
                     'application/vnd.docker.distribution.manifest.v1+prettyjws')
INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)
MANIFEST_TYPES = (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST)
REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name'
CHUNK = 1 << 20


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(CHUNK), b''):
            h.update(chunk)
    return 'sha256:' + h.hexdigest()


def digest_bytes(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ platforms

def host_platform(machine=None):
    """This node's platform as containerd's platforms.DefaultSpec() normalises it."""
    machine = machine or os.uname().machine
    arch = _image.GOARCH.get(machine, machine)
    variant = ''
    if machine in ('aarch64', 'arm64'):
        variant = 'v8'
    elif machine.startswith('armv') and machine[4:5].isdigit():
        variant = 'v' + machine[4]
    return dict(os='linux', architecture=arch, variant=variant)


def platform_matches(plat, want):
    """containerd's platforms.Only(): same os and architecture; the variant equal, or empty on
    either side where the architecture has one default (arm64's v8 is also '')."""
    plat = plat or {}
    if plat.get('os', 'linux') != want['os'] or plat.get('architecture') != want['architecture']:
        return False
    have, need = plat.get('variant') or '', want.get('variant') or ''
    if want['architecture'] == 'arm64':
        have, need = have or 'v8', need or 'v8'
    return not have or not need or have == need


def choose_manifest(index, want=None):
    """The descriptor of `index` (an OCI index / Docker manifest list, parsed) for platform
    `want` (this node's by default): an exact variant first, then a compatible one."""
    want = want or host_platform()
    manifests = [m for m in index.get('manifests') or [] if isinstance(m, dict)]
    matches = [m for m in manifests if platform_matches(m.get('platform'), want)]
    exact = [m for m in matches if ((m.get('platform') or {}).get('variant') or '') == (want.get('variant') or '')]
    if exact or matches:
        return (exact or matches)[0]
    return None


def platform_string(want):
    return '/'.join(x for x in (want['os'], want['architecture'], want.get('variant')) if x)


# ------------------------------------------------------------------ the store

class ImageStoreError(BarepodError):
    pass


class Ingest(object):
    """A work directory for one pull or import: blobs are written and verified here, then
    moved into the store by ImageStore.commit()."""

    def __init__(self, store):
        self.store = store
        self.path = tempfile.mkdtemp(prefix='ingest-', dir=store.ingest_dir)
        self.blobs = {}  # digest -> path (in this work dir, or already in the store)

    def cleanup(self):
        shutil.rmtree(self.path, ignore_errors=True)

    def add_bytes(self, data, digest=None, what='blob'):
        got = digest_bytes(data)
        if digest is not None and got != digest:
            raise ImageStoreError('digest mismatch for %s: expected %s, got %s' % (what, digest, got), field='image', value=digest)
        if got not in self.blobs:
            if self.store.has_blob(got):
                self.blobs[got] = self.store.blob_path(got)
            else:
                p = os.path.join(self.path, got.split(':', 1)[1])
                with open(p, 'wb') as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                self.blobs[got] = p
        return got

    def _known(self, digest, what):
        """Refuse a malformed or non-sha256 `digest`; True when this work dir already holds the blob."""
        err = _imageref.validate_digest(digest)
        if err or not digest.startswith('sha256:'):
            raise ImageStoreError('%s has a bad digest %r: %s' % (what, digest, err or 'only sha256 is stored'),
                                  field='image', value=digest)
        return digest in self.blobs

    def add_file(self, src, digest=None, size=None, what='blob', link=False):
        """Copy (or hard link, for a file already in a work dir of this store) the file
        `src`, verifying its sha256 against `digest` and its size against `size`."""
        if digest is not None:
            if self._known(digest, what):
                return digest
            if self.store.has_blob(digest):
                self.blobs[digest] = self.store.blob_path(digest)
                return digest
        fd, tmp = tempfile.mkstemp(prefix='blob-', dir=self.path)
        h = hashlib.sha256()
        n = 0
        try:
            with os.fdopen(fd, 'wb') as out:
                f = open(src, 'rb') if isinstance(src, str) else src
                try:
                    for chunk in iter(lambda: f.read(CHUNK), b''):
                        h.update(chunk)
                        n += len(chunk)
                        out.write(chunk)
                finally:
                    if isinstance(src, str):
                        f.close()
                out.flush()
                os.fsync(out.fileno())
            got = 'sha256:' + h.hexdigest()
            if digest is not None and got != digest:
                raise ImageStoreError('digest mismatch for %s: expected %s, got %s' % (what, digest, got),
                                      field='image', value=digest)
            if size is not None and n != size:
                raise ImageStoreError('size mismatch for %s %s: expected %d bytes, got %d' % (what, got, size, n),
                                      field='image', value=got)
            if got in self.blobs or self.store.has_blob(got):
                os.unlink(tmp)
                self.blobs.setdefault(got, self.store.blob_path(got))
                return got
            final = os.path.join(self.path, got.split(':', 1)[1])
            os.rename(tmp, final)
            self.blobs[got] = final
            return got
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def adopt(self, path, digest, size=None, what='blob'):
        """Take the file `path` (inside this work dir) as the blob `digest` after verifying
        its sha256 and size in place (no copy)."""
        if self._known(digest, what):
            return digest
        store_path = self.store.blob_path(digest)
        try:
            st_store = os.stat(store_path)
            if os.path.samestat(st_store, os.stat(path)):
                self.blobs[digest] = store_path  # a hard link of a verified blob of the store
                return digest
        except OSError:
            pass
        if not os.path.isfile(path):
            raise ImageStoreError('%s %s is missing' % (what, digest), field='image', value=digest)
        got = sha256_file(path)
        if got != digest:
            raise ImageStoreError('digest mismatch for %s: expected %s, got %s' % (what, digest, got), field='image', value=digest)
        n = os.path.getsize(path)
        if size is not None and n != size:
            raise ImageStoreError('size mismatch for %s %s: expected %d bytes, got %d' % (what, digest, size, n),
                                  field='image', value=digest)
        with open(path, 'rb') as f:
            os.fsync(f.fileno())
        self.blobs[digest] = store_path if self.store.has_blob(digest) else path
        return digest

    def read_json(self, digest, what):
        with open(self.blobs[digest], 'rb') as f:
            data = f.read()
        try:
            return json.loads(data.decode('utf-8'))
        except ValueError as e:
            raise ImageStoreError('%s %s is not valid JSON: %s' % (what, digest, e), field='image', value=digest)


class ImageStore(object):
    def __init__(self, root=DEFAULT_ROOT):
        if not isinstance(root, str) or not root.startswith('/'):
            raise BarepodError('must be an absolute path, got %r' % (root,), field='store_root', value=root)
        self.root = root
        self.blob_dir = os.path.join(root, 'blobs', 'sha256')
        self.ingest_dir = os.path.join(root, 'ingest')
        self.refs_path = os.path.join(root, 'refs.json')

    # ---- reading (no lock: refs.json is replaced atomically)

    def exists(self):
        return os.path.isdir(self.root)

    def blob_path(self, digest):
        err = _imageref.validate_digest(digest)
        if err or not digest.startswith('sha256:'):
            raise ImageStoreError('bad digest %r: %s' % (digest, err or 'only sha256 is stored'), field='image', value=digest)
        return os.path.join(self.blob_dir, digest.split(':', 1)[1])

    def has_blob(self, digest):
        return os.path.isfile(self.blob_path(digest))

    def read_blob(self, digest):
        with open(self.blob_path(digest), 'rb') as f:
            return f.read()

    def read_json(self, digest):
        return json.loads(self.read_blob(digest).decode('utf-8'))

    def refs(self):
        try:
            with open(self.refs_path, 'r') as f:
                doc = json.load(f)
        except (IOError, OSError) as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return {}
            raise
        except ValueError as e:
            raise ImageStoreError('%s is not valid JSON: %s' % (self.refs_path, e), field='store_root', value=self.root)
        return doc.get('refs') or {}

    def get(self, ref):
        """The record of reference `ref` (a string or Reference), or None."""
        r = ref if isinstance(ref, _imageref.Reference) else _imageref.parse(ref)
        refs = self.refs()
        rec = refs.get(r.canonical)
        if rec is None and r.digest:
            # name@digest is held by any reference of that repository resolving to the digest
            for n, cand in sorted(refs.items()):
                if _imageref.parse(n).name == r.name and r.digest in (cand['target'], cand['manifest']):
                    rec = cand
                    break
        if rec is None or not self.complete(rec):
            return None
        return rec

    def complete(self, rec):
        """All the blobs of a record are in the store (a record never exists without them,
        unless someone removed blobs by hand)."""
        return all(self.has_blob(d) for d in [rec['target'], rec['manifest'], rec['config']] + list(rec['layers']))

    def images(self):
        """The stored images grouped by image id, like ``crictl images``: a list of dicts with
        id, repo_tags, repo_digests, size, config, manifest, layers."""
        by_id = {}
        for name, rec in sorted(self.refs().items()):
            img = by_id.setdefault(rec['config'], dict(
                id=rec['config'], repo_tags=[], repo_digests=[], size=rec['size'], manifest=rec['manifest'],
                layers=list(rec['layers']), platform=rec.get('platform')))
            r = _imageref.parse(name)
            if r.digest is None:
                img['repo_tags'].append(name)
            rd = '%s@%s' % (r.name, rec['target'])
            if rd not in img['repo_digests']:
                img['repo_digests'].append(rd)
        out = list(by_id.values())
        for img in out:
            img['repo_digests'].sort()
        return sorted(out, key=lambda i: (i['repo_tags'] or i['repo_digests'], i['id']))

    def find_image(self, key):
        """An image by reference or by id (``sha256:...`` or a unique prefix of its hex)."""
        imgs = self.images()
        if isinstance(key, str):
            k = key[len('sha256:'):] if key.startswith('sha256:') else key
            if k and all(c in '0123456789abcdef' for c in k) and len(k) >= 12:
                hits = [i for i in imgs if i['id'][len('sha256:'):].startswith(k)]
                if len(hits) == 1:
                    return hits[0]
        r = _imageref.parse(key)
        for i in imgs:
            if r.canonical in i['repo_tags'] or r.canonical in i['repo_digests']:
                return i
        return None

    # ---- writing

    @contextlib.contextmanager
    def lock(self):
        """The writers' lock. Taking it clears work directories of writers that died."""
        for d in (self.root, self.blob_dir, self.ingest_dir):
            os.makedirs(d, 0o700 if d == self.root else 0o755, exist_ok=True)
        fd = os.open(os.path.join(self.root, 'lock'), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            for n in os.listdir(self.ingest_dir):
                shutil.rmtree(os.path.join(self.ingest_dir, n), ignore_errors=True)
            _snapshot.Snapshotter(self).clear_tmp()
            yield self
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def ingest(self):
        """A work directory; removed afterwards whether the ingest was committed or not."""
        ing = Ingest(self)
        try:
            yield ing
        finally:
            ing.cleanup()

    def _write_refs(self, refs):
        atomic_write(self.refs_path, dump_json(dict(refs=refs)).encode('utf-8'), 0o644)
        fsync_dir(self.root)

    def commit(self, ing, names, record):
        """Move the verified blobs of `ing` into the store (durably), then point `names`
        (canonical references) at `record`. Call with the lock held."""
        moved = False
        for digest, path in sorted(ing.blobs.items() if ing is not None else ()):
            final = self.blob_path(digest)
            if path == final or os.path.exists(final):
                continue
            os.chmod(path, 0o644)
            os.rename(path, final)
            moved = True
        if moved:
            fsync_dir(self.blob_dir)
        failpoint('image-commit')  # blobs in, reference not yet: the image must not be usable
        refs = self.refs()
        for n in names:
            refs[n] = record
        self._write_refs(refs)

    def remove_refs(self, names):
        """Drop references (call with the lock held); returns the names removed."""
        refs = self.refs()
        gone = [n for n in names if n in refs]
        for n in gone:
            del refs[n]
        if gone:
            self._write_refs(refs)
        return gone

    def referenced_blobs(self):
        keep = set()
        for rec in self.refs().values():
            keep.update([rec['target'], rec['manifest'], rec['config']] + list(rec['layers']))
            keep.update(rec.get('extra') or [])
        return keep

    def unreferenced_blobs(self):
        return _snapshot.unkept_digests(self.blob_dir, self.referenced_blobs)

    def unreferenced_snapshots(self):
        return _snapshot.Snapshotter(self).unreferenced()

    def gc(self):
        """Remove blobs no reference holds and unpacked layers (snapshots) no stored image
        references and no mount uses (call with the lock held); returns the blobs' digests."""
        gone = self.unreferenced_blobs()
        for d in gone:
            try:
                os.unlink(self.blob_path(d))
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
        _snapshot.Snapshotter(self).gc()
        return gone

    # ---- building records from verified content in an ingest

    def record_from_manifest(self, ing, target, manifest_digest, source, platform=None, extra=()):
        """Check a manifest held in `ing` (config and layers present and verified) and return the
        image record for it."""
        man = ing.read_json(manifest_digest, 'manifest')
        mt = man.get('mediaType') or MT_OCI_MANIFEST
        if mt in MT_DOCKER_SCHEMA1 or man.get('schemaVersion') == 1:
            raise ImageStoreError('image manifest %s is Docker schema 1, which is no longer supported' % manifest_digest,
                                  field='image', value=manifest_digest)
        if mt not in MANIFEST_TYPES or not isinstance(man.get('config'), dict) or not isinstance(man.get('layers'), list):
            raise ImageStoreError('%s is not an image manifest (mediaType %s)' % (manifest_digest, mt), field='image', value=manifest_digest)
        config = man['config'].get('digest')
        layers = [layer.get('digest') for layer in man['layers'] if isinstance(layer, dict)]
        size = 0
        for d in [config] + layers:
            if d not in ing.blobs:
                raise ImageStoreError('image %s lacks blob %s' % (manifest_digest, d), field='image', value=d)
            size += os.path.getsize(ing.blobs[d])
        cfg = ing.read_json(config, 'config')
        plat = dict(os=cfg.get('os'), architecture=cfg.get('architecture'))
        if cfg.get('variant'):
            plat['variant'] = cfg['variant']
        return dict(target=target, manifest=manifest_digest, config=config, layers=layers, size=size,
                    source=source, platform=platform or plat, extra=sorted(set(extra) - {target}))


# ------------------------------------------------------------------ imports of local archives

def _json_bytes(doc):
    return json.dumps(doc, sort_keys=True, separators=(',', ':')).encode('utf-8')


def _layer_media_type(path):
    with open(path, 'rb') as f:
        magic = f.read(6)
    return MT_OCI_LAYER_GZIP if magic[:2] == b'\x1f\x8b' else MT_OCI_LAYER


def _diff_id(path):
    """sha256 of a layer's uncompressed tar."""
    with open(path, 'rb') as f:
        magic = f.read(6)
    opener = open
    if magic[:2] == b'\x1f\x8b':
        opener = gzip.open
    h = hashlib.sha256()
    with opener(path, 'rb') as f:
        for chunk in iter(lambda: f.read(CHUNK), b''):
            h.update(chunk)
    return 'sha256:' + h.hexdigest()


def _synth_image(ing, layer_digests, config_extra=None):
    """Config + OCI manifest for layers (already in `ing`), as containerd makes for a docker
    archive or a plain rootfs it imports; returns the manifest digest."""
    want = host_platform()
    cfg = dict(architecture=want['architecture'], os='linux',
               rootfs=dict(type='layers', diff_ids=[_diff_id(ing.blobs[d]) for d in layer_digests]),
               config=dict(config_extra or {}))
    if want['variant'] and want['architecture'] != 'arm64':
        cfg['variant'] = want['variant']
    return _manifest_for(ing, _json_bytes(cfg), layer_digests)


def _manifest_for(ing, config_bytes, layer_digests):
    config = ing.add_bytes(config_bytes, what='config')
    man = dict(schemaVersion=2, mediaType=MT_OCI_MANIFEST,
               config=dict(mediaType=MT_OCI_CONFIG, digest=config, size=len(config_bytes)),
               layers=[dict(mediaType=_layer_media_type(ing.blobs[d]), digest=d, size=os.path.getsize(ing.blobs[d]))
                       for d in layer_digests])
    return ing.add_bytes(_json_bytes(man), what='manifest')


def _copy_member_to_ingest(ing, src, name, digest=None, size=None, what='blob'):
    f = src.open(name)
    try:
        return ing.add_file(f, digest=digest, size=size, what=what)
    finally:
        f.close()


def import_oci(ing, src, ref_name=None, want=None):
    """Blobs of an OCI layout (an _image._Source) for this platform into `ing`.
    Returns (target digest, manifest digest, [ref names from annotations], extra digests)."""
    index = src.json('index.json')
    manifests = [m for m in index.get('manifests') or [] if isinstance(m, dict)]
    if ref_name is not None:
        named = [m for m in manifests if (m.get('annotations') or {}).get(REF_NAME_ANNOTATION) == ref_name]
        if not named:
            raise ImageStoreError('OCI layout %s has no image named %r' % (src.path, ref_name), field='image', value=src.path)
        manifests = named
    if not manifests:
        raise ImageStoreError('OCI index of %s lists no manifest' % src.path, field='image', value=src.path)
    top = manifests[0]
    names = [(m.get('annotations') or {}).get(REF_NAME_ANNOTATION) for m in manifests if m.get('digest') == top.get('digest')]
    target = desc = top
    extra = []
    for _level in range(4):
        d = _copy_member_to_ingest(ing, src, _image._blob_name(desc.get('digest')), desc.get('digest'), desc.get('size'), 'manifest')
        doc = ing.read_json(d, 'manifest')
        mt = doc.get('mediaType') or desc.get('mediaType')
        if mt in INDEX_TYPES or 'manifests' in doc:
            extra.append(d)
            desc = choose_manifest(doc, want)
            if desc is None:
                raise ImageStoreError('no match for platform in manifest %s of %s: not found (want %s)'
                                      % (d, src.path, platform_string(want or host_platform())), field='image', value=src.path)
            continue
        for blob in [doc.get('config') or {}] + list(doc.get('layers') or []):
            _copy_member_to_ingest(ing, src, _image._blob_name(blob.get('digest')), blob.get('digest'), blob.get('size'), 'blob')
        return target.get('digest'), d, [n for n in names if n], extra
    raise ImageStoreError('OCI index of %s nests too deep' % src.path, field='image', value=src.path)


def import_docker_archive(ing, src):
    """Blobs of a `docker save` archive into `ing`, with an OCI manifest made for them
    (as `ctr images import` does). Returns (manifest digest, RepoTags)."""
    doc = src.json('manifest.json')
    if not isinstance(doc, list) or not doc or not isinstance(doc[0], dict) or 'Config' not in doc[0]:
        raise ImageStoreError('%s: manifest.json has no Config' % src.path, field='image', value=src.path)
    entry = doc[0]
    layers = [_copy_member_to_ingest(ing, src, n, what='layer') for n in _image._docker_layers(src)]
    f = src.open(entry['Config'])
    try:
        config_bytes = f.read()
    finally:
        f.close()
    return _manifest_for(ing, config_bytes, layers), list(entry.get('RepoTags') or [])


def _plain_tar_layer(ing, path):
    """A rootfs tar as one layer blob: gzip and plain kept, bzip2/xz decompressed (OCI layers
    are tar or tar+gzip)."""
    with open(path, 'rb') as f:
        magic = f.read(6)
    if magic[:3] == b'BZh':
        with bz2.open(path, 'rb') as f:
            return ing.add_file(f, what='layer')
    if magic[:6] == b'\xfd7zXZ\x00':
        with lzma.open(path, 'rb') as f:
            return ing.add_file(f, what='layer')
    return ing.add_file(path, what='layer')


def _dir_layer(ing, path):
    """A directory packed as one uncompressed layer (members in _image's sorted walk order)."""
    fd, tmp = tempfile.mkstemp(prefix='layer-', dir=ing.path)
    os.close(fd)
    try:
        with tarfile.open(tmp, 'w', format=tarfile.PAX_FORMAT) as tf:
            for ti, opener in _image._dir_members(path):
                if ti.isreg():
                    f = opener()
                    try:
                        tf.addfile(ti, f)
                    finally:
                        f.close()
                elif ti.type == tarfile.CHRTYPE:
                    continue
                else:
                    tf.addfile(ti)
        return ing.add_file(tmp, what='layer')
    finally:
        os.unlink(tmp)


def import_archive(store, ing, path, fmt='auto', names=(), config=None, want=None):
    """Import a local image (what _image reads: docker save, OCI layout dir/tar, rootfs tar,
    directory) into ingest `ing`. Returns (record, canonical names)."""
    image = _image.Image(path, fmt)
    source = 'archive:%s' % path
    archive_names = []
    extra = []
    if image.format in ('oci', 'docker-archive'):
        src = _image._Source(path)
        try:
            if image.format == 'oci':
                target, manifest, archive_names, extra = import_oci(ing, src, want=want)
            else:
                manifest, archive_names = import_docker_archive(ing, src)
                target = manifest
        finally:
            src.close()
    else:
        layer = _plain_tar_layer(ing, path) if image.format == 'tar' else _dir_layer(ing, path)
        manifest = _synth_image(ing, [layer], config)
        target = manifest
    # an OCI ref.name may be a bare tag ("latest", as skopeo and umoci write): not a name
    archive_names = [n for n in archive_names if '/' in n or ':' in n]
    all_names = list(names) or archive_names
    if not all_names:
        raise ImageStoreError('%s names no image (no RepoTags / ref.name annotation): give a name' % path, field='name', value=path)
    canon = []
    for n in all_names:
        r = _imageref.parse(n, field='name')
        if r.digest and r.digest != target:
            raise ImageStoreError('%s is pinned to %s but the archive holds %s' % (n, r.digest, target), field='name', value=n)
        canon.append(r.canonical)
    rec = store.record_from_manifest(ing, target, manifest, source, extra=extra)
    return rec, canon
