"""Fixtures of the reliability tests (issue 7): a throwaway node, and the in-process driver.

Every test here is marked `reliability` (run by `make reliability`); the ones that need root
are skipped without it. All work happens inside a node network namespace, tmp state roots and
a uniquely named cgroup parent, and is removed even when a test fails.
"""
import json
import os
import subprocess
import sys
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _node import Node, collections_root  # noqa: E402

NO_ROOT = ('test_failpoints.py', 'test_report.py', 'test_sandbox_orphans.py', 'test_hostile_input.py')


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = str(item.fspath)
        if not path.startswith(HERE + os.sep):
            continue
        item.add_marker(pytest.mark.reliability)
        if os.geteuid() != 0 and os.path.basename(path) not in NO_ROOT:
            item.add_marker(pytest.mark.skip(reason='needs root (reliability test)'))


@pytest.fixture
def node(tmp_path):
    with Node(str(tmp_path)) as n:
        yield n


def run_worker(node, op, manifests, timeout=900, failpoints=None, env_extra=None, vars_=None, **cfg):
    """Run _worker.py inside the node's netns; -> its JSON result ({failed, msg} on a BarepodError)."""
    config = dict(cfg, op=op, vars=dict(node.vars, **(vars_ or {})), manifests=manifests,
                  collections_root=collections_root())
    path = os.path.join(node.tmp, 'worker-%s.json' % uuid.uuid4().hex[:6])
    with open(path, 'w') as f:
        json.dump(config, f)
    env = node.env(failpoints)
    env['PYTHONPATH'] = collections_root()
    env.update(env_extra or {})
    p = subprocess.run(['nsenter', '--net=/run/netns/' + node.netns, sys.executable, os.path.join(HERE, '_worker.py'),
                        path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=timeout, check=False,
                       stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise AssertionError('worker %s failed (rc=%d): %s' % (op, p.returncode, p.stderr.decode(errors='replace')[-4000:]))
    return json.loads(p.stdout.decode().strip().splitlines()[-1])


@pytest.fixture
def worker():
    return run_worker
