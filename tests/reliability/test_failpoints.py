"""The failpoint facility itself (no root): off by default, error and kill modes, the split
iptables-restore batch."""
import os
import signal
import subprocess
import sys

import pytest

from _node import collections_root
from ansible_collections.barepod.linux.plugins.module_utils._common import (
    BarepodError, failpoint, failpoint_partial)

pytestmark = pytest.mark.reliability


def test_unset_is_a_no_op(monkeypatch):
    monkeypatch.delenv('BAREPOD_FAILPOINTS', raising=False)
    failpoint('sandbox-before-record')
    assert failpoint_partial('rules-between-tables', 'x', None) == 'x'


def test_error_mode_names_the_failpoint(monkeypatch):
    monkeypatch.setenv('BAREPOD_FAILPOINTS', 'other=kill, veth-before-address=error')
    failpoint('other-thing')
    with pytest.raises(BarepodError, match='failpoint veth-before-address'):
        failpoint('veth-before-address')


def test_kill_mode_sends_sigkill():
    code = ('from ansible_collections.barepod.linux.plugins.module_utils._common import failpoint\n'
            'failpoint("x")\nprint("survived")\n')
    env = dict(os.environ, BAREPOD_FAILPOINTS='x=kill', PYTHONPATH=collections_root())
    p = subprocess.run([sys.executable, '-c', code], env=env, stdout=subprocess.PIPE, check=False)
    assert p.returncode == -signal.SIGKILL and b'survived' not in p.stdout


def test_partial_applies_only_the_first_table(monkeypatch):
    monkeypatch.setenv('BAREPOD_FAILPOINTS', 'rules-between-tables=error')
    applied = []
    payload = '*filter\n:A - [0:0]\nCOMMIT\n*nat\n:B - [0:0]\nCOMMIT\n'
    with pytest.raises(BarepodError):
        failpoint_partial('rules-between-tables', payload, applied.append)
    assert applied == ['*filter\n:A - [0:0]\nCOMMIT\n']
