import os

import pytest

from ansible_collections.barepod.linux.plugins.module_utils import _common as c


@pytest.mark.parametrize('value', ['a', 'web-1', 'x' * 63, '0abc'])
def test_dns_label_ok(value):
    assert c.validate_dns_label('name', value) == value


@pytest.mark.parametrize('value', ['', 'A', 'a/b', '..', 'a;b', '-a', 'a-', 'x' * 64, 'a b', 'a\nb', None, 'ü'])
def test_dns_label_rejected_names_field(value):
    with pytest.raises(c.BarepodError) as e:
        c.validate_dns_label('containers[0].name', value)
    assert 'containers[0].name' in str(e.value)
    assert e.value.field == 'containers[0].name'


@pytest.mark.parametrize('value', ['core-dns.kube-system', 'a.b.c'])
def test_dns_subdomain_ok(value):
    assert c.validate_dns_subdomain('name', value) == value


@pytest.mark.parametrize('value', ['a..b', '.a', 'a/../b', '$(reboot)', 'a' * 254])
def test_dns_subdomain_rejected(value):
    with pytest.raises(c.BarepodError):
        c.validate_dns_subdomain('name', value)


@pytest.mark.parametrize('value,ok', [('eth0', True), ('x' * 15, True), ('x' * 16, False), ('a/b', False),
                                      ('a b', False), ('', False), ('..', False)])
def test_ifname(value, ok):
    if ok:
        assert c.validate_ifname('ifname', value) == value
    else:
        with pytest.raises(c.BarepodError, match='ifname'):
            c.validate_ifname('ifname', value)


def test_actions_check_mode_runs_nothing():
    ran = []
    a = c.Actions(check_mode=True)
    a.add('create', '/x', lambda: ran.append(1), detail='y')
    assert bool(a) and len(a) == 1
    assert a.run() == [{'action': 'create', 'target': '/x', 'detail': 'y'}]
    assert ran == []


def test_actions_run_in_order():
    ran = []
    a = c.Actions()
    a.add('one', 'a', lambda: ran.append(1))
    a.add('two', 'b', lambda: ran.append(2))
    a.run()
    assert ran == [1, 2]
    assert not c.Actions()


def test_write_if_changed_zero_writes_when_equal(tmp_path):
    p = str(tmp_path / 'f')
    assert c.write_if_changed(p, 'hello\n') is True
    st = os.stat(p)
    assert c.write_if_changed(p, 'hello\n') is False
    assert os.stat(p).st_ino == st.st_ino  # not replaced
    assert c.write_if_changed(p, 'hello\n', mode=0o600) is True
    assert os.stat(p).st_mode & 0o777 == 0o600
    assert c.write_if_changed(p, b'other') is True
    assert open(p).read() == 'other'
    assert [n for n in os.listdir(str(tmp_path)) if n.startswith('.barepod-')] == []


def test_pid_alive_and_starttime():
    me = os.getpid()
    st = c.pid_starttime(me)
    assert c.pid_alive(me)
    assert c.pid_alive(me, st)
    assert not c.pid_alive(me, st + 1)
    assert not c.pid_alive(0)
    assert not c.pid_alive(2 ** 22 + 7)


def test_makedirs_when_another_run_creates_it_between_the_check_and_the_mkdir(tmp_path, monkeypatch):
    """Parallel kube_svc_rules runs made the same state directory: the loser of the race got
    FileExistsError ('[Errno 17] File exists') instead of finding the directory there."""
    from ansible_collections.barepod.linux.plugins.module_utils import _common
    target = tmp_path / 'state'
    real_isdir = os.path.isdir
    calls = []

    def isdir_racing(path):
        if path == str(target) and not calls:
            calls.append(path)
            os.mkdir(path)  # the other run wins right after our check
            return False
        return real_isdir(path)

    monkeypatch.setattr(_common.os.path, 'isdir', isdir_racing)
    assert _common.makedirs(str(target)) is False
    assert real_isdir(str(target))
    (tmp_path / 'file').write_text('x')
    with pytest.raises(FileExistsError):
        _common.makedirs(str(tmp_path / 'file'))
