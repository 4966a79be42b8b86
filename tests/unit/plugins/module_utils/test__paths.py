import os

import pytest

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
from ansible_collections.barepod.linux.plugins.module_utils._paths import (
    secure_join, is_within, normalise_abs, check_real_within)


@pytest.fixture
def root(tmp_path):
    r = tmp_path / 'root'
    (r / 'usr' / 'bin').mkdir(parents=True)
    (r / 'etc').mkdir()
    os.symlink('/', str(r / 'evil_abs'))
    os.symlink('../../../..', str(r / 'usr' / 'evil_rel'))
    os.symlink('usr/bin', str(r / 'bin'))
    os.symlink('/usr/bin', str(r / 'sbin'))
    os.symlink('loop2', str(r / 'loop1'))
    os.symlink('loop1', str(r / 'loop2'))
    return str(r)


@pytest.mark.parametrize('unsafe,expect', [
    ('/', ''),
    ('etc/passwd', 'etc/passwd'),
    ('../../../etc/passwd', 'etc/passwd'),
    ('/evil_abs/etc/shadow', 'etc/shadow'),
    ('usr/evil_rel/etc', 'etc'),
    ('bin/sh', 'usr/bin/sh'),
    ('sbin/sh', 'usr/bin/sh'),
    ('usr/./bin/../bin/x', 'usr/bin/x'),
    ('missing/../../x', 'x'),
])
def test_secure_join_stays_inside(root, unsafe, expect):
    got = secure_join(root, unsafe)
    assert got == os.path.join(root, expect) if expect else got == root
    assert is_within(root, got)


def test_symlink_loop_is_an_error(root):
    with pytest.raises(BarepodError, match='symbolic links'):
        secure_join(root, 'loop1/x')


def test_nul_rejected(root):
    with pytest.raises(BarepodError):
        secure_join(root, 'a\x00b')


def test_is_within():
    assert is_within('/a/b', '/a/b/c')
    assert is_within('/a/b', '/a/b')
    assert not is_within('/a/b', '/a/bc')
    assert not is_within('/a/b', '/a')


def test_normalise_abs():
    assert normalise_abs('p', '/tmp//x/') == '/tmp/x'
    for bad in ('tmp', '/a/../b', '', '/a\x00'):
        with pytest.raises(BarepodError, match='p'):
            normalise_abs('p', bad)


def test_check_real_within(root, tmp_path):
    assert check_real_within(root, os.path.join(root, 'etc'))
    with pytest.raises(BarepodError, match='outside'):
        check_real_within(root, os.path.join(root, 'evil_abs'))
