# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Path resolution that never leaves a root (the semantics of runc's filepath-securejoin).

secure_join(root, unsafe) resolves `unsafe` component by component as if `root` were `/`:
`..` stops at the root, absolute symlinks are re-rooted at `root`, relative symlinks are
resolved against their own directory inside the root. The result is always inside root.
It is a lexical guarantee at resolution time; callers that then open or mount the result
must do so without following a symlink swapped in afterwards (O_NOFOLLOW, or re-check via
/proc/self/fd), which helpers below do.
"""

from __future__ import annotations

import errno
import os
import stat

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError

MAX_SYMLINKS = 255


def secure_join(root, unsafe, field='path'):
    root = os.path.abspath(root)
    if '\x00' in unsafe:
        raise BarepodError('contains a NUL byte', field=field, value=unsafe)
    pending = [c for c in unsafe.split('/') if c]
    resolved = []  # components below root, already resolved
    links = 0
    while pending:
        comp = pending.pop(0)
        if comp == '.':
            continue
        if comp == '..':
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *(resolved + [comp]))
        try:
            st = os.lstat(candidate)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                # the rest does not exist yet: join it lexically (still confined)
                resolved.append(comp)
                for rest in pending:
                    if rest in ('', '.'):
                        continue
                    if rest == '..':
                        if resolved:
                            resolved.pop()
                        continue
                    resolved.append(rest)
                pending = []
                break
            raise
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise BarepodError('too many levels of symbolic links under %s' % root,
                                   field=field, value=unsafe)
            target = os.readlink(candidate)
            if target.startswith('/'):
                resolved = []
            pending = [c for c in target.split('/') if c] + pending
            continue
        resolved.append(comp)
    return os.path.join(root, *resolved) if resolved else root


def is_within(root, path):
    root = os.path.abspath(root)
    path = os.path.abspath(path)
    return path == root or path.startswith(root.rstrip('/') + '/')


def check_real_within(root, path, field='path'):
    """After resolution, verify with realpath that nothing swapped a symlink in meanwhile."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if not is_within(real_root, real):
        raise BarepodError('%s resolves to %s, outside the root %s' % (path, real, real_root),
                           field=field, value=path)
    return real


def normalise_abs(field, value):
    """An absolute path, normalised, with no '..' component (lexically)."""
    if not isinstance(value, str) or not value.startswith('/'):
        raise BarepodError('must be an absolute path, got %r' % (value,), field=field, value=value)
    if '\x00' in value:
        raise BarepodError('contains a NUL byte', field=field, value=value)
    if '..' in value.split('/'):
        raise BarepodError('%r contains a ".." component' % (value,), field=field, value=value)
    return os.path.normpath(value)
