# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image config applied as kubelet + containerd apply it."""

import os
import signal

import pytest

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
from ansible_collections.barepod.linux.plugins.module_utils import _imageconfig as ic

NGINX = dict(Entrypoint=['/docker-entrypoint.sh'], Cmd=['nginx', '-g', 'daemon off;'], StopSignal='SIGQUIT',
             Env=['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'NGINX_VERSION=1.27.0'])


# the table of kubernetes.io "Define a Command and Arguments for a Container", notes section
@pytest.mark.parametrize('entrypoint,cmd,command,args,argv', [
    (['/ep-1'], ['foo', 'bar'], None, None, ['/ep-1', 'foo', 'bar']),
    (['/ep-1'], ['foo', 'bar'], ['/ep-2'], None, ['/ep-2']),
    (['/ep-1'], ['foo', 'bar'], None, ['zoo', 'boo'], ['/ep-1', 'zoo', 'boo']),
    (['/ep-1'], ['foo', 'bar'], ['/ep-2'], ['zoo', 'boo'], ['/ep-2', 'zoo', 'boo']),
    (None, ['sh'], None, None, ['sh']),
    (None, ['sh'], None, ['-c', 'true'], ['-c', 'true']),
])
def test_four_cases(entrypoint, cmd, command, args, argv):
    assert ic.process_args(dict(Entrypoint=entrypoint, Cmd=cmd), command, args) == argv


def test_no_command_refused():
    with pytest.raises(BarepodError, match='no command specified'):
        ic.process_args({}, [], [])


def test_expansion():
    env = dict(MESSAGE='hello world', X='1')
    assert ic.process_args({}, ['echo', '$(MESSAGE)'], ['$(X)$(UNSET)', '$$(X)', 'a$b', '$(X'], env) == \
        ['echo', 'hello world', '1$(UNSET)', '$(X)', 'a$b', '$(X']


def test_env_merge():
    env = ic.merge_env(NGINX['Env'], [dict(name='NGINX_VERSION', value='x'), dict(name='A', value='b'), 'C=d'], hostname='web')
    assert env == ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'HOSTNAME=web',
                   'NGINX_VERSION=x', 'A=b', 'C=d']
    assert ic.merge_env(['PATH=/bin', 'K=v'], ['PATH=/x']) == ['PATH=/x', 'K=v']
    assert ic.replace_or_append_env(['A=1', 'B=2'], ['A', 'C=3']) == ['B=2', 'C=3']


def test_working_dir():
    assert ic.working_dir({'WorkingDir': '/usr/share/nginx'}) == '/usr/share/nginx'
    assert ic.working_dir({'WorkingDir': '/a'}, '/b') == '/b'
    assert ic.working_dir({}) == '/'
    with pytest.raises(BarepodError):
        ic.working_dir({}, 'rel')


@pytest.fixture
def rootfs(tmp_path):
    etc = tmp_path / 'etc'
    etc.mkdir()
    (etc / 'passwd').write_text('root:x:0:0:root:/root:/bin/sh\nnginx:x:101:101:nginx:/nonexistent:/bin/false\n'
                                'app:x:1000:1000::/home/app:/bin/sh\nbroken line\n')
    (etc / 'group').write_text('root:x:0:\nnginx:x:101:\napp:x:1000:\nwheel:x:10:app,other\naudio:x:29:app\n')
    return str(tmp_path)


@pytest.mark.parametrize('user,want', [
    ('', (0, 0, [])),
    ('nginx', (101, 101, [])),
    ('app', (1000, 1000, [10, 29])),
    ('1000', (1000, 1000, [10, 29])),
    ('4242', (4242, 0, [])),
    ('1000:29', (1000, 29, [10, 29])),
    ('app:nginx', (1000, 101, [10, 29])),
    ('4242:wheel', (4242, 10, [])),
])
def test_resolve_user(rootfs, user, want):
    assert ic.resolve_user(rootfs, user) == want


def test_run_as_user_overrides(rootfs):
    assert ic.resolve_user(rootfs, 'nginx', run_as_user=1000) == (1000, 1000, [10, 29])
    assert ic.resolve_user(rootfs, 'nginx', run_as_user=1000, run_as_group=5, supplemental_groups=[7]) == (1000, 5, [10, 29, 7])


def test_unknown_user_or_group(rootfs):
    with pytest.raises(BarepodError, match='unable to find user nobody: no matching entries in passwd file'):
        ic.resolve_user(rootfs, 'nobody')
    with pytest.raises(BarepodError, match='unable to find group staff: no matching entries in group file'):
        ic.resolve_user(rootfs, 'app:staff')


def test_passwd_symlink_stays_inside(tmp_path):
    host = tmp_path / 'host'
    host.mkdir()
    (host / 'passwd').write_text('evil:x:0:0::/:/bin/sh\n')
    root = tmp_path / 'root'
    (root / 'etc').mkdir(parents=True)
    os.symlink(str(host / 'passwd'), str(root / 'etc' / 'passwd'))
    # the absolute link resolves inside the root (where there is no such file), never on the host
    with pytest.raises(BarepodError, match='unable to find user evil'):
        ic.resolve_user(str(root), 'evil')


@pytest.mark.parametrize('user,run_as,msg', [
    ('', None, 'container has runAsNonRoot and image will run as root'),
    ('0', None, 'container has runAsNonRoot and image will run as root'),
    ('nginx', None, 'container has runAsNonRoot and image has non-numeric user (nginx), cannot verify user is non-root'),
    ('101', None, None),
    ('nginx', 101, None),
    ('101', 0, "container's runAsUser breaks non-root policy"),
])
def test_run_as_non_root(user, run_as, msg):
    assert ic.check_run_as_non_root(user, run_as, True) == msg
    assert ic.check_run_as_non_root(user, run_as, False) is None


@pytest.mark.parametrize('value,num', [
    ('SIGQUIT', signal.SIGQUIT), ('QUIT', signal.SIGQUIT), ('sigquit', signal.SIGQUIT), ('3', 3),
    ('SIGRTMIN+3', signal.SIGRTMIN + 3), ('SIGKILL', 9),
])
def test_stop_signal(value, num):
    assert ic.stop_signal({'StopSignal': value}) == num


def test_stop_signal_default_and_bad():
    assert ic.stop_signal({}) == signal.SIGTERM
    assert ic.stop_signal(NGINX, 'SIGUSR1') == signal.SIGUSR1
    for bad in ('SIGNOPE', '0', '999', 'SIG_DFL'):
        with pytest.raises(BarepodError):
            ic.stop_signal({'StopSignal': bad})
