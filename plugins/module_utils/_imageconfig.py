# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An image's config applied to a container as kubelet and containerd's CRI apply it.

Pure functions (the user lookups read /etc/passwd and /etc/group of a root filesystem path):

- ``process_args``: the four cases of command/args against Entrypoint/Cmd (Kubernetes
  "Define a Command and Arguments"; containerd: no command -> the image's Entrypoint; neither
  command nor args -> the image's Cmd as args), after kubelet's ``$(VAR)`` expansion;
- ``merge_env``: the default PATH, HOSTNAME, the image's Env, then the container's (a name
  given again replaces the earlier value in place, as containerd's WithEnv does);
- ``working_dir``: the container's workingDir, else the image's WorkingDir, else ``/``;
- ``resolve_user``: the image's User (``name``, ``uid``, ``uid:gid``, ``name:group`` ...) or the
  pod's runAsUser/runAsGroup, looked up in the image's /etc/passwd and /etc/group;
- ``check_run_as_non_root``: kubelet's runAsNonRoot verification;
- ``stop_signal``: the image's StopSignal (``SIGQUIT``, ``QUIT``, ``3``, ``SIGRTMIN+3``), else SIGTERM.
"""

from __future__ import annotations

import errno
import os
import signal

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
from ansible_collections.barepod.linux.plugins.module_utils._paths import secure_join

DEFAULT_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'


# ------------------------------------------------------------------ command and args

def expand(s, env):
    """kubelet's $(VAR_NAME) expansion (third_party/forked/golang/expansion): a defined
    variable is replaced, ``$$`` is an escaped ``$``, anything else is left as written."""
    out = []
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c != '$' or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = s[i + 1]
        if nxt == '$':
            out.append('$')
            i += 2
        elif nxt == '(':
            end = s.find(')', i + 2)
            if end < 0:
                out.append(s[i:])
                break
            name = s[i + 2:end]
            if name in env:
                out.append(env[name])
            else:
                out.append(s[i:end + 1])
            i = end + 1
        else:
            out.append(c)
            i += 1
    return ''.join(out)


def process_args(image_config, command=None, args=None, env=None):
    """The process's argv for a container: ``command``/``args`` of the container spec (None or
    [] when not given) against the image config's Entrypoint/Cmd. ``env`` (a dict of the
    container's env) expands ``$(VAR)`` in command and args. Raises when nothing is left."""
    cfg = image_config or {}
    env = env or {}
    command = [expand(c, env) for c in (command or [])]
    args = [expand(a, env) for a in (args or [])]
    entrypoint = list(cfg.get('Entrypoint') or [])
    cmd = list(cfg.get('Cmd') or [])
    if not command:
        command = entrypoint
        if not args:
            args = cmd
    argv = command + args
    if not argv:
        raise BarepodError('no command specified: the container has no command or args and the image no '
                           'Entrypoint or Cmd', field='command')
    return argv


# ------------------------------------------------------------------ environment

def _key(entry):
    return entry.split('=', 1)[0]


def replace_or_append_env(defaults, overrides):
    """containerd's replaceOrAppendEnvValues: an override of a name already set replaces it
    in place; a new name is appended; an override without '=' removes the name."""
    out = list(defaults)
    index = dict((_key(e), i) for i, e in enumerate(out))
    removed = set()
    for e in overrides:
        k = _key(e)
        if '=' not in e:
            if k in index:
                removed.add(index[k])
            continue
        if k in index and index[k] not in removed:
            out[index[k]] = e
        else:
            index[k] = len(out)
            out.append(e)
    return [e for i, e in enumerate(out) if i not in removed]


def merge_env(image_env, container_env=(), hostname=None):
    """The process environment, a list of 'NAME=value': default PATH, HOSTNAME, the image's
    Env, then the container's env (a list of 'NAME=value' or of {name, value} dicts)."""
    env = [DEFAULT_PATH]
    if hostname is not None:
        env = replace_or_append_env(env, ['HOSTNAME=' + hostname])
    env = replace_or_append_env(env, [e for e in image_env or () if isinstance(e, str)])
    over = []
    for e in container_env or ():
        if isinstance(e, dict):
            over.append('%s=%s' % (e.get('name'), e.get('value') if e.get('value') is not None else ''))
        else:
            over.append(e)
    return replace_or_append_env(env, over)


def working_dir(image_config, container_working_dir=None):
    cwd = container_working_dir or (image_config or {}).get('WorkingDir') or '/'
    if not cwd.startswith('/'):
        raise BarepodError('%r is not an absolute path' % cwd, field='workingDir', value=cwd)
    return cwd


# ------------------------------------------------------------------ users

def _read_root_file(rootfs, path):
    """A file of the root filesystem, symlinks resolved inside it; None when absent."""
    try:
        host = secure_join(rootfs, path, field='rootfs')
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (IOError, OSError) as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise
    with os.fdopen(fd, 'rb') as f:
        return f.read(4 << 20).decode('utf-8', 'replace')


def parse_passwd(text):
    """[(name, uid, gid)] of /etc/passwd text (malformed lines skipped, like libcontainer/user)."""
    out = []
    for line in (text or '').splitlines():
        parts = line.strip().split(':')
        if len(parts) < 4 or not parts[0] or line.startswith('#'):
            continue
        try:
            out.append((parts[0], int(parts[2]), int(parts[3])))
        except ValueError:
            continue
    return out


def parse_group(text):
    """[(name, gid, [members])] of /etc/group text."""
    out = []
    for line in (text or '').splitlines():
        parts = line.strip().split(':')
        if len(parts) < 3 or not parts[0] or line.startswith('#'):
            continue
        try:
            gid = int(parts[2])
        except ValueError:
            continue
        members = [m for m in (parts[3].split(',') if len(parts) > 3 else []) if m]
        out.append((parts[0], gid, members))
    return out


def _is_num(s):
    return s.isdigit()


def resolve_user(rootfs, image_user='', run_as_user=None, run_as_group=None, supplemental_groups=()):
    """(uid, gid, additional_gids) for a container, as containerd's CRI computes them:

    - runAsUser (a number) replaces the user of the image; its gid comes from the passwd
      entry of that uid (0 when none), runAsGroup replaces the gid;
    - else the image's User: ``name`` or ``uid`` (gid from its passwd entry, 0 when a numeric
      uid has none), ``user:group`` with either part a name or a number; a name must exist;
    - additional gids: the groups of /etc/group listing the user name, then supplementalGroups.
    """
    passwd = parse_passwd(_read_root_file(rootfs, '/etc/passwd'))
    groups = parse_group(_read_root_file(rootfs, '/etc/group'))
    user_name = None
    if run_as_user is not None:
        uid = int(run_as_user)
        ent = [p for p in passwd if p[1] == uid]
        gid = ent[0][2] if ent else 0
        user_name = ent[0][0] if ent else None
    else:
        spec = image_user or ''
        upart, _sep, gpart = spec.partition(':')
        if upart == '':
            uid, gid = 0, 0
            ent = [p for p in passwd if p[1] == 0]
            user_name = ent[0][0] if ent else None
        elif _is_num(upart):
            uid = int(upart)
            ent = [p for p in passwd if p[1] == uid]
            gid = ent[0][2] if ent else 0
            user_name = ent[0][0] if ent else None
        else:
            ent = [p for p in passwd if p[0] == upart]
            if not ent:
                raise BarepodError('unable to find user %s: no matching entries in passwd file' % upart,
                                   field='image.config.User', value=spec)
            user_name, uid, gid = ent[0]
        if gpart:
            if _is_num(gpart):
                gid = int(gpart)
            else:
                g = [x for x in groups if x[0] == gpart]
                if not g:
                    raise BarepodError('unable to find group %s: no matching entries in group file' % gpart,
                                       field='image.config.User', value=spec)
                gid = g[0][1]
    if run_as_group is not None:
        gid = int(run_as_group)
    extra = []
    if user_name is not None:
        for _name, g, members in groups:
            if user_name in members and g not in extra:
                extra.append(g)
    for g in supplemental_groups or ():
        if int(g) not in extra:
            extra.append(int(g))
    return uid, gid, extra


def check_run_as_non_root(image_user='', run_as_user=None, run_as_non_root=False):
    """kubelet's verifyRunAsNonRoot: the error message, or None when the container may run."""
    if not run_as_non_root:
        return None
    if run_as_user is not None:
        if int(run_as_user) == 0:
            return 'container\'s runAsUser breaks non-root policy'
        return None
    upart = (image_user or '').partition(':')[0]
    if upart and not _is_num(upart):
        return 'container has runAsNonRoot and image has non-numeric user (%s), cannot verify user is non-root' % upart
    if not upart or int(upart) == 0:
        return 'container has runAsNonRoot and image will run as root'
    return None


# ------------------------------------------------------------------ stop signal

def parse_signal(value):
    """containerd's signal parsing: a number, ``SIGNAME``, ``NAME``, ``SIGRTMIN+n``/``RTMAX-n``."""
    s = str(value).strip()
    if s.isdigit():
        n = int(s)
        if 0 < n < signal.NSIG:
            return n
        raise BarepodError('invalid signal %r' % value, field='StopSignal', value=value)
    name = s.upper()
    if not name.startswith('SIG'):
        name = 'SIG' + name
    for base, sign in (('SIGRTMIN+', 1), ('SIGRTMAX-', -1)):
        if name.startswith(base) and name[len(base):].isdigit():
            n = (signal.SIGRTMIN if sign > 0 else signal.SIGRTMAX) + sign * int(name[len(base):])
            if signal.SIGRTMIN <= n <= signal.SIGRTMAX:
                return int(n)
    sig = getattr(signal, name, None)
    if isinstance(sig, signal.Signals) and not name.startswith('SIG_'):
        return int(sig)
    raise BarepodError('invalid signal %r' % value, field='StopSignal', value=value)


def stop_signal(image_config, container_stop_signal=None):
    """The signal that stops the container: the container's lifecycle.stopSignal when given,
    else the image's StopSignal, else SIGTERM."""
    value = container_stop_signal or (image_config or {}).get('StopSignal')
    return parse_signal(value) if value else int(signal.SIGTERM)
