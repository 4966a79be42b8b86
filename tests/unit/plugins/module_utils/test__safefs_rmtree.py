"""_safefs.rmtree_at on Pythons before 3.11 (no shutil.rmtree(dir_fd=)): the hand-written walk
removes the tree and follows no symlink (issue 17, item 2; found running chroot_rootfs on 3.9)."""

import os

from ansible_collections.barepod.linux.plugins.module_utils import _safefs


def test_by_hand_removes_the_tree_and_never_follows_symlinks(tmp_path):
    outside = tmp_path / 'outside'
    (outside / 'sub').mkdir(parents=True)
    (outside / 'keep').write_text('x')
    root = tmp_path / 'root'
    (root / 't' / 'a' / 'b').mkdir(parents=True)
    (root / 't' / 'a' / 'f').write_text('y')
    os.symlink(str(outside), str(root / 't' / 'a' / 'link'))
    os.symlink(str(outside / 'sub'), str(root / 't' / 'dirlink'))
    os.mkfifo(str(root / 't' / 'fifo'))
    fd = os.open(str(root), os.O_RDONLY | os.O_DIRECTORY)
    try:
        _safefs._rmtree_at_by_hand(fd, 't')
    finally:
        os.close(fd)
    assert os.listdir(str(root)) == []
    assert sorted(os.listdir(str(outside))) == ['keep', 'sub']


def test_a_symlink_named_as_the_tree_is_refused(tmp_path):
    (tmp_path / 'real').mkdir()
    (tmp_path / 'real' / 'keep').write_text('x')
    os.symlink(str(tmp_path / 'real'), str(tmp_path / 'link'))
    fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            _safefs._rmtree_at_by_hand(fd, 'link')
            raise AssertionError('followed a symlink')
        except OSError:
            pass
    finally:
        os.close(fd)
    assert os.listdir(str(tmp_path / 'real')) == ['keep']
