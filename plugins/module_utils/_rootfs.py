# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A container root filesystem directory: files from host binaries, busybox or an image,
plus the mounts a container expects (bind hostPaths, /dev/shm, /etc/hosts, resolv.conf,
hostname), converged idempotently.

State (outside the rootfs, so the container never sees it):
    <parent>/.<name>.barepod.json   the manifest: every file this module put in the rootfs
                                    (and which source brought it), the image fingerprint and
                                    the paths it provided, the mounts it made
    <parent>/.<name>.barepod.d/     generated hosts, resolv.conf, hostname (bind-mounted in,
                                    as kubelet bind-mounts its etc-hosts)

observe() -> desired() -> plan() -> apply, as every barepod module.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess

from ansible_collections.barepod.linux.plugins.module_utils._common import (
    Actions, BarepodError, DNS1123_SUBDOMAIN_RE, Manager, dump_json, exclusive_lock, result, validate_dns_label,
    validate_uid, write_if_changed)
from ansible_collections.barepod.linux.plugins.module_utils._common import failpoint
from ansible_collections.barepod.linux.plugins.module_utils._elf import Resolver
from ansible_collections.barepod.linux.plugins.module_utils._image import Image, apply_image, FORMATS
from ansible_collections.barepod.linux.plugins.module_utils import _defaults
from ansible_collections.barepod.linux.plugins.module_utils import _namespaces as ns
from ansible_collections.barepod.linux.plugins.module_utils._namespaces import (
    MNT_DETACH, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REMOUNT)
from ansible_collections.barepod.linux.plugins.module_utils._paths import is_within
from ansible_collections.barepod.linux.plugins.module_utils._safefs import SafeRoot, UnderMount, clean

MANIFEST_VERSION = 1

# hostPath protection (see docs/chroot_rootfs.md, "hostPath rule")
PROTECTED_HOST_PATHS = (
    '/proc', '/sys', '/dev', '/etc', '/boot', '/var/lib', '/run', '/var/run',
    '/var/run/docker.sock', '/run/docker.sock', '/run/containerd', '/var/run/containerd',
    '/run/containerd/containerd.sock', '/var/run/crio', '/run/crio', '/run/crio/crio.sock',
    '/var/run/cri-dockerd.sock', '/run/podman', '/var/lib/kubelet', '/var/lib/docker',
    '/var/lib/containerd',
)

MOUNTPOINT_DIRS = ('/proc', '/dev', '/sys')

FLAG_OPTS = {'ro': MS_RDONLY, 'nosuid': MS_NOSUID, 'nodev': MS_NODEV, 'noexec': MS_NOEXEC}
BIND_OPTIONS = set(['ro', 'rw', 'nosuid', 'nodev', 'noexec'])
TMPFS_OPTIONS = set(['ro', 'rw', 'nosuid', 'nodev', 'noexec'])
DEFAULT_SHM_OPTIONS = ['nosuid', 'nodev', 'noexec']

MANAGED_HOSTS_HEADER = '# Kubernetes-managed hosts file.\n'

_QUANTITY_RE = re.compile(r'^([0-9]+)(Ki|Mi|Gi|k|M|G)?\Z')
_QUANTITY_MULT = {None: 1, 'Ki': 1024, 'Mi': 1024 ** 2, 'Gi': 1024 ** 3, 'k': 1000, 'M': 1000 ** 2, 'G': 1000 ** 3}


# ---------------------------------------------------------------- small parsers / validators

def parse_size(field, value):
    """Bytes from 65536, '64Mi', '1Gi', '500M' (Kubernetes quantity suffixes)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    m = _QUANTITY_RE.match(str(value).strip()) if value is not None else None
    if not m:
        raise BarepodError('%r is not a size (bytes or a quantity like 64Mi)' % (value,), field=field, value=value)
    return int(m.group(1)) * _QUANTITY_MULT[m.group(2)]


def unescape_mountinfo(s):
    return re.sub(r'\\([0-7]{3})', lambda m: chr(int(m.group(1), 8)), s)


def parse_mountinfo(text):
    """[{id, parent, root, mountpoint, options, fstype, source, super}] from mountinfo text."""
    out = []
    for line in text.splitlines():
        parts = line.split(' ')
        if len(parts) < 10 or '-' not in parts:
            continue
        sep = parts.index('-', 6)
        out.append(dict(
            id=int(parts[0]), parent=int(parts[1]), devno=parts[2], root=unescape_mountinfo(parts[3]),
            mountpoint=unescape_mountinfo(parts[4]), options=parts[5].split(','),
            fstype=parts[sep + 1], source=unescape_mountinfo(parts[sep + 2]),
            super=parts[sep + 3].split(',') if len(parts) > sep + 3 else []))
    return out


_MOUNTS_UNDER_MEMO = {}


def mounts_under(root, mountinfo_path='/proc/self/mountinfo'):
    """Mounts whose mount point is strictly below `root` (realpath), in mount order.

    mountinfo is read afresh on every call; only its parsing is reused while the text is unchanged
    (a busybox rootfs syncs ~270 files, each checking the mounts under the rootfs).
    """
    with open(mountinfo_path, 'r') as f:
        text = f.read()
    root = os.path.realpath(root)
    key = (root, mountinfo_path)
    memo = _MOUNTS_UNDER_MEMO.get(key)
    if memo is not None and memo[0] == text:
        return [dict(m) for m in memo[1]]
    out = [m for m in parse_mountinfo(text) if m['mountpoint'] != root and is_within(root, m['mountpoint'])]
    _MOUNTS_UNDER_MEMO.clear()  # one entry: the rootfs being converged
    _MOUNTS_UNDER_MEMO[key] = (text, [dict(m) for m in out])
    return out


def unmount_order(mounts):
    """Deepest first; among mounts on one point, the most recent (top) first."""
    return sorted(mounts, key=lambda m: (-m['mountpoint'].rstrip('/').count('/'), -m['id']))


def _check_options(field, opts, allowed, message):
    """Refuse mount options of <field>.options outside `allowed`; `message` % (the bad ones, the allowed ones)."""
    bad = [o for o in opts if o not in allowed]
    if bad:
        raise BarepodError(message % (','.join(bad), ','.join(sorted(allowed))), field=field + '.options', value=opts)


def check_host_path(field, source, allowed, protected=PROTECTED_HOST_PATHS):
    """The hostPath rule. Returns the realpath of `source` or raises BarepodError.

    1. the source must be an absolute path that exists; it is resolved with realpath
       (so a symlink to /etc is judged as /etc);
    2. when `allowed` is non-empty, the source must be at or under one of its entries;
    3. `/`, anything at or under a protected path, and any ancestor of a protected path
       (binding /var would expose /var/lib) is refused, unless an `allowed` entry that is
       itself at or under that protected path (or is exactly the source) covers it:
       a protected path is unlocked only by naming it (or something inside it) explicitly.
    """
    if not isinstance(source, str) or not source.startswith('/'):
        raise BarepodError('hostPath must be an absolute path, got %r' % (source,), field=field, value=source)
    if not os.path.exists(source):
        raise BarepodError('hostPath %s does not exist' % source, field=field, value=source)
    real = os.path.realpath(source)
    allow = [os.path.realpath(a) for a in (allowed or [])]
    covering = [a for a in allow if is_within(a, real)]
    if allow and not covering:
        raise BarepodError('hostPath %s (%s) is outside allowed_host_paths %s' % (source, real, allow),
                           field=field, value=source)
    prot = set(os.path.normpath(p) for p in protected)
    prot.update(os.path.realpath(p) for p in protected if os.path.exists(p))
    for p in sorted(prot):
        if is_within(p, real):
            if not any(is_within(p, a) for a in covering):
                raise BarepodError('hostPath %s (%s) is under the protected path %s; list it in '
                                   'allowed_host_paths to allow it' % (source, real, p),
                                   field=field, value=source)
        elif is_within(real, p):
            if real not in covering:
                raise BarepodError('hostPath %s (%s) would expose the protected path %s; list it '
                                   'exactly in allowed_host_paths to allow it' % (source, real, p),
                                   field=field, value=source)
    if real == '/' and '/' not in covering:
        raise BarepodError('hostPath / (the host root) is refused', field=field, value=source)
    return real


def hosts_content(hostname=None, pod_ips=(), domain=None, host_aliases=()):
    """/etc/hosts exactly as kubelet writes it (managedHostsFileContent)."""
    lines = [MANAGED_HOSTS_HEADER,
             '127.0.0.1\tlocalhost\n',
             '::1\tlocalhost ip6-localhost ip6-loopback\n',
             'fe00::0\tip6-localnet\n',
             'fe00::0\tip6-mcastprefix\n',
             'fe00::1\tip6-allnodes\n',
             'fe00::2\tip6-allrouters\n']
    if hostname:
        for ip in pod_ips:
            if domain:
                lines.append('%s\t%s.%s\t%s\n' % (ip, hostname, domain, hostname))
            else:
                lines.append('%s\t%s\n' % (ip, hostname))
    if host_aliases:
        lines.append('\n# Entries added by HostAliases.\n')
        for a in host_aliases:
            lines.append('%s\t%s\n' % (a['ip'], '\t'.join(a['hostnames'])))
    return ''.join(lines)


def parse_resolv_conf(text):
    ns, search, opts = [], [], []
    for line in text.splitlines():
        line = line.split('#', 1)[0].split(';', 1)[0].strip()
        f = line.split()
        if not f:
            continue
        if f[0] == 'nameserver' and len(f) > 1:
            ns.append(f[1])
        elif f[0] in ('search', 'domain'):
            search = f[1:]
        elif f[0] == 'options':
            opts.extend(f[1:])
    return ns, search, opts


def resolv_content(nameservers, searches, options):
    """resolv.conf as the runtime writes it for a pod (search, nameserver..., options)."""
    out = ''
    if searches:
        out += 'search %s\n' % ' '.join(searches)
    for s in nameservers:
        out += 'nameserver %s\n' % s
    if options:
        out += 'options %s\n' % ' '.join(options)
    return out


def host_dns(host_resolv='/etc/resolv.conf', fallback='/run/systemd/resolve/resolv.conf'):
    """The host's DNS config (dnsPolicy Default); a loopback-only stub is replaced by the
    upstream list systemd-resolved keeps, as kubelet's --resolv-conf advice says."""
    try:
        with open(host_resolv) as f:
            ns, search, opts = parse_resolv_conf(f.read())
    except (IOError, OSError):
        ns, search, opts = [], [], []
    if ns and all(ipaddress.ip_address(n).is_loopback for n in ns if _is_ip(n)) and os.path.isfile(fallback):
        with open(fallback) as f:
            ns, search, opts = parse_resolv_conf(f.read())
    return ns, search, opts


def shebang(path):
    """The interpreter of a `#!` script (None for anything else)."""
    try:
        with open(path, 'rb') as f:
            head = f.read(256)
    except (IOError, OSError):
        return None
    if not head.startswith(b'#!'):
        return None
    words = head[2:].split(b'\n', 1)[0].split()
    return words[0].decode('utf-8', 'replace') if words and words[0].startswith(b'/') else None


def _check_word(field, w):
    """One token of a generated file: no whitespace, '#' or control characters (no injection)."""
    if not isinstance(w, str) or not w or any(c.isspace() or c == '#' or ord(c) < 32 for c in w):
        raise BarepodError('%r must be a single word (no spaces, newlines or "#")' % (w,), field=field, value=w)
    return w


def _is_ip(s):
    try:
        ipaddress.ip_address(s)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------- mount syscalls

def _mount_call(source, target, fstype, flags, data):
    ns.mount(source, target, fstype, flags, data)


def umount(target, flags=0):
    ns.umount2(target, flags)


# ---------------------------------------------------------------- the manager

def manifest_path(path):
    parent, name = os.path.split(path.rstrip('/'))
    return os.path.join(parent, '.%s.barepod.json' % name)


def sidecar_dir(path):
    parent, name = os.path.split(path.rstrip('/'))
    return os.path.join(parent, '.%s.barepod.d' % name)


def _file_sig(st):
    """What decides 'up to date' for a copied file: type, size, mtime, mode."""
    return [stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode)]


def _entry_sig(st, fs, path):
    if st is None:
        return None
    if stat.S_ISDIR(st.st_mode):
        return ['d', stat.S_IMODE(st.st_mode)]
    if stat.S_ISLNK(st.st_mode):
        fd, name, _hp = fs.parent(path, create=False)
        try:
            return ['l', os.readlink(name, dir_fd=fd)]
        finally:
            os.close(fd)
    if stat.S_ISREG(st.st_mode):
        return ['f', stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns]
    return ['o', stat.S_IFMT(st.st_mode)]


def _sig(fs, path):
    """_entry_sig of a path as seen now (a path on a mount point below the root: ['m'])."""
    try:
        return _entry_sig(fs.lstat(path), fs, path)
    except UnderMount:
        return ['m']


def _step(action, target, fn, **details):
    """One planned action: (action, target, the callable that does it, details for the report)."""
    return (action, target, fn, details)


def _files_order(files):
    """Directories first, then files and links by path."""
    return sorted(files, key=lambda x: (files[x]['kind'] != 'dir', x))


def _up_to_date(path, p, spec, fs_):
    st = fs_.lstat(p) if os.path.isdir(path) else None
    if spec['kind'] == 'dir':
        return st is not None and stat.S_ISDIR(st.st_mode)
    if spec['kind'] == 'symlink':
        return st is not None and stat.S_ISLNK(st.st_mode) and _entry_sig(st, fs_, p) == ['l', spec['target']]
    return st is not None and _file_sig(st) == spec['src']


def _etc_mounts(side, etc):
    """The bind mounts of the generated /etc files, from the sidecar dir."""
    return [dict(type='bind', source=os.path.join(side, os.path.basename(target)), target=target, read_only=False,
                 options=[], is_dir=False, generated=True) for target in sorted(etc)]


class _Pass(object):
    """What one present() run shares between its plans and their actions: the desired files and
    image, the state the manifest recorded, the mounts seen before planning, whether the image is
    (re)extracted, and the one view of the mounts under the root that the files pass uses.

    The files pass mounts and unmounts nothing (mounts come last), so re-reading mountinfo for
    each of hundreds of files would only cost time: files_fs() reads it once; any mount or
    unmount action drops the view (drop_view)."""

    def __init__(self, mgr, path, files, image, image_fp):
        self._mgr = mgr
        self.path = path
        self.files = files
        self.image = image
        self.image_fp = image_fp
        self.exists = os.path.isdir(path)
        manifest = mgr.load_manifest(path) if self.exists else {}
        self.old_files = manifest.get('files') or {}
        self.old_image = manifest.get('image') or {}
        self.old_mounts = manifest.get('mounts') or []
        self.current_mounts = mounts_under(path, mgr.mountinfo) if self.exists else []
        self.fs = SafeRoot(path if self.exists else '/nonexistent', [m['mountpoint'] for m in self.current_mounts])
        self.side = sidecar_dir(path)
        self.image_paths = list(self.old_image.get('paths') or {})
        self.reapply_image = False
        self.new_image_state = {}
        self._view = None

    def files_fs(self):
        if self._view is None:
            self._view = self._mgr._fs(self.path)
        return self._view

    def drop_view(self):
        self._view = None


class RootfsManager(object):
    """Converge one rootfs directory. All roots/paths injectable for tests."""

    def __init__(self, params, check_mode=False, host_root='/', mountinfo='/proc/self/mountinfo',
                 host_resolv='/etc/resolv.conf', resolv_fallback='/run/systemd/resolve/resolv.conf'):
        self.p = params
        self.check_mode = check_mode
        self.host_root = host_root
        self.mountinfo = mountinfo
        self.host_resolv = host_resolv
        self.resolv_fallback = resolv_fallback
        self.warnings = []
        self.actions = Actions(check_mode)

    # -------------------------------------------------- validation + desired state
    def validate_path(self):
        path = self.p.get('path')
        if not isinstance(path, str) or not path.startswith('/'):
            raise BarepodError('must be an absolute path, got %r' % (path,), field='path', value=path)
        if '\x00' in path:
            raise BarepodError('contains a NUL byte', field='path', value=path)
        path = os.path.normpath(path)
        if path == '/' or path.count('/') < 2:
            raise BarepodError('refusing to manage %s as a rootfs (use a dedicated directory at least '
                               'two levels deep)' % path, field='path', value=path)
        if os.path.islink(path):
            raise BarepodError('%s is a symlink; a rootfs must be a real directory' % path,
                               field='path', value=path)
        if os.path.lexists(path) and not os.path.isdir(path):
            raise BarepodError('%s exists and is not a directory' % path, field='path', value=path)
        parent = os.path.dirname(path)
        if os.path.exists(parent) and not os.path.isdir(parent):
            raise BarepodError('parent %s is not a directory' % parent, field='path', value=path)
        return path

    def _which(self, name):
        if '/' in name:
            return name
        for d in (os.environ.get('PATH') or '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin').split(':'):
            p = os.path.join(d, name)
            if d.startswith('/') and os.path.isfile(p) and os.access(p, os.X_OK):
                return p
        raise BarepodError('binary %r is not found in PATH' % name, field='binaries', value=name)

    def desired_files(self):
        """{path_in_root: spec} from busybox and binaries (later sources win), + mount dirs."""
        files = {}
        resolver = Resolver(self.host_root)
        for d in MOUNTPOINT_DIRS:
            files[d] = dict(kind='dir', by=['mountpoints'])
        if self.p.get('busybox'):
            bb = self.p.get('busybox_path') or '/bin/busybox'
            if not os.path.isfile(bb):
                raise BarepodError('%s does not exist (install busybox-static)' % bb, field='busybox_path', value=bb)
            files[clean('/bin/busybox')] = dict(kind='copy', source=os.path.realpath(bb), by=['busybox'])
            for path, _role in resolver.closure(bb, field='busybox_path'):
                files[clean(path)] = dict(kind='copy', source=os.path.realpath(path), by=['busybox'])
            try:
                out = subprocess.run([bb, '--list-full'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     check=True, timeout=30).stdout.decode()
            except (OSError, subprocess.SubprocessError) as e:
                raise BarepodError('cannot list the applets of %s: %s' % (bb, e), field='busybox_path', value=bb)
            for line in out.split():
                ap = clean(line)
                if ap in ('/', '/bin/busybox') or ap in files:
                    continue
                files[ap] = dict(kind='symlink', target='/bin/busybox', by=['busybox'])
        for i, b in enumerate(self.p.get('binaries') or []):
            field = 'binaries[%d]' % i
            if not isinstance(b, str) or not b:
                raise BarepodError('must be a path or a command name, got %r' % (b,), field=field, value=b)
            if '/' in b and not b.startswith('/'):
                raise BarepodError('%r is a relative path; give an absolute path or a bare command name' % b,
                                   field=field, value=b)
            hp = self._which(b)
            if not os.path.isfile(hp):
                raise BarepodError('binary %s does not exist' % b, field=field, value=b)
            entries = []
            todo, seen = [hp], set()
            while todo:  # a script brings its #! interpreter (and that one's closure)
                prog = todo.pop(0)
                if prog in seen or len(seen) > 8:
                    continue
                seen.add(prog)
                entries.append((clean(prog), os.path.realpath(prog)))
                entries += [(clean(p), os.path.realpath(p)) for p, _r in resolver.closure(prog, field=field)]
                interp = shebang(prog)
                if interp:
                    if not os.path.isfile(interp):
                        raise BarepodError('%s is a script for %s, which does not exist' % (b, interp),
                                           field=field, value=b)
                    todo.append(interp)
            for dst, src in entries:
                cur = files.get(dst)
                if cur and cur['kind'] == 'copy' and cur['source'] == src:
                    if b not in cur['by']:
                        cur['by'].append(b)
                else:
                    files[dst] = dict(kind='copy', source=src, by=[b])
        for spec in files.values():
            if spec['kind'] == 'copy':
                st = os.stat(spec['source'])
                spec['src'] = _file_sig(st)
        return files

    def desired_mounts(self, path):
        mounts = []
        allowed = self.p.get('allowed_host_paths') or []
        for i, m in enumerate(self.p.get('mounts') or []):
            field = 'mounts[%d]' % i
            if not isinstance(m, dict):
                raise BarepodError('must be a dict', field=field, value=m)
            mtype = m.get('type') or 'bind'
            target = m.get('target')
            if not isinstance(target, str) or not target.startswith('/'):
                raise BarepodError('target must be an absolute path inside the rootfs, got %r' % (target,),
                                   field=field + '.target', value=target)
            if '..' in target.split('/'):
                raise BarepodError('target %r contains ".."' % target, field=field + '.target', value=target)
            target = clean(target)
            if target == '/':
                raise BarepodError('cannot mount over the rootfs itself', field=field + '.target', value=target)
            opts = m.get('options') or []
            if isinstance(opts, str):
                opts = [o for o in opts.split(',') if o]
            if mtype == 'bind':
                _check_options(field, opts, BIND_OPTIONS, 'unknown bind mount option(s) %s (allowed: %s)')
                src = check_host_path(field + '.source', m.get('source'), allowed)
                ro = bool(m.get('read_only')) or 'ro' in opts
                flags = sorted(set(o for o in opts if o in ('nosuid', 'nodev', 'noexec')))
                mounts.append(dict(type='bind', source=src, target=target, read_only=ro, options=flags,
                                   is_dir=os.path.isdir(src)))
            elif mtype == 'tmpfs':
                _check_options(field, opts, TMPFS_OPTIONS, 'unknown tmpfs option(s) %s (allowed: %s, and size)')
                size = parse_size(field + '.size', m.get('size') if m.get('size') is not None else '64Mi')
                flags = sorted(set(o for o in opts if o in ('nosuid', 'nodev', 'noexec')))
                if m.get('options') is None:
                    flags = list(DEFAULT_SHM_OPTIONS)
                mounts.append(dict(type='tmpfs', source='tmpfs', target=target, size=size,
                                   read_only=bool(m.get('read_only')) or 'ro' in opts, options=flags, is_dir=True))
            else:
                raise BarepodError('unknown mount type %r (bind or tmpfs; proc is mounted by ns_sandbox '
                                   'inside the container)' % (mtype,), field=field + '.type', value=mtype)
        shm = self.p.get('shm_size')
        if shm not in (None, '', 0, '0'):
            size = parse_size('shm_size', shm)
            if not any(m['target'] == '/dev/shm' for m in mounts):
                mounts.append(dict(type='tmpfs', source='shm', target='/dev/shm', size=size, read_only=False,
                                   options=list(DEFAULT_SHM_OPTIONS), is_dir=True))
        # parents before children, as runc sorts mounts by destination
        mounts.sort(key=lambda m: m['target'].rstrip('/').count('/'))
        seen = set()
        for m in mounts:
            if m['target'] in seen:
                raise BarepodError('two mounts on %s' % m['target'], field='mounts', value=m['target'])
            seen.add(m['target'])
        return mounts

    def desired_etc(self):
        """{'/etc/hosts': content, ...} as kubelet/containerd generate them."""
        if not self.p.get('etc_files', True):
            return {}
        hostname = self.p.get('hostname')
        if hostname is not None and (not isinstance(hostname, str) or not DNS1123_SUBDOMAIN_RE.match(hostname)
                                     or len(hostname) > 63):
            raise BarepodError('%r is not a valid hostname (DNS-1123, at most 63)' % (hostname,),
                               field='hostname', value=hostname)
        ips = self.p.get('pod_ips') or []
        for fld in ('pod_ips', 'host_aliases'):
            if self.p.get(fld) is not None and not isinstance(self.p.get(fld), list):
                raise BarepodError('must be a list, got %r' % (self.p.get(fld),), field=fld, value=self.p.get(fld))
        for ip in ips:
            if not _is_ip(str(ip)):
                raise BarepodError('%r is not an IP address' % (ip,), field='pod_ips', value=ip)
        aliases = self.p.get('host_aliases') or []
        for i, a in enumerate(aliases):
            if not isinstance(a, dict) or not _is_ip(str(a.get('ip'))) or not a.get('hostnames'):
                raise BarepodError('each host alias needs ip and hostnames, got %r' % (a,),
                                   field='host_aliases[%d]' % i, value=a)
            if not isinstance(a['hostnames'], list):
                raise BarepodError('hostnames must be a list, got %r' % (a['hostnames'],),
                                   field='host_aliases[%d].hostnames' % i, value=a['hostnames'])
            for h in a['hostnames']:
                _check_word('host_aliases[%d].hostnames' % i, h)
        if self.p.get('subdomain') is not None:
            _check_word('subdomain', self.p.get('subdomain'))
            if not DNS1123_SUBDOMAIN_RE.match(self.p.get('subdomain')):
                raise BarepodError('%r is not a DNS-1123 subdomain' % (self.p.get('subdomain'),),
                                   field='subdomain', value=self.p.get('subdomain'))
        dns = self.p.get('dns')
        if dns:
            ns = dns.get('nameservers') or []
            search = dns.get('searches') or []
            opts = dns.get('options') or []
            for n in ns:
                if not _is_ip(str(n)):
                    raise BarepodError('%r is not an IP address' % (n,), field='dns.nameservers', value=n)
            for fld, words in (('dns.searches', search), ('dns.options', opts)):
                for w in words:
                    _check_word(fld, w)
        else:
            ns, search, opts = host_dns(self.host_resolv, self.resolv_fallback)
        out = {'/etc/hosts': hosts_content(hostname, ips, self.p.get('subdomain'), aliases),
               '/etc/resolv.conf': resolv_content(ns, search, opts)}
        if hostname:
            out['/etc/hostname'] = hostname + '\n'
        return out

    def image(self):
        img = self.p.get('image')
        if not img:
            return None
        fmt = self.p.get('image_format') or 'auto'
        if fmt not in FORMATS:
            raise BarepodError('unknown format %r (one of %s)' % (fmt, ', '.join(FORMATS)),
                               field='image_format', value=fmt)
        return Image(img, fmt)

    # -------------------------------------------------- observe
    def load_manifest(self, path):
        try:
            with open(manifest_path(path)) as f:
                m = json.load(f)
        except (IOError, OSError, ValueError):
            return {}
        return m if isinstance(m, dict) and m.get('version') == MANIFEST_VERSION else {}

    # -------------------------------------------------- the run
    def run(self):
        state = self.p.get('state') or 'present'
        path = self.validate_path()
        if state == 'absent':
            with _dir_lock(os.path.dirname(path)):
                return self.absent(path)
        if state != 'present':
            raise BarepodError('must be present or absent', field='state', value=state)
        with _dir_lock(os.path.dirname(path)):
            return self.present(path)

    def present(self, path):
        # everything validated and computed before the first change
        files = self.desired_files()
        mounts = self.desired_mounts(path)
        etc = self.desired_etc()
        image = self.image()
        image_fp = image.fingerprint() if image else None
        for target in etc:
            if any(m['target'] == target for m in mounts):
                raise BarepodError('%s is generated (etc_files); do not also mount it' % target,
                                   field='mounts', value=target)

        ps = _Pass(self, path, files, image, image_fp)
        mounts += _etc_mounts(ps.side, etc)
        before = dict(path=path, exists=ps.exists, files=sorted(ps.old_files), image=ps.old_image.get('fingerprint'),
                      mounts=sorted(m['target'] for m in ps.old_mounts))
        steps = [] if ps.exists else [_step('create', path, lambda: os.makedirs(path, 0o755))]
        steps += self._plan_image(ps)
        steps += self._plan_files(ps)
        etc_steps, before['etc'], etc_after = self._plan_etc(ps, etc)
        steps += etc_steps
        steps += self._plan_mounts(ps, mounts)
        a = self.actions
        for action, target, fn, details in steps:
            a.add(action, target, fn, **details)

        after = dict(path=path, exists=True, files=sorted(files), image=image_fp,
                     mounts=sorted(m['target'] for m in mounts), etc=etc_after)

        if a and not self.check_mode:
            ok = False
            try:
                a.run()
                ok = True
            finally:
                # the manifest records the result; after a failure it keeps tracking what the
                # earlier run and this one may have put there (so a later run can clean up), and
                # an image whose extraction did not finish is marked to be extracted again
                if os.path.isdir(path):
                    self._write_manifest(ps, mounts, ok)
        return dict(changed=bool(a), actions=a.planned, diff=dict(before=before, after=after),
                    path=path, manifest=manifest_path(path),
                    mounts=[dict(type=m['type'], source=m['source'], target=m['target'], read_only=m['read_only'])
                            for m in mounts],
                    files=len(files), warnings=self.warnings)

    # -------------------------------------------------- the plans of present(), in their order
    def _plan_image(self, ps):
        """Remove what a dropped image brought, or (re)extract the image when its fingerprint or a
        path it provided changed (sets ps.reapply_image)."""
        steps = []
        image, old_image = ps.image, ps.old_image
        if image is None and old_image:
            for p in sorted(old_image.get('paths') or {}, reverse=True):
                if p not in ps.files and ps.exists and ps.fs.lstat(p) is not None:
                    steps.append(_step('remove', p, (lambda p=p: self._fs(ps.path).remove(p)), source='image'))
        elif image is not None:
            if not ps.exists or old_image.get('fingerprint') != ps.image_fp:
                ps.reapply_image = True
            else:
                for p, sig in (old_image.get('paths') or {}).items():
                    if p in ps.files:
                        continue
                    if _sig(ps.fs, p) != sig:
                        ps.reapply_image = True
                        break
            if ps.reapply_image:
                steps.append(_step('extract', image.path, (lambda: self._extract_image(ps)), format=image.format,
                                   fingerprint=ps.image_fp))
        return steps

    def _plan_files(self, ps):
        """Add or replace the files of busybox, binaries and the mount point dirs (directories
        first, then files and links by path); remove the ones no source wants any more, or
        re-extract the image where it owns such a path again."""
        steps = []
        files = ps.files
        for p in _files_order(files):
            spec = files[p]
            current = ps.fs.lstat(p) if ps.exists else None
            if ps.exists and _up_to_date(ps.path, p, spec, ps.fs) and not (ps.reapply_image and p in ps.image_paths):
                continue
            steps.append(_step('add' if current is None else 'replace', p,
                               (lambda p=p, spec=spec: self._sync_file(ps, p, spec)),
                               kind=spec['kind'], source=spec.get('source') or spec.get('target'), by=spec['by']))
        image_after = set(ps.image_paths) if ps.image is not None else set()
        for p in sorted(set(ps.old_files) - set(files), reverse=True):
            if p in image_after:
                if not ps.reapply_image:
                    # the image owns this path again: restore it by re-extracting
                    steps.append(_step('extract', ps.image.path, (lambda: self._extract_image(ps)),
                                       format=ps.image.format, fingerprint=ps.image_fp, reason='restore %s' % p))
                    ps.reapply_image = True
                continue
            if ps.exists and ps.fs.lstat(p) is not None:
                steps.append(_step('remove', p, (lambda p=p: self._fs(ps.path).remove(p)), by=ps.old_files[p].get('by')))
        return steps

    def _plan_etc(self, ps, etc):
        """Write the generated /etc files in the sidecar dir (bind-mounted in, see _etc_mounts)
        where their content differs. -> (steps, before, after)"""
        steps, before, after = [], {}, {}
        for target, content in sorted(etc.items()):
            src = os.path.join(ps.side, os.path.basename(target))
            try:
                with open(src, 'r') as f:
                    before[target] = f.read()
            except (IOError, OSError):
                pass
            after[target] = content
            if before.get(target) != content:
                steps.append(_step('write', src, (lambda src=src, content=content: self._write_in_place(ps.side, src, content)),
                                   mounted_at=target))
        return steps, before, after

    def _plan_mounts(self, ps, mounts):
        """Unmount what the manifest mounted and is no longer wanted, then (re)mount each wanted
        mount whose source or options differ; records each mount's host_target. Every mount or
        unmount drops the files pass's view of the mounts."""
        steps = []
        top = {}
        for m in ps.current_mounts:
            top[m['mountpoint']] = m
        for m in ps.old_mounts:
            if not any(d['target'] == m['target'] for d in mounts):
                hp = m.get('host_target')
                if hp in top:
                    steps.append(_step('unmount', m['target'], (lambda hp=hp: (ps.drop_view(), self._umount(hp)))))
        for m in mounts:
            if ps.exists:
                hp = self._host_target(ps.path, m['target'], ps.fs)
            else:
                hp = os.path.join(ps.path, m['target'].lstrip('/'))
            if ps.exists and not os.path.lexists(hp) and any(is_within(mp, hp) for mp in top):
                raise BarepodError('the mount point %s would have to be created inside another mount (a host '
                                   'directory); create it there first' % m['target'], field='mounts',
                                   value=m['target'])
            cur = top.get(hp)
            m['host_target'] = hp
            if cur is not None and self._mount_matches(cur, m, hp):
                continue
            if cur is not None:
                steps.append(_step('unmount', m['target'], (lambda hp=hp: (ps.drop_view(), self._umount(hp))),
                                   reason='options changed'))
            steps.append(_step('mount', m['target'], (lambda m=m: (ps.drop_view(), self._mount(ps.path, m))),
                               type=m['type'], source=m['source'], read_only=m['read_only'], options=m['options']))
        return steps

    # -------------------------------------------------- what the files and image actions run
    def _sync_file(self, ps, p, spec):
        fs_ = ps.files_fs()
        if _up_to_date(ps.path, p, spec, fs_):
            return
        if spec['kind'] == 'dir':
            fs_.mkdir(p, 0o755)
        elif spec['kind'] == 'symlink':
            fs_.symlink(p, spec['target'])
        else:
            with open(spec['source'], 'rb') as f:
                st = os.fstat(f.fileno())
                fs_.write_file(p, f, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)

    def _extract_image(self, ps):
        fs2 = self._fs(ps.path)
        new_paths = apply_image(fs2, ps.image, self.warnings)
        for p in sorted(set(ps.old_image.get('paths') or {}) - set(new_paths) - set(ps.files), reverse=True):
            try:
                fs2.remove(p)
            except UnderMount as e:
                self.warnings.append('%s kept: %s' % (p, e))
        ps.new_image_state['paths'] = new_paths
        # the image may have overwritten files of the other sources (also through a
        # symlinked directory such as bin -> usr/bin): put them back now
        for p in _files_order(ps.files):
            self._sync_file(ps, p, ps.files[p])

    def _write_manifest(self, ps, mounts, ok):
        path, files, image, old_image = ps.path, ps.files, ps.image, ps.old_image
        reapply_image, new_image_state = ps.reapply_image, ps.new_image_state
        fs_final = self._fs(path)
        mfiles = dict((p, dict(kind=s['kind'], source=s.get('source') or s.get('target'), by=s['by']))
                      for p, s in files.items())
        mmounts = [dict(type=m['type'], source=m['source'], target=m['target'],
                        host_target=m.get('host_target'), read_only=m['read_only']) for m in mounts]
        if not ok:
            for p, v in ps.old_files.items():
                mfiles.setdefault(p, v)
            have = set(m['target'] for m in mmounts)
            mmounts += [m for m in ps.old_mounts if m['target'] not in have]
        if image is not None and (not reapply_image or 'paths' in new_image_state):
            ipaths = new_image_state['paths'] if reapply_image else list(old_image.get('paths') or {})
            img_state = dict(fingerprint=ps.image_fp, source=image.path, format=image.format,
                             paths=dict((p, _sig(fs_final, p))
                                        for p in ipaths if p not in files))
        elif image is not None or (old_image and not ok):
            img_state = dict(fingerprint=None, paths=dict(old_image.get('paths') or {}))
        else:
            img_state = {}
        man = dict(version=MANIFEST_VERSION, path=path, files=mfiles, image=img_state, mounts=mmounts)
        write_if_changed(manifest_path(path), dump_json(man), 0o600)

    # -------------------------------------------------- helpers used by actions
    def _fs(self, path):
        return SafeRoot(path, [m['mountpoint'] for m in mounts_under(path, self.mountinfo)])

    def _write_in_place(self, side, src, content):
        """Write in place (not rename) so an existing bind mount of the file sees the change."""
        if not os.path.isdir(side):
            os.makedirs(side, 0o755)
        if os.path.islink(src):
            os.unlink(src)
        fd = os.open(src, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, content.encode('utf-8'))
            os.fchmod(fd, 0o644)
        finally:
            os.close(fd)

    def _host_target(self, path, target, fs):
        try:
            return os.path.realpath(fs.resolve(target, field='mounts'))
        except BarepodError:
            return os.path.join(path, target.lstrip('/'))

    def _mount_matches(self, cur, m, hp):
        opts = set(cur['options'])
        if ('ro' in opts) != bool(m['read_only']):
            return False
        for o in m['options']:
            if o not in opts:
                return False
        if m['type'] == 'tmpfs':
            if cur['fstype'] != 'tmpfs':
                return False
            sz = [s for s in cur['super'] if s.startswith('size=')]
            if sz and sz[0] != 'size=%dk' % (m['size'] // 1024):
                return False
            return True
        try:
            st_src = os.stat(m['source'])
            st_dst = os.stat(hp)
        except OSError:
            return False
        return (st_src.st_dev, st_src.st_ino) == (st_dst.st_dev, st_dst.st_ino)

    def _mount(self, path, m):
        failpoint('rootfs-before-mounts')
        fs = self._fs(path)
        target = m['target']
        # create the mount point inside the root (resolved there, never followed out); never
        # inside another mount (that would write into a host directory)
        hp = fs.resolve(target, field='mounts')
        rel = '/' + os.path.relpath(hp, fs.root)
        st = os.lstat(hp) if os.path.lexists(hp) else None
        if st is None:
            try:
                if m['is_dir']:
                    fs.mkdir(rel, 0o755)
                else:
                    fs.write_file(rel, _Empty(), 0o644)
            except UnderMount as e:
                raise BarepodError('cannot create the mount point %s: %s (create it in the mounted '
                                   'directory first)' % (target, e), field='mounts', value=target)
        elif m['is_dir'] and not stat.S_ISDIR(st.st_mode):
            raise BarepodError('mount target %s exists and is not a directory' % target,
                               field='mounts', value=target)
        elif not m['is_dir'] and stat.S_ISDIR(st.st_mode):
            raise BarepodError('mount target %s is a directory, the source is a file' % target,
                               field='mounts', value=target)
        ro = MS_RDONLY if m['read_only'] else 0
        flags = 0
        for o in m['options']:
            flags |= FLAG_OPTS.get(o, 0)
        # mount on /proc/self/fd/N of an O_PATH|O_NOFOLLOW fd: the kernel mounts on exactly
        # the inode we checked, even if a symlink is swapped in meanwhile (CVE-2021-30465)
        fd = fs.open_path(rel)
        try:
            if m['type'] == 'bind':
                _mount_call(m['source'], '/proc/self/fd/%d' % fd, None, MS_BIND, None)
            else:
                _mount_call('shm' if m['target'] == '/dev/shm' else 'tmpfs', '/proc/self/fd/%d' % fd, 'tmpfs',
                            flags | ro, 'size=%d,mode=1777' % m['size'])
        finally:
            os.close(fd)
        if m['type'] == 'bind' and (ro or flags):
            fd = fs.open_path(rel)  # now the root of the new mount
            try:
                _mount_call(None, '/proc/self/fd/%d' % fd, None, MS_REMOUNT | MS_BIND | ro | flags, None)
            finally:
                os.close(fd)

    def _umount(self, hp):
        try:
            umount(hp)
        except OSError as e:
            if e.errno == errno.EINVAL:
                return  # not a mount point (any more)
            if e.errno == errno.EBUSY:
                umount(hp, MNT_DETACH)
                return
            raise

    # -------------------------------------------------- absent
    def absent(self, path):
        exists = os.path.isdir(path)
        man = manifest_path(path)
        side = sidecar_dir(path)
        a = self.actions
        before = dict(path=path, exists=exists, mounts=[])
        if exists:
            mounts = unmount_order(mounts_under(path, self.mountinfo))
            before['mounts'] = sorted(set(m['mountpoint'] for m in mounts))
            for m in mounts:
                a.add('unmount', m['mountpoint'], (lambda mp=m['mountpoint']: self._umount_any(mp)),
                      fstype=m['fstype'])
            a.add('remove', path, lambda: self._remove_tree(path))
        if os.path.lexists(man):
            a.add('remove', man, lambda: os.unlink(man))
        if os.path.lexists(side):
            a.add('remove', side, lambda: shutil.rmtree(side))
        a.run()
        return dict(changed=bool(a), actions=a.planned, path=path, manifest=man,
                    diff=dict(before=before, after=dict(path=path, exists=False, mounts=[])),
                    mounts=[], files=0, warnings=self.warnings)

    def _umount_any(self, mp):
        try:
            umount(mp)
        except OSError as e:
            if e.errno == errno.EINVAL:
                return
            if e.errno == errno.EBUSY:
                umount(mp, MNT_DETACH)
                self.warnings.append('%s was busy; detached lazily' % mp)
                return
            raise

    def _remove_tree(self, path):
        left = mounts_under(path, self.mountinfo)
        if left:
            raise BarepodError('still mounted under %s: %s; not removing it'
                               % (path, ', '.join(m['mountpoint'] for m in left)), field='path', value=path)
        dev = os.lstat(path).st_dev
        # never cross a mount point, even one this namespace cannot see in mountinfo
        for dirpath, _dirnames, _filenames, dirfd in os.fwalk(path, follow_symlinks=False):
            if os.fstat(dirfd).st_dev != dev:
                raise BarepodError('%s is on another filesystem (a mount point); not removing %s'
                                   % (dirpath, path), field='path', value=path)
        shutil.rmtree(path)


def _dir_lock(d):
    """flock on the rootfs's parent directory: two runs on one rootfs take turns. A directory
    fd opened read-only, so taking the lock writes nothing (no lock while it does not exist)."""
    return exclusive_lock(d, None)


class _Empty(object):
    def read(self, *a):
        return b''


class ChrootRootfs(Manager):
    """chroot_rootfs: converge one rootfs (RootfsManager), then (with namespace and name) record it
    in the pod record, section `rootfs`, keyed by container name. roots: RootfsManager's
    injectable host paths (tests)."""

    def __init__(self, params, check_mode=False, diff=False, **roots):
        super().__init__(params, check_mode, diff)
        self.roots = roots

    def run(self):
        params, check_mode = self.params, self.check_mode
        if not params.get('path'):
            # the DESIGN layout: <rootfs_root>/<pod uid>/<container>/
            from ansible_collections.barepod.linux.plugins.module_utils._state import rootfs_dir
            uid, container = params.get('pod_uid'), params.get('container')
            if not uid or not container:
                raise BarepodError('give path, or pod_uid and container', field='path', value=None)
            validate_uid('pod_uid', uid)
            validate_dns_label('container', container)
            params = dict(params, path=rootfs_dir(uid, container, params.get('rootfs_root') or _defaults.ROOTFS_ROOT))
        ns, name = params.get('namespace'), params.get('name')
        if bool(ns) != bool(name):
            raise BarepodError('namespace and name go together', field='namespace' if not ns else 'name',
                               value=ns or name)
        if ns:
            from ansible_collections.barepod.linux.plugins.module_utils._state import PodRecord
            rec = PodRecord(ns, name, params.get('state_root') or _defaults.STATE_ROOT)  # validates the names
        res = RootfsManager(params, check_mode, **self.roots).run()
        if ns:
            container = params.get('container') or os.path.basename(res['path'])
            sect = dict(rec.section('rootfs') or {})
            if (params.get('state') or 'present') == 'present':
                sect[container] = dict(path=res['path'], manifest=res['manifest'],
                                       mounts=sorted(m['target'] for m in res['mounts']))
            else:
                sect.pop(container, None)
            value = sect or None
            if rec.section('rootfs') != value:
                res['changed'] = True
                res['actions'].append(dict(action='record', target=rec.record_path, section='rootfs',
                                           container=container))
                if not check_mode:
                    rec.update('rootfs', value, uid=params.get('pod_uid'))
            res['record'] = rec.record_path
        return result(res.pop('changed'), res.pop('actions'), res.pop('diff'), res.pop('warnings'), **res)


def run(params, check_mode=False, **roots):
    """ChrootRootfs(params, check_mode, **roots).run()."""
    return ChrootRootfs(params, check_mode, **roots).run()
