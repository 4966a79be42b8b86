# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The shared-library closure of an ELF executable, read from the files themselves.

What the dynamic loader (glibc ld.so) would load, found without running it (no `ldd`):
PT_INTERP names the interpreter; PT_DYNAMIC lists DT_NEEDED, DT_RPATH and DT_RUNPATH
(with $ORIGIN, $LIB and $PLATFORM expanded); each name is searched the way ld.so does:
DT_RPATH of the object and of its loaders (only when the object has no DT_RUNPATH),
then DT_RUNPATH, then the directories of /etc/ld.so.conf (with `include` globs, standing
in for /etc/ld.so.cache which is built from them), then the system directories
(multiarch first). A candidate whose ELF class or machine differs is skipped, as ld.so does.
Pure Python (struct); roots are parameters so tests can use fixtures.
"""

from __future__ import annotations

import glob
import os
import struct

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError

PT_DYNAMIC = 2
PT_INTERP = 3
PT_LOAD = 1
DT_NULL = 0
DT_NEEDED = 1
DT_STRTAB = 5
DT_STRSZ = 10
DT_RPATH = 15
DT_RUNPATH = 29

ELFCLASS32 = 1
ELFCLASS64 = 2

# Debian's multiarch triplets per e_machine (for the system search path).
MULTIARCH = {
    62: ('x86_64-linux-gnu', 'lib64'),      # EM_X86_64
    183: ('aarch64-linux-gnu', 'lib64'),    # EM_AARCH64
    3: ('i386-linux-gnu', 'lib'),           # EM_386
    40: ('arm-linux-gnueabihf', 'lib'),     # EM_ARM
    243: ('riscv64-linux-gnu', 'lib64'),    # EM_RISCV
    21: ('powerpc64le-linux-gnu', 'lib64'),  # EM_PPC64
    22: ('s390x-linux-gnu', 'lib64'),       # EM_S390
}
PLATFORMS = {62: 'x86_64', 183: 'aarch64', 3: 'i686', 40: 'v7l', 243: 'riscv64'}


class ElfInfo(object):
    """What the loader needs from one ELF file."""

    def __init__(self, path, elfclass, machine, interp, needed, rpath, runpath):
        self.path = path
        self.elfclass = elfclass
        self.machine = machine
        self.interp = interp
        self.needed = needed
        self.rpath = rpath
        self.runpath = runpath

    def compatible(self, other):
        return self.elfclass == other.elfclass and self.machine == other.machine


def is_elf(path):
    try:
        with open(path, 'rb') as f:
            return f.read(4) == b'\x7fELF'
    except (IOError, OSError):
        return False


def parse_elf(path):
    """Parse the headers of one ELF file; None when it is not ELF."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except (IOError, OSError) as e:
        raise BarepodError('cannot read %s: %s' % (path, e.strerror), value=path)
    return parse_elf_bytes(data, path)


def parse_elf_bytes(data, path='<bytes>'):
    if len(data) < 52 or data[:4] != b'\x7fELF':
        return None
    elfclass = data[4]
    endian = '<' if data[5] == 1 else '>'
    if elfclass == ELFCLASS64:
        hdr = struct.unpack_from(endian + 'HHIQQQIHHHHHH', data, 16)
        (_etype, machine, _ver, _entry, phoff, _shoff, _flags, _ehsize, phentsize, phnum,
         _shentsize, _shnum, _shstrndx) = hdr
        phfmt, dynfmt = endian + 'IIQQQQQQ', endian + 'qQ'
    elif elfclass == ELFCLASS32:
        hdr = struct.unpack_from(endian + 'HHIIIIIHHHHHH', data, 16)
        (_etype, machine, _ver, _entry, phoff, _shoff, _flags, _ehsize, phentsize, phnum,
         _shentsize, _shnum, _shstrndx) = hdr
        phfmt, dynfmt = endian + 'IIIIIIII', endian + 'iI'
    else:
        return None
    loads = []
    interp = None
    dynamic = None
    try:
        for i in range(phnum):
            off = phoff + i * phentsize
            if elfclass == ELFCLASS64:
                p_type, _pflags, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _align = \
                    struct.unpack_from(phfmt, data, off)
            else:
                p_type, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _pflags, _align = \
                    struct.unpack_from(phfmt, data, off)
            if p_type == PT_LOAD:
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == PT_INTERP:
                interp = data[p_offset:p_offset + p_filesz].split(b'\0', 1)[0].decode('utf-8', 'replace')
            elif p_type == PT_DYNAMIC:
                dynamic = (p_offset, p_filesz)
    except struct.error:
        raise BarepodError('%s: truncated ELF program headers' % path, value=path)
    needed, rpath, runpath = [], [], []
    if dynamic is not None:
        entries = []
        step = struct.calcsize(dynfmt)
        off, size = dynamic
        end = min(off + size, len(data))
        strtab = None
        while off + step <= end:
            tag, val = struct.unpack_from(dynfmt, data, off)
            off += step
            if tag == DT_NULL:
                break
            if tag == DT_STRTAB:
                strtab = val
            entries.append((tag, val))
        if strtab is not None:
            stroff = _vaddr_to_offset(loads, strtab)

            def string(idx):
                s = stroff + idx
                return data[s:data.index(b'\0', s)].decode('utf-8', 'replace')

            for tag, val in entries:
                if tag == DT_NEEDED:
                    needed.append(string(val))
                elif tag == DT_RPATH:
                    rpath.extend(p for p in string(val).split(':'))
                elif tag == DT_RUNPATH:
                    runpath.extend(p for p in string(val).split(':'))
    return ElfInfo(path, elfclass, machine, interp, needed, rpath, runpath)


def _vaddr_to_offset(loads, vaddr):
    for p_vaddr, p_offset, p_filesz in loads:
        if p_vaddr <= vaddr < p_vaddr + p_filesz:
            return vaddr - p_vaddr + p_offset
    return vaddr  # some objects (and tests) have identity mappings


def read_ld_so_conf(path='/etc/ld.so.conf', root='/', _depth=0):
    """Directories listed by ld.so.conf, following `include` globs (relative to root)."""
    out = []
    if _depth > 8:
        return out
    real = os.path.join(root, path.lstrip('/'))
    try:
        with open(real, 'r') as f:
            lines = f.read().splitlines()
    except (IOError, OSError):
        return out
    for line in lines:
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        if line.startswith('include'):
            for pat in line.split()[1:]:
                if not pat.startswith('/'):
                    pat = os.path.join(os.path.dirname(path), pat)
                for inc in sorted(glob.glob(os.path.join(root, pat.lstrip('/')))):
                    rel = '/' + os.path.relpath(inc, root)
                    out.extend(read_ld_so_conf(rel, root, _depth + 1))
        elif line.startswith('hwcap'):
            continue
        else:
            out.extend(d for d in line.replace(',', ' ').split() if d.startswith('/'))
    return out


def system_dirs(machine, elfclass):
    triplet, libdir = MULTIARCH.get(machine, (None, 'lib64' if elfclass == ELFCLASS64 else 'lib'))
    dirs = []
    if triplet:
        dirs += ['/lib/' + triplet, '/usr/lib/' + triplet]
    if libdir == 'lib64':
        dirs += ['/lib64', '/usr/lib64']
    dirs += ['/lib', '/usr/lib']
    return dirs


def expand_dst(path, origin, machine, elfclass):
    """Expand $ORIGIN, $LIB, $PLATFORM (with or without braces) as ld.so does."""
    lib = 'lib64' if elfclass == ELFCLASS64 else 'lib'
    for name, val in (('ORIGIN', origin), ('LIB', lib), ('PLATFORM', PLATFORMS.get(machine, ''))):
        path = path.replace('${%s}' % name, val).replace('$%s' % name, val)
    return path


class Resolver(object):
    """Resolve DT_NEEDED names to files, like ld.so (root is '/' on a real host)."""

    def __init__(self, root='/', ld_so_conf='/etc/ld.so.conf'):
        self.root = root
        self.conf_dirs = read_ld_so_conf(ld_so_conf, root)
        self._cache = {}

    def host(self, path):
        return os.path.join(self.root, path.lstrip('/'))

    def info(self, path):
        if path not in self._cache:
            obj = parse_elf(self.host(path))
            if obj is not None:
                obj.path = path  # as seen inside root: $ORIGIN is relative to it
            self._cache[path] = obj
        return self._cache[path]

    def _candidate(self, d, name, like):
        p = os.path.normpath(os.path.join(d, name))
        hp = self.host(p)
        if not os.path.isfile(hp):
            return None
        try:
            info = self.info(p)
        except BarepodError:
            return None
        if info is None or not info.compatible(like):
            return None
        return p

    def find(self, name, obj, chain):
        """Path of library `name` needed by `obj` (ElfInfo) loaded via `chain` (loaders)."""
        if '/' in name:
            p = expand_dst(name, self._origin(obj), obj.machine, obj.elfclass)
            return p if os.path.isfile(self.host(p)) else None
        dirs = []
        if not obj.runpath:
            for o in [obj] + list(chain):
                if o.runpath:
                    break
                dirs += [expand_dst(d, self._origin(o), o.machine, o.elfclass) for d in o.rpath]
        dirs += [expand_dst(d, self._origin(obj), obj.machine, obj.elfclass) for d in obj.runpath]
        dirs += self.conf_dirs + system_dirs(obj.machine, obj.elfclass)
        for d in dirs:
            if not d:
                d = '.'
            p = self._candidate(d, name, obj)
            if p:
                return p
        return None

    def _origin(self, obj):
        return os.path.dirname(obj.path)

    def closure(self, executable, field='binaries'):
        """[(path, role)] for the executable, its interpreter and every library it loads.

        Paths are as the loader finds them (the executable's own path resolved through
        symlinks, so $ORIGIN is right). Raises BarepodError naming a library that cannot
        be found.
        """
        exe = os.path.realpath(self.host(executable))
        if self.root not in ('/', ''):
            exe = '/' + os.path.relpath(exe, os.path.realpath(self.root))
        info = self.info(exe)
        out = []
        if info is None:
            return out  # a script or another non-ELF file: nothing to load
        if info.interp:
            if not os.path.isfile(self.host(info.interp)):
                raise BarepodError('%s needs the interpreter %s, which does not exist'
                                   % (executable, info.interp), field=field, value=executable)
            out.append((info.interp, 'interpreter'))
        seen = set([info.interp]) if info.interp else set()
        # the interpreter is already loaded: its soname (libc's DT_NEEDED) is satisfied
        seen_names = set([os.path.basename(info.interp)]) if info.interp else set()
        # breadth-first, as ld.so loads them
        queue = [(info, [])]
        while queue:
            obj, chain = queue.pop(0)
            for name in obj.needed:
                if name in seen_names:
                    continue
                seen_names.add(name)
                path = self.find(name, obj, chain)
                if path is None:
                    raise BarepodError('%s needs %s (DT_NEEDED of %s), which is not found in the '
                                       'library search path' % (executable, name, obj.path),
                                       field=field, value=executable)
                if path in seen:
                    continue
                seen.add(path)
                out.append((path, 'library'))
                lib = self.info(path)
                if lib is not None:
                    queue.append((lib, [obj] + chain))
        return out
