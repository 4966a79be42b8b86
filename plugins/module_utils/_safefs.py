# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""File operations confined to a root directory.

Every path inside the root is first resolved with secure_join (symlinks re-rooted, `..`
stopping at the root), then the parent directory is opened component by component from
the root with O_NOFOLLOW (so a symlink swapped in after resolution fails with ELOOP instead
of being followed), and the final entry is created relative to that directory fd without
following it: files are written to a temporary name and renamed over, symlinks likewise,
so an existing symlink at the final name is replaced, never written through.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
import sys

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
from ansible_collections.barepod.linux.plugins.module_utils._paths import secure_join, is_within

O_PATH = getattr(os, 'O_PATH', 0o10000000)


def clean(path):
    """A path inside the root as '/a/b' (lexically normalised, never above '/')."""
    p = posixpath.normpath('/' + path.lstrip('/'))
    while p.startswith('//'):
        p = p[1:]
    return p


def rmtree_at(dirfd, name):
    """shutil.rmtree(name, dir_fd=dirfd) (Python 3.11+), by hand on older managed-node Pythons:
    every directory opened O_NOFOLLOW relative to its parent's fd, so no symlink is followed."""
    if sys.version_info >= (3, 11):
        shutil.rmtree(name, dir_fd=dirfd)
    else:
        _rmtree_at_by_hand(dirfd, name)


def _rmtree_at_by_hand(dirfd, name):
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        with os.scandir(fd) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for child, is_dir in entries:
            if is_dir:
                _rmtree_at_by_hand(fd, child)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dirfd)


class UnderMount(BarepodError):
    """The path is a mount point or inside one: it belongs to the mounted filesystem."""


class SafeRoot(object):
    """Operations on paths inside `root` that never leave it."""

    def __init__(self, root, mountpoints=(), direct=False):
        """`direct`: the root is a private directory being built (renamed into use once
        complete): files that do not exist yet are created at their final name rather than
        written to a temporary name and renamed (what GNU tar does; no confinement is lost)."""
        self.root = os.path.realpath(root)
        self.direct = direct
        # ownership from images is applied only as root (unit tests run unprivileged)
        self.chown = os.geteuid() == 0
        # absolute host paths of mount points under the root: never removed across
        self.mountpoints = [m for m in mountpoints if is_within(self.root, m) and m != self.root]

    def host(self, path):
        return os.path.join(self.root, clean(path).lstrip('/'))

    def resolve(self, path, field='path'):
        """secure_join of a path inside the root; returns the host path. In a batch the
        results are cached until the next symlink or removal (the only writes that can
        change how a path resolves)."""
        p = clean(path)
        cache = getattr(self, '_rcache', None)
        if cache is None:
            return secure_join(self.root, p, field=field)
        hp = cache.get(p)
        if hp is None:
            hp = cache[p] = secure_join(self.root, p, field=field)
        return hp

    def batch(self):
        """Context manager: cache directory fds while many entries are written (an image
        layer). Any removal clears the cache, so a cached fd never names a removed or
        replaced directory."""
        return _Batch(self)

    def _cache_clear(self):
        rcache = getattr(self, '_rcache', None)
        if rcache:
            rcache.clear()
        cache = getattr(self, '_dircache', None)
        if cache:
            for fd in cache.values():
                os.close(fd)
            cache.clear()

    def _open_comp(self, fd, comp, rel, create, mode):
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(comp, flags, dir_fd=fd)
        except OSError as e:
            if e.errno == errno.ENOENT and create:
                os.mkdir(comp, mode, dir_fd=fd)
                return os.open(comp, flags, dir_fd=fd)
            if e.errno in (errno.ELOOP, errno.ENOTDIR) and create:
                # a non-directory where a directory must be: replace it (it belongs to the
                # rootfs being built); a symlink is never followed
                self._remove_at(fd, comp, rel)
                os.mkdir(comp, mode, dir_fd=fd)
                return os.open(comp, flags, dir_fd=fd)
            raise

    def open_dir(self, rel, create=True, mode=0o755):
        """fd of directory `rel` (a resolved path relative to root), walked with O_NOFOLLOW.
        The caller closes it."""
        comps = [c for c in rel.split('/') if c and c != '.']
        cache = getattr(self, '_dircache', None)
        start = 0
        fd = None
        if cache is not None:
            for i in range(len(comps), -1, -1):
                key = '/'.join(comps[:i])
                if key in cache:
                    fd, start = os.dup(cache[key]), i
                    break
        if fd is None:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            if cache is not None:
                cache[''] = os.dup(fd)
        try:
            for i in range(start, len(comps)):
                nfd = self._open_comp(fd, comps[i], rel, create, mode)
                os.close(fd)
                fd = nfd
                cache = getattr(self, '_dircache', None)  # _open_comp may have cleared it
                if cache is not None:
                    cache['/'.join(comps[:i + 1])] = os.dup(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def parent(self, path, create=True, allow_mounts=False):
        """(dirfd, name, host_path) for the entry `path` inside the root.

        The parent is resolved with secure_join; the final component is not (it is what
        gets created or replaced).
        """
        p = clean(path)
        if p == '/':
            raise BarepodError('cannot replace the root itself', field='path', value=path)
        d, name = posixpath.split(p)
        hd = self.resolve(d)
        hp = os.path.join(hd, name)
        for m in ([] if allow_mounts else self.mountpoints):
            if is_within(m, hp):
                raise UnderMount('%s is on the mount at %s; not touching it' % (p, m), field='path', value=p)
        if hd == self.root:
            rel = ''
        elif hd.startswith(self.root + '/'):
            rel = hd[len(self.root) + 1:]
        else:
            rel = os.path.relpath(hd, self.root)
            rel = '' if rel == '.' else rel
        fd = self.open_dir(rel, create=create)
        return fd, name, hp

    def lstat(self, path):
        """lstat of the entry (parent resolved inside root); None when absent."""
        p = clean(path)
        if p == '/':
            return os.lstat(self.root)
        d, name = posixpath.split(p)
        try:
            return os.lstat(os.path.join(self.resolve(d), name))
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise

    def _check_mounts(self, host_path):
        for m in self.mountpoints:
            if is_within(host_path, m):
                raise BarepodError('refusing to remove %s: %s is a mount point under it'
                                   % (host_path, m), field='path', value=host_path)

    def _remove_at(self, dirfd, name, where=''):
        try:
            st = os.lstat(name, dir_fd=dirfd)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        hp = os.path.join(os.readlink('/proc/self/fd/%d' % dirfd), name)
        self._check_mounts(hp)
        self._cache_clear()
        if stat.S_ISDIR(st.st_mode):
            rmtree_at(dirfd, name)
        else:
            os.unlink(name, dir_fd=dirfd)
        return True

    def remove(self, path):
        """Remove the entry (recursively, never following symlinks or crossing mounts)."""
        try:
            fd, name, _hp = self.parent(path, create=False)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return False
            raise
        try:
            return self._remove_at(fd, name)
        finally:
            os.close(fd)

    def _tmpname(self, name):
        return '.%s.barepod-tmp-%d' % (name[:64], os.getpid())

    def _replace(self, fd, tmp, name):
        try:
            st = os.lstat(name, dir_fd=fd)
        except OSError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            self._remove_at(fd, name)
        os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)

    def write_file(self, path, src, mode=0o644, uid=None, gid=None, mtime_ns=None):
        """Write a regular file from a readable binary file object `src`."""
        fd, name, _hp = self.parent(path)
        try:
            tmp = wfd = None
            if self.direct:
                # nothing to replace atomically: create the final name itself (O_EXCL: never
                # through an existing entry, symlink or not); an existing one takes the tmp path
                try:
                    wfd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  0o600, dir_fd=fd)
                    tmp = name
                except OSError as e:
                    if e.errno != errno.EEXIST:
                        raise
            if wfd is None:
                tmp = self._tmpname(name)
                try:
                    os.unlink(tmp, dir_fd=fd)
                except OSError:
                    pass
                wfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                              0o600, dir_fd=fd)
            try:
                for chunk in iter(lambda: src.read(1 << 20), b''):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(wfd, view):]
                if uid is not None and self.chown:
                    os.fchown(wfd, uid, gid if gid is not None else -1)
                os.fchmod(wfd, mode & 0o7777)
                if mtime_ns is not None:
                    os.utime(wfd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(wfd)
            if tmp != name:
                self._replace(fd, tmp, name)
        finally:
            os.close(fd)

    def symlink(self, path, target, uid=None, gid=None, mtime_ns=None):
        fd, name, _hp = self.parent(path)
        try:
            try:
                st = os.lstat(name, dir_fd=fd)
                if stat.S_ISLNK(st.st_mode) and os.readlink(name, dir_fd=fd) == target:
                    return False
            except OSError:
                pass
            tmp = self._tmpname(name)
            try:
                os.unlink(tmp, dir_fd=fd)
            except OSError:
                pass
            if getattr(self, '_rcache', None):
                self._rcache.clear()  # a new symlink may change how later paths resolve
            os.symlink(target, tmp, dir_fd=fd)
            if uid is not None and self.chown:
                os.chown(tmp, uid, gid if gid is not None else -1, dir_fd=fd, follow_symlinks=False)
            if mtime_ns is not None:
                os.utime(tmp, ns=(mtime_ns, mtime_ns), dir_fd=fd, follow_symlinks=False)
            self._replace(fd, tmp, name)
            return True
        finally:
            os.close(fd)

    def mkdir(self, path, mode=0o755, uid=None, gid=None, mtime_ns=None):
        p = clean(path)
        if p == '/':
            dfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            fd, name, _hp = self.parent(p)
            try:
                try:
                    st = os.lstat(name, dir_fd=fd)
                except OSError:
                    st = None
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    self._remove_at(fd, name)
                    st = None
                if st is None:
                    os.mkdir(name, 0o700, dir_fd=fd)
                dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            finally:
                os.close(fd)
        try:
            if uid is not None and self.chown:
                os.fchown(dfd, uid, gid if gid is not None else -1)
            if stat.S_IMODE(os.fstat(dfd).st_mode) != mode & 0o7777:
                os.fchmod(dfd, mode & 0o7777)
            if mtime_ns is not None:
                os.utime(dfd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(dfd)

    def hardlink(self, path, target):
        """Hard link `path` to `target` (both inside the root; target resolved inside it).
        False when the target is missing or a directory. The link's parent directories are
        made first, and only then is the target looked at: making them may replace the target
        itself (a link `a/b` to a file `a`), which then is a directory."""
        fd, name, _hp = self.parent(path)
        try:
            # resolved afresh (not from the batch cache): os.link follows the path's parents
            src = secure_join(self.root, clean(target), field='image')
            for m in self.mountpoints:
                if is_within(m, src):
                    raise UnderMount('hard link target %s is on the mount at %s' % (target, m), field='image',
                                     value=target)
            st = os.lstat(src) if os.path.lexists(src) else None
            if st is None or stat.S_ISDIR(st.st_mode):
                return False
            tmp = self._tmpname(name)
            try:
                os.unlink(tmp, dir_fd=fd)
            except OSError:
                pass
            os.link(src, tmp, dst_dir_fd=fd, follow_symlinks=False)
            self._replace(fd, tmp, name)
            return True
        finally:
            os.close(fd)

    def mkfifo(self, path, mode=0o644):
        fd, name, _hp = self.parent(path)
        try:
            self._remove_at(fd, name)
            os.mkfifo(name, mode & 0o7777, dir_fd=fd)
        finally:
            os.close(fd)

    def open_path(self, path, field='path'):
        """O_PATH|O_NOFOLLOW fd of an existing entry inside the root (for mounting on it)."""
        fd, name, hp = self.parent(path, create=False, allow_mounts=True)
        try:
            return os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        finally:
            os.close(fd)


class _Batch(object):
    def __init__(self, fs):
        self.fs = fs

    def __enter__(self):
        if getattr(self.fs, '_dircache', None) is None:
            self.fs._dircache = {}
            self.fs._rcache = {}
            self.owner = True
        else:
            self.owner = False
        return self.fs

    def __exit__(self, *exc):
        if self.owner:
            self.fs._cache_clear()
            self.fs._dircache = None
            self.fs._rcache = None
        return False
