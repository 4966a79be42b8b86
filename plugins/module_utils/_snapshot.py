# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Container root filesystems made from the image store's layers (like containerd's
snapshotters).

Layout under the store's root::

    snapshots/<chain id hex>/fs   one layer unpacked, overlay-ready (whiteouts converted), shared
                                  by every container of every image whose layer chain has it
    snapshots/tmp-*               unpacks and removals in progress (cleared by the next writer
                                  under the store's lock: a killed unpack is never used)

A snapshot is keyed by its layer's chain id (OCI: ``chain(L0) = diff_id(L0)``,
``chain(Ln) = sha256(chain(Ln-1) + " " + diff_id(Ln))``), so two images sharing a base share its
snapshots. A layer is unpacked into ``snapshots/tmp-*/fs`` while the sha256 of its uncompressed
tar is computed; only when that equals the config's ``rootfs.diff_ids`` entry is the directory
renamed to its chain id. Members go through _safefs.SafeRoot: nothing is ever written outside
the snapshot (``../`` names, absolute symlinks, symlinked parents, hard links out, device nodes).

A container's root filesystem (``prepare_rootfs``):

- ``overlay`` (default when a probe mount works, as containerd's overlayfs snapshotter checks):
  ``lowerdir=<top>:...:<bottom>`` over the image's snapshots, ``upperdir``/``workdir`` in
  ``<parent>/.<name>.snap/`` beside the target. Creating it is one mount; a second container of
  the same image unpacks nothing. Whiteouts are stored as overlayfs reads them: ``.wh.<name>`` a
  0:0 character device, ``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` xattr (containerd's
  OverlayConvertWhiteout).
- ``copy`` (no overlay in the kernel, or an upper filesystem that cannot hold one): every layer
  applied into the target with the OCI whiteout rules (_image.apply_layer), built in a temporary
  sibling and renamed into place.

``remove_rootfs`` unmounts and removes the container's dirs; ``gc`` removes snapshots that no
stored image references and no mounted overlay uses (the image store's gc calls it).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import queue
import shutil
import stat
import tarfile
import tempfile
import threading
import zlib

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError, atomic_write, dump_json, failpoint, fsync_dir
from ansible_collections.barepod.linux.plugins.module_utils import _image
from ansible_collections.barepod.linux.plugins.module_utils import _imageref
from ansible_collections.barepod.linux.plugins.module_utils import _namespaces as ns
from ansible_collections.barepod.linux.plugins.module_utils._safefs import SafeRoot, clean

MODES = ('auto', 'overlay', 'copy')
OPAQUE_XATTR = 'trusted.overlay.opaque'
SIDECAR = '.%s.snap'
TMP_PREFIX = 'tmp-'
CHUNK = 1 << 20
# the kernel copies mount data into one page
MAX_MOUNT_DATA = 4000
_probe_cache = {}


class SnapshotError(BarepodError):
    pass


# ------------------------------------------------------------------ pure parts

def chain_ids(diff_ids):
    """OCI chain ids of a list of layer diff ids."""
    out = []
    for d in diff_ids:
        out.append(d if not out else 'sha256:' + hashlib.sha256(('%s %s' % (out[-1], d)).encode()).hexdigest())
    return out


def overlay_options(lowers, upper, work):
    """Mount data of an overlay: `lowers` top first (as overlayfs wants them)."""
    for p in list(lowers) + [upper, work]:
        if any(c in p for c in ',:\\') or '\n' in p:
            raise SnapshotError('path %r cannot be given to overlayfs' % p, field='path', value=p)
    data = 'lowerdir=%s,upperdir=%s,workdir=%s' % (':'.join(lowers), upper, work)
    if len(data) > MAX_MOUNT_DATA:
        raise SnapshotError('the image has too many layers for one overlay mount (%d bytes of options)' % len(data),
                            field='image', value=len(lowers))
    return data


def _unescape(s):
    out, i = [], 0
    while i < len(s):
        if s[i] == '\\' and i + 3 < len(s) and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return ''.join(out)


def overlay_mounts(text):
    """{mount point: {'lowerdir': [...], 'upperdir': ..., 'workdir': ...}} of the overlay mounts
    in mountinfo text."""
    out = {}
    for line in text.splitlines():
        parts = line.split(' ')
        if '-' not in parts[6:]:
            continue
        sep = parts.index('-', 6)
        if len(parts) < sep + 4 or parts[sep + 1] != 'overlay':
            continue
        opts = {}
        for o in parts[sep + 3].split(','):
            k, _sep, v = o.partition('=')
            opts[k] = _unescape(v)
        rec = dict(lowerdir=[d for d in opts.get('lowerdir', '').split(':') if d],
                   upperdir=opts.get('upperdir'), workdir=opts.get('workdir'))
        out[_unescape(parts[4])] = rec
    return out


def read_overlay_mounts(mountinfo='/proc/self/mountinfo'):
    with open(mountinfo) as f:
        return overlay_mounts(f.read())


# ------------------------------------------------------------------ layer streams

def _chunks(f, gz):
    """Uncompressed data of a layer file, CHUNK by CHUNK (never more per step, whatever the
    compression ratio: a gzip bomb cannot take the memory)."""
    if not gz:
        yield from iter(lambda: f.read(CHUNK), b'')
        return
    z = _gunzip()
    inp = b''
    while True:
        if not inp:
            inp = f.read(CHUNK)
            if not inp:
                if not z.eof:
                    raise SnapshotError('layer is truncated (its gzip stream ends early)', field='image')
                return
        if z.eof:
            z = _gunzip()  # gzip allows several members one after the other
        data = z.decompress(inp, CHUNK)
        inp = z.unused_data if z.eof else z.unconsumed_tail
        if data:
            yield data


class _ForwardReader(object):
    """The uncompressed tar of a layer as a forward-only file object, hashed (for the
    diff_id) as it is read. A thread reads, decompresses and hashes ahead (zlib and hashlib
    release the GIL), as GNU tar runs gzip beside it. tarfile reads it in random-access mode
    ('r:'): its seeks go forward only when members are extracted in order, and a forward seek
    reads what it skips. Cheaper than tarfile's stream mode, which copies its buffer on every
    read."""

    def __init__(self, f, gz=False):
        self.f = f
        self.gz = gz
        self.h = hashlib.sha256()
        self.buf = b''
        self.off = 0   # consumed bytes of buf
        self.pos = 0   # stream position of buf[off]
        self.eof = False
        self._stop = False
        self.q = queue.Queue(8)
        self.t = threading.Thread(target=self._produce, name='layer-reader')
        self.t.daemon = True
        self.t.start()

    def _put(self, item):
        while not self._stop:
            try:
                self.q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self):
        try:
            for data in _chunks(self.f, self.gz):
                self.h.update(data)
                if not self._put(data):
                    return
            self._put(None)
        except BaseException as e:  # handed to the reader, raised there
            self._put(e)

    def _fill(self):
        if self.eof:
            return False
        item = self.q.get()
        if item is None:
            self.eof = True
            return False
        if isinstance(item, BaseException):
            self.eof = True
            if isinstance(item, zlib.error):
                raise SnapshotError('layer is not valid gzip: %s' % item, field='image')
            raise item
        self.buf = self.buf[self.off:] + item if self.off < len(self.buf) else item
        self.off = 0
        return True

    def close(self):
        self._stop = True
        self.t.join(5)
        self.f.close()

    def read(self, n=-1):
        if n is None or n < 0:
            out = [self.buf[self.off:]]
            self.buf, self.off = b'', 0
            while self._fill():
                out.append(self.buf)
                self.buf = b''
            data = b''.join(out)
            self.pos += len(data)
            return data
        while len(self.buf) - self.off < n and self._fill():
            pass
        data = self.buf[self.off:self.off + n]
        self.off += len(data)
        self.pos += len(data)
        return data

    def readinto(self, b):
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def tell(self):
        return self.pos

    def seekable(self):
        return True

    def seek(self, pos, whence=0):
        if whence == 1:
            pos += self.pos
        elif whence != 0:
            raise OSError(errno.ESPIPE, 'layer stream: seek from the end')
        if pos < self.pos:
            raise OSError(errno.ESPIPE, 'layer stream: backward seek (members must be read in order)')
        while pos > self.pos:
            if not self.read(min(pos - self.pos, CHUNK)):
                break
        return self.pos

    def drain(self):
        while self.read(CHUNK):
            pass
        return 'sha256:' + self.h.hexdigest()


class _MemberReader(object):
    """The data of one regular member, read straight from the layer stream (no tarfile
    buffering in between)."""

    def __init__(self, hr, m):
        self.hr = hr
        self.start = m.offset_data
        self.left = m.size

    def read(self, n=-1):
        if self.left <= 0:
            return b''
        if self.hr.tell() != self.start:
            self.hr.seek(self.start)
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.hr.read(n)
        if len(data) < n:
            raise SnapshotError('layer is truncated inside a member', field='image')
        self.left -= len(data)
        self.start += len(data)
        return data

    def close(self):
        pass


def _gunzip():
    return zlib.decompressobj(16 + zlib.MAX_WBITS)


def open_layer(path):
    """A reader (close it) of the uncompressed tar of a layer blob (tar or tar+gzip)."""
    raw = open(path, 'rb')
    magic = raw.read(4)
    raw.seek(0)
    if magic == b'\x28\xb5\x2f\xfd':
        raw.close()
        raise SnapshotError('layer %s is zstd-compressed, which is not supported' % path, field='image', value=path)
    return _ForwardReader(raw, gz=magic[:2] == b'\x1f\x8b')


def layer_members(hr, what):
    """(TarInfo, opener) of the tar read from `hr` (a _ForwardReader), in order."""
    try:
        tf = tarfile.open(fileobj=hr, mode='r:')
    except tarfile.TarError as e:
        raise SnapshotError('layer %s is not a tar archive: %s' % (what, e), field='image', value=what)
    try:
        while True:
            m = tf.next()
            if m is None:
                break
            yield m, (lambda m=m: _MemberReader(hr, m) if m.isreg() and not m.sparse else tf.extractfile(m))
            tf.members = []  # streamed: nothing is looked up by name, keep no list
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise SnapshotError('layer %s is damaged: %s' % (what, e), field='image', value=what)


def verify_diff_id(hr, diff_id, what):
    got = hr.drain()
    if got != diff_id:
        raise SnapshotError('layer %s: diff_id mismatch: the image config says %s, the layer unpacks to %s'
                            % (what, diff_id, got), field='image', value=what)


# ------------------------------------------------------------------ unpack (overlay form)

def _mknod_whiteout(fs, path):
    fd, name, _hp = fs.parent(path)
    try:
        fs._remove_at(fd, name)
        os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=fd)
    finally:
        os.close(fd)


def _set_opaque(fs, d):
    if fs.lstat(d) is None:
        fs.mkdir(d, 0o755)
    rel = os.path.relpath(fs.resolve(d), fs.root)
    fd = fs.open_dir('' if rel == '.' else rel, create=False)
    try:
        os.setxattr(fd, OPAQUE_XATTR, b'y')
    finally:
        os.close(fd)


def unpack_diff(fs, members, warnings):
    """Unpack one layer's members into SafeRoot `fs` (an empty snapshot dir) as an overlay
    diff: whiteouts converted, not applied (the lower layers are not here)."""
    with fs.batch():
        for ti, opener in members:
            path = clean(ti.name)
            if path == '/':
                if ti.isdir():
                    fs.mkdir('/', ti.mode, ti.uid, ti.gid)
                continue
            d, base = os.path.split(path)
            if base == _image.WHITEOUT_OPAQUE:
                _set_opaque(fs, d)
                continue
            if base.startswith(_image.WHITEOUT_PREFIX):
                victim = clean(os.path.join(d, base[len(_image.WHITEOUT_PREFIX):]))
                if victim == '/' or victim == d:
                    warnings.append('image: whiteout %s ignored' % ti.name)
                    continue
                _mknod_whiteout(fs, victim)
                continue
            _image._apply_member(fs, ti, path, opener, None, warnings)


# ------------------------------------------------------------------ the snapshotter

def _rmtree_no_mounts(path, mountinfo='/proc/self/mountinfo'):
    """Remove a directory tree, refusing when a mount point is at or below it (shutil.rmtree
    would empty a bind-mounted host directory or /proc's files otherwise)."""
    prefix = path.rstrip('/') + '/'
    below = [m for m in ns.mount_points(mountinfo) if m == path or m.startswith(prefix)]
    if below:
        raise SnapshotError('refusing to remove %s: %s mounted below it' % (path, ', '.join(sorted(below))),
                            field='path', value=path)
    shutil.rmtree(path)


def probe_overlay(workdir):
    """True when an overlay mount with an upper dir in `workdir` works (containerd's check)."""
    key = os.stat(workdir).st_dev
    if key in _probe_cache:
        return _probe_cache[key]
    ok = False
    if os.geteuid() == 0:
        d = tempfile.mkdtemp(prefix=TMP_PREFIX + 'probe-', dir=workdir)
        try:
            for n in ('l1', 'l2', 'u', 'w', 'm'):
                os.mkdir(os.path.join(d, n))
            try:
                ns.mount('overlay', os.path.join(d, 'm'), 'overlay', 0,
                         overlay_options([os.path.join(d, 'l2'), os.path.join(d, 'l1')], os.path.join(d, 'u'), os.path.join(d, 'w')))
            except OSError:
                ok = False
            else:
                ns.umount2(os.path.join(d, 'm'), ns.MNT_DETACH)
                ok = True
        finally:
            shutil.rmtree(d, ignore_errors=True)
    _probe_cache[key] = ok
    return ok


def unkept_digests(directory, keep, skip=None):
    """The sha256 digests named by the entries of a content-addressed directory (blobs,
    snapshots) that are not in keep() (called only when the directory exists); entries starting
    with `skip` (work directories) are not content."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    kept = keep()
    return sorted('sha256:' + n for n in names if not (skip and n.startswith(skip)) and 'sha256:' + n not in kept)


class Snapshotter(object):
    """Snapshots of one image store (an _imagestore.ImageStore)."""

    def __init__(self, store):
        self.store = store
        self.root = os.path.join(store.root, 'snapshots')

    def path(self, chain_id):
        err = _imageref.validate_digest(chain_id)
        if err or not chain_id.startswith('sha256:'):
            raise SnapshotError('bad chain id %r' % (chain_id,), field='image', value=chain_id)
        return os.path.join(self.root, chain_id.split(':', 1)[1])

    def fs_path(self, chain_id):
        return os.path.join(self.path(chain_id), 'fs')

    def has(self, chain_id):
        return os.path.isdir(self.fs_path(chain_id))

    def clear_tmp(self):
        """Remove unpacks and removals that died (call with the store's lock held)."""
        try:
            names = os.listdir(self.root)
        except OSError:
            return
        for n in names:
            if n.startswith(TMP_PREFIX):
                shutil.rmtree(os.path.join(self.root, n), ignore_errors=True)

    # ---- images

    def image(self, key):
        """(image record, [(layer blob digest, diff id, chain id)]) of a stored image given by
        reference or id."""
        rec = None
        if isinstance(key, str) and key:
            img = self.store.find_image(key)
            if img is not None:
                rec = dict(config=img['id'], layers=img['layers'], manifest=img['manifest'])
            else:
                try:
                    rec = self.store.get(key)
                except BarepodError:
                    rec = None
        if rec is None or not self.store.complete(dict(rec, target=rec['manifest'])):
            raise SnapshotError('image %s is not in the store %s' % (key, self.store.root), field='image', value=key)
        cfg = self.store.read_json(rec['config'])
        diff_ids = list(((cfg.get('rootfs') or {}).get('diff_ids')) or [])
        if len(diff_ids) != len(rec['layers']):
            raise SnapshotError('image %s: its config lists %d diff_ids for %d layers' % (key, len(diff_ids), len(rec['layers'])),
                                field='image', value=key)
        for d in diff_ids:
            if _imageref.validate_digest(d) or not d.startswith('sha256:'):
                raise SnapshotError('image %s: bad diff_id %r' % (key, d), field='image', value=key)
        chains = chain_ids(diff_ids)
        return rec, [(rec['layers'][i], diff_ids[i], chains[i]) for i in range(len(diff_ids))]

    def referenced(self):
        """Chain ids of every stored image's layers."""
        keep = set()
        for rec in self.store.refs().values():
            try:
                cfg = self.store.read_json(rec['config'])
            except (IOError, OSError, ValueError):
                continue
            keep.update(chain_ids(list(((cfg.get('rootfs') or {}).get('diff_ids')) or [])))
        return keep

    def missing(self, layers):
        return [c for _b, _d, c in layers if not self.has(c)]

    # ---- unpack

    def unpack(self, blob, diff_id, chain_id, warnings):
        """Unpack one layer into snapshots/<chain id> (call with the store's lock held).
        The directory appears only complete and verified."""
        final = self.path(chain_id)
        if os.path.isdir(os.path.join(final, 'fs')):
            return False
        os.makedirs(self.root, 0o700, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.root)
        try:
            fsdir = os.path.join(tmp, 'fs')
            os.mkdir(fsdir, 0o755)
            hr = open_layer(self.store.blob_path(blob))
            try:
                unpack_diff(SafeRoot(fsdir, direct=True), layer_members(hr, blob), warnings)
                verify_diff_id(hr, diff_id, blob)
            finally:
                hr.close()
            failpoint('snapshot-unpacked')  # unpacked, verified, not yet in place: never used
            with open(os.path.join(tmp, 'diff_id'), 'w') as f:
                f.write(diff_id + '\n')
            os.chmod(tmp, 0o755)
            if os.path.isdir(final):
                shutil.rmtree(final)  # a dir without fs/: not a snapshot
            os.rename(tmp, final)
            fsync_dir(self.root)
            return True
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def ensure(self, layers, warnings):
        """Every snapshot of `layers` present; returns the chain ids unpacked."""
        done = []
        todo = self.missing(layers)
        if not todo:
            return done
        with self.store.lock():
            self.clear_tmp()
            for blob, diff_id, chain in layers:
                if self.unpack(blob, diff_id, chain, warnings):
                    done.append(chain)
        return done

    # ---- gc

    def in_use(self, mountinfo='/proc/self/mountinfo'):
        used = set()
        prefix = self.root.rstrip('/') + '/'
        for rec in read_overlay_mounts(mountinfo).values():
            for d in rec['lowerdir']:
                if d.startswith(prefix):
                    used.add('sha256:' + d[len(prefix):].split('/')[0])
        return used

    def unreferenced(self):
        return unkept_digests(self.root, lambda: self.referenced() | self.in_use(), skip=TMP_PREFIX)

    def gc(self):
        """Remove snapshots no image references and no mount uses (call with the store's
        lock held): renamed to tmp-* first, so a removal that dies leaves no half snapshot."""
        gone = self.unreferenced()
        for c in gone:
            p = self.path(c)
            tmp = os.path.join(self.root, TMP_PREFIX + 'rm-' + c.split(':', 1)[1][:16])
            os.rename(p, tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        self.clear_tmp()
        return gone


# ------------------------------------------------------------------ container root filesystems

def sidecar(target):
    target = target.rstrip('/')
    return os.path.join(os.path.dirname(target), SIDECAR % os.path.basename(target))


def _read_state(target):
    try:
        with open(os.path.join(sidecar(target), 'state.json')) as f:
            return json.load(f)
    except (IOError, OSError, ValueError):
        return None


def _write_state(target, state):
    atomic_write(os.path.join(sidecar(target), 'state.json'), dump_json(state).encode('utf-8'), 0o644)


def choose_mode(snap, mode, target_parent):
    if mode not in MODES:
        raise SnapshotError('must be one of %s, got %r' % (', '.join(MODES), mode), field='mode', value=mode)
    if mode != 'auto':
        return mode
    os.makedirs(snap.root, 0o700, exist_ok=True)
    if not probe_overlay(snap.root):
        return 'copy'
    # the upper dir must be able to hold an upper (not itself overlayfs, as in some node containers)
    if target_parent != snap.root and os.stat(target_parent).st_dev != os.stat(snap.root).st_dev:
        return 'overlay' if probe_overlay(target_parent) else 'copy'
    return 'overlay'


def rootfs_status(target, mountinfo='/proc/self/mountinfo'):
    """What is at `target`: dict(mounted, lowerdir, state) (state: the sidecar's record)."""
    target = os.path.abspath(target).rstrip('/')
    mounts = read_overlay_mounts(mountinfo)
    m = mounts.get(target)
    return dict(mounted=m is not None, lowerdir=(m or {}).get('lowerdir'), state=_read_state(target))


def prepare_rootfs(store, image, target, mode='auto', warnings=None):
    """Make `target` the root filesystem of a container of `image` (a reference or image id in
    ImageStore `store`). Idempotent: returns dict(changed, mode, image_id, unpacked, lowerdir).
    The pod role / chroot_rootfs call this for an ``image`` source; `store` may be the
    store's root directory."""
    if isinstance(store, str):
        from ansible_collections.barepod.linux.plugins.module_utils._imagestore import ImageStore
        store = ImageStore(store)
    warnings = warnings if warnings is not None else []
    if not isinstance(target, str) or not target.startswith('/') or clean(target) == '/':
        raise SnapshotError('must be an absolute path other than /, got %r' % (target,), field='path', value=target)
    target = os.path.abspath(target).rstrip('/')
    snap = Snapshotter(store)
    rec, layers = snap.image(image)
    parent = os.path.dirname(target)
    os.makedirs(parent, 0o755, exist_ok=True)
    side = sidecar(target)
    status = rootfs_status(target)
    state = status['state']
    if state and state.get('image_id') == rec['config']:
        if state.get('mode') == 'copy' and os.path.isdir(target) and not status['mounted']:
            return dict(changed=False, mode='copy', image_id=rec['config'], unpacked=[], lowerdir=None)
        if state.get('mode') == 'overlay' and status['mounted'] and \
                status['lowerdir'] == [snap.fs_path(c) for _b, _d, c in reversed(layers)]:
            return dict(changed=False, mode='overlay', image_id=rec['config'], unpacked=[], lowerdir=status['lowerdir'])
    chosen = choose_mode(snap, mode, parent)
    if not status['mounted'] and not os.path.isdir(side) and os.path.isdir(target) and not os.path.islink(target) \
            and os.listdir(target):
        raise SnapshotError('%s holds files that no image put there (no %s): not replacing them' % (target, side),
                            field='path', value=target)
    # another image, or a dead half-made one: start again from nothing
    remove_rootfs(target)
    os.makedirs(side, 0o700)
    if chosen == 'overlay':
        unpacked = snap.ensure(layers, warnings)
        lowers = [snap.fs_path(c) for _b, _d, c in reversed(layers)]
        upper, work = os.path.join(side, 'upper'), os.path.join(side, 'work')
        os.mkdir(upper, 0o755)
        os.mkdir(work, 0o700)
        if not lowers:
            empty = os.path.join(side, 'empty')
            os.mkdir(empty, 0o755)
            lowers = [empty]
        data = overlay_options(lowers, upper, work)
        os.makedirs(target, 0o755, exist_ok=True)
        ns.mount('overlay', target, 'overlay', 0, data)
        _write_state(target, dict(mode='overlay', image_id=rec['config'], chain_ids=[c for _b, _d, c in layers]))
        return dict(changed=True, mode='overlay', image_id=rec['config'], unpacked=unpacked, lowerdir=lowers)
    tmp = tempfile.mkdtemp(prefix='.%s.tmp-' % os.path.basename(target), dir=parent)
    try:
        os.chmod(tmp, 0o755)
        fs = SafeRoot(tmp, direct=True)
        paths = {}
        for blob, diff_id, _chain in layers:
            hr = open_layer(store.blob_path(blob))
            try:
                with fs.batch():
                    _image.apply_layer(fs, layer_members(hr, blob), paths, warnings)
                verify_diff_id(hr, diff_id, blob)
            finally:
                hr.close()
        failpoint('snapshot-copied')
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_state(target, dict(mode='copy', image_id=rec['config'], chain_ids=[c for _b, _d, c in layers]))
    return dict(changed=True, mode='copy', image_id=rec['config'], unpacked=[], lowerdir=None)


def remove_rootfs(target, mountinfo='/proc/self/mountinfo'):
    """Unmount (if mounted) and remove a container root filesystem and its upper/work dirs.
    True when something was removed. Safe to run again, and after a crash."""
    target = os.path.abspath(target).rstrip('/')
    changed = False
    for _i in range(8):
        if target not in read_overlay_mounts(mountinfo) and not ns.is_mount_point(target, mountinfo):
            break
        ns.umount2(target, ns.MNT_DETACH)
        changed = True
    parent = os.path.dirname(target)
    try:
        names = os.listdir(parent)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return changed
        raise
    base = os.path.basename(target)
    for n in names:
        if n == base or n == SIDECAR % base or n.startswith('.%s.tmp-' % base):
            p = os.path.join(parent, n)
            if os.path.isdir(p) and not os.path.islink(p):
                _rmtree_no_mounts(p, mountinfo)
            else:
                os.unlink(p)
            changed = True
    return changed
