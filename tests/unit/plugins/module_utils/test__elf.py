# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ELF closure: compared with what the real dynamic loader loads (ld.so --list is the oracle
here, and only here)."""

import os
import shutil
import struct
import subprocess

import pytest

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
from ansible_collections.barepod.linux.plugins.module_utils._elf import (
    Resolver, expand_dst, parse_elf, parse_elf_bytes, read_ld_so_conf, system_dirs)


def _interp():
    info = parse_elf('/bin/ls')
    return info.interp if info is not None else None


LDSO = _interp()


def oracle(path, env=None):
    """Set of real paths ld.so loads for `path` (linux-vdso excluded)."""
    out = subprocess.run([LDSO, '--list', path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         check=True, env=env).stdout.decode()
    paths = set()
    for line in out.splitlines():
        line = line.strip()
        if '=>' in line:
            p = line.split('=>', 1)[1].split('(')[0].strip()
            if p and p != 'not found':
                paths.add(os.path.realpath(p))
        elif line.startswith('/'):
            paths.add(os.path.realpath(line.split('(')[0].strip()))
    return paths


def ours(path, root='/'):
    return set(os.path.realpath(p) for p, _role in Resolver(root).closure(path))


HOST_BINARIES = [b for b in ('/bin/ls', '/usr/bin/python3', '/bin/bash', '/usr/sbin/ip', '/usr/bin/curl',
                             '/usr/bin/ssh', '/usr/sbin/iptables-legacy', '/usr/sbin/runc', '/usr/bin/git')
                 if os.path.exists(b)]


@pytest.mark.skipif(not LDSO or not os.path.exists(LDSO), reason='no dynamic loader')
@pytest.mark.parametrize('binary', HOST_BINARIES)
def test_closure_matches_the_dynamic_loader(binary):
    assert ours(binary) == oracle(binary)


def test_closure_lists_interpreter_first_and_libc():
    closure = Resolver().closure('/bin/ls')
    assert closure[0] == (LDSO, 'interpreter')
    assert any(os.path.basename(p) == 'libc.so.6' for p, _ in closure)
    # the loader's own soname (libc's DT_NEEDED) is not copied twice
    assert sum(1 for p, _ in closure if os.path.basename(p) == os.path.basename(LDSO)) == 1


@pytest.mark.skipif(not os.path.exists('/bin/busybox'), reason='busybox-static not installed')
def test_static_binary_has_empty_closure():
    info = parse_elf('/bin/busybox')
    assert info.interp is None and info.needed == []
    assert Resolver().closure('/bin/busybox') == []


def test_script_is_not_elf(tmp_path):
    s = tmp_path / 'script'
    s.write_text('#!/bin/sh\necho hi\n')
    assert parse_elf(str(s)) is None
    assert Resolver().closure(str(s)) == []


def test_missing_library_names_field(tmp_path):
    # a copy of ls whose libc name is patched to a name that exists nowhere
    data = open('/bin/ls', 'rb').read()
    assert b'libc.so.6\0' in data
    bad = tmp_path / 'ls'
    bad.write_bytes(data.replace(b'libc.so.6\0', b'libc.so.X\0'))
    with pytest.raises(BarepodError) as e:
        Resolver().closure(str(bad), field='binaries[0]')
    assert 'binaries[0]' in str(e.value) and 'libc.so.X' in str(e.value)


def test_ld_so_conf_includes_and_comments(tmp_path):
    (tmp_path / 'etc' / 'ld.so.conf.d').mkdir(parents=True)
    (tmp_path / 'etc' / 'ld.so.conf').write_text('# c\ninclude /etc/ld.so.conf.d/*.conf\n/opt/a\n')
    (tmp_path / 'etc' / 'ld.so.conf.d' / 'b.conf').write_text('/opt/b # trailing\n\n/opt/c,/opt/d\n')
    (tmp_path / 'etc' / 'ld.so.conf.d' / 'a.conf').write_text('include nested.conf\n')
    (tmp_path / 'etc' / 'ld.so.conf.d' / 'nested.conf').write_text('/opt/nested\n')
    assert read_ld_so_conf('/etc/ld.so.conf', str(tmp_path)) == [
        '/opt/nested', '/opt/b', '/opt/c', '/opt/d', '/opt/nested', '/opt/a']


def test_expand_dst():
    assert expand_dst('$ORIGIN/../lib', '/opt/app/bin', 62, 2) == '/opt/app/bin/../lib'
    assert expand_dst('${ORIGIN}/x:$LIB', '/o', 62, 2) == '/o/x:lib64'
    assert expand_dst('/usr/$PLATFORM', '/o', 62, 2) == '/usr/x86_64'


def test_system_dirs_multiarch_first():
    assert system_dirs(62, 2)[:2] == ['/lib/x86_64-linux-gnu', '/usr/lib/x86_64-linux-gnu']


def test_resolver_in_a_fixture_root(tmp_path):
    """The root is a parameter: a copy of ls and its libraries under a fixture tree."""
    closure = Resolver().closure('/bin/ls')
    for p in ['/bin/ls'] + [p for p, _ in closure]:
        dst = tmp_path / p.lstrip('/')
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(p), str(dst))
    got = Resolver(str(tmp_path), ld_so_conf='/etc/ld.so.conf').closure('/bin/ls')
    assert sorted(p for p, _ in got) == sorted(p for p, _ in closure if not p.startswith('/usr/local'))


def _minimal_elf64(needed, runpath=None, rpath=None, interp=None):
    """A tiny little-endian ELF64 with PT_INTERP/PT_DYNAMIC and a string table."""
    strtab = b'\0'
    offs = {}
    for s in list(needed) + [x for x in (runpath, rpath, interp) if x]:
        offs[s] = len(strtab)
        strtab += s.encode() + b'\0'
    dyn = []
    for n in needed:
        dyn.append((1, offs[n]))
    if runpath:
        dyn.append((29, offs[runpath]))
    if rpath:
        dyn.append((15, offs[rpath]))
    ehsize, phsize, nph = 64, 56, 3
    str_off = ehsize + phsize * nph
    dyn_off = str_off + len(strtab)
    dyn.append((5, str_off))  # DT_STRTAB (identity mapping vaddr == offset)
    dyn.append((0, 0))
    dynbytes = b''.join(struct.pack('<qQ', t, v) for t, v in dyn)
    total = dyn_off + len(dynbytes)
    ident = b'\x7fELF' + bytes([2, 1, 1]) + b'\0' * 9
    hdr = ident + struct.pack('<HHIQQQIHHHHHH', 3, 62, 1, 0, ehsize, 0, 0, ehsize, phsize, nph, 0, 0, 0)
    ph = struct.pack('<IIQQQQQQ', 1, 5, 0, 0, 0, total, total, 0x1000)
    ph += struct.pack('<IIQQQQQQ', 2, 6, dyn_off, dyn_off, dyn_off, len(dynbytes), len(dynbytes), 8)
    if interp:
        io = str_off + offs[interp]
        ph += struct.pack('<IIQQQQQQ', 3, 4, io, io, io, len(interp) + 1, len(interp) + 1, 1)
    else:
        ph += struct.pack('<IIQQQQQQ', 6, 4, 0, 0, 0, 0, 0, 8)  # PT_PHDR filler
    return hdr + ph + strtab + dynbytes


def test_parse_synthetic_elf():
    info = parse_elf_bytes(_minimal_elf64(['liba.so.1', 'libb.so.2'], runpath='$ORIGIN/../lib',
                                          interp='/lib64/ld-linux-x86-64.so.2'))
    assert info.needed == ['liba.so.1', 'libb.so.2']
    assert info.runpath == ['$ORIGIN/../lib'] and info.rpath == []
    assert info.interp == '/lib64/ld-linux-x86-64.so.2'
    assert info.elfclass == 2 and info.machine == 62


def test_runpath_origin_and_rpath_inheritance(tmp_path):
    """RUNPATH applies to the object only; RPATH of the executable is inherited by libraries
    that have no RUNPATH; a wrong-class candidate is skipped."""
    root = tmp_path
    (root / 'app' / 'bin').mkdir(parents=True)
    (root / 'app' / 'lib').mkdir()
    (root / 'app' / 'private').mkdir()
    (root / 'lib').mkdir()
    (root / 'etc').mkdir()
    (root / 'etc' / 'ld.so.conf').write_text('')
    (root / 'app' / 'bin' / 'exe').write_bytes(
        _minimal_elf64(['liba.so'], rpath='$ORIGIN/../lib:$ORIGIN/../private'))
    (root / 'app' / 'lib' / 'liba.so').write_bytes(_minimal_elf64(['libb.so']))
    (root / 'app' / 'private' / 'libb.so').write_bytes(_minimal_elf64([]))
    # a 32-bit impostor earlier in the path is skipped
    imp = bytearray(_minimal_elf64([]))
    imp[4] = 1
    (root / 'lib' / 'libc-impostor.so').write_bytes(bytes(imp))
    got = Resolver(str(root)).closure('/app/bin/exe')
    assert [p for p, _ in got] == ['/app/lib/liba.so', '/app/private/libb.so']
    # with RUNPATH instead, libb (needed by liba) is not searched in the executable's dirs
    (root / 'app' / 'bin' / 'exe').write_bytes(_minimal_elf64(['liba.so'], runpath='$ORIGIN/../lib'))
    with pytest.raises(BarepodError) as e:
        Resolver(str(root)).closure('/app/bin/exe')
    assert 'libb.so' in str(e.value)


@pytest.mark.skipif(shutil.which('gcc') is None, reason='gcc not installed')
def test_compiled_runpath_origin_matches_loader(tmp_path):
    src = tmp_path / 'foo.c'
    src.write_text('int foo(void){return 42;}\n')
    main = tmp_path / 'main.c'
    main.write_text('int foo(void);\nint main(void){return foo()-42;}\n')
    (tmp_path / 'lib').mkdir()
    (tmp_path / 'bin').mkdir()
    subprocess.run(['gcc', '-shared', '-fPIC', '-o', str(tmp_path / 'lib' / 'libfoo.so'), str(src)], check=True)
    for tags in ('--enable-new-dtags', '--disable-new-dtags'):
        exe = tmp_path / 'bin' / ('main' + tags[2:8])
        subprocess.run(['gcc', '-o', str(exe), str(main), '-L' + str(tmp_path / 'lib'), '-lfoo',
                        '-Wl,%s,-rpath,$ORIGIN/../lib' % tags], check=True)
        assert subprocess.run([str(exe)]).returncode == 0
        assert ours(str(exe)) == oracle(str(exe))
        assert str(tmp_path / 'lib' / 'libfoo.so') in ours(str(exe))
