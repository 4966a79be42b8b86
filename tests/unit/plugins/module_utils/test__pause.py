"""The pause process: both C variants build, start, and exit 0 on SIGTERM; the cache is
keyed by the source hash; impl selection and its errors. No root needed."""
import os
import shutil
import subprocess

import pytest

from ansible_collections.barepod.linux.plugins.module_utils import _pause
from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError

needs_cc = pytest.mark.skipif(not _pause.find_compiler(), reason='no C compiler')


@needs_cc
def test_compile_is_cached_and_behaves(tmp_path):
    d = str(tmp_path / 'pause')
    path = _pause.compile_pause(d)
    assert os.path.basename(path) == 'pause-%s' % _pause.source_hash()
    assert _pause.check_binary(path) is None
    mtime = os.stat(path).st_mtime_ns
    assert _pause.compile_pause(d) == path and os.stat(path).st_mtime_ns == mtime
    assert os.listdir(d) == [os.path.basename(path)]  # no build leftovers


@needs_cc
def test_stale_binaries_are_pruned(tmp_path):
    d = tmp_path / 'pause'
    d.mkdir()
    (d / 'pause-000000000000').write_text('old')
    _pause.compile_pause(str(d))
    assert os.listdir(str(d)) == ['pause-%s' % _pause.source_hash()]


@needs_cc
def test_libc_variant_builds_and_behaves(tmp_path):
    src = tmp_path / 'p.c'
    src.write_text(_pause.PAUSE_C)
    out = str(tmp_path / 'p')
    subprocess.run([_pause.find_compiler(), '-static', '-Os', '-s', '-o', out, str(src)], check=True)
    assert _pause.check_binary(out) is None


def test_check_binary_reports_misbehaviour(tmp_path):
    assert 'exited at once' in _pause.check_binary(shutil.which('true'))
    assert 'cannot run' in _pause.check_binary(str(tmp_path / 'missing'))


def test_busybox_fallback_and_bad_impl(tmp_path):
    if _pause.find_busybox():
        impl, argv = _pause.pause_argv('busybox', str(tmp_path))
        assert impl == 'busybox' and argv[1:3] == ['sh', '-c']
    with pytest.raises(BarepodError) as e:
        _pause.pause_argv('python', str(tmp_path))
    assert 'pause' in e.value.msg
