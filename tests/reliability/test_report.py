"""tools/reliability_report.py turns the evidence lines into the table (no root)."""
import json
import os
import subprocess
import sys

from _node import REPO

TOOL = os.path.join(REPO, 'tools', 'reliability_report.py')
LINES = [
    dict(category='fault', item='kill -9 at x', outcome='injected'),
    dict(category='fault', item='kill -9 at x', outcome='survived', leaks=0),
    dict(category='fault', item='drift: veth', outcome='detected'),
    dict(category='fault', item='drift: veth', outcome='survived'),
    dict(category='fault', item='broken', outcome='injected'),
    dict(category='input', item='pod manifests (hypothesis)', outcome='rejected', tried=200, rejected=150, converged=50),
    dict(category='input', item='name with newline', outcome='rejected'),
    dict(category='escape', item='chroot escape', outcome='blocked'),
    dict(category='leak', item='veths', outcome='clean', before=2, after=2, cycles=100),
    dict(category='leak', item='open fds of pause', outcome='LEAKED', before=3, after=4, cycles=100),
    dict(category='timing', item='soak cycle', outcome='measured', median_s=1.5),
]


def run(tmp_path, *args, lines=None):
    lines = LINES if lines is None else lines
    log = tmp_path / 'rel.jsonl'
    log.write_text(''.join(json.dumps(d) + '\n' for d in lines) + 'garbage\n')
    return subprocess.run([sys.executable, TOOL, str(log)] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=False, universal_newlines=True)


def test_table(tmp_path):
    p = run(tmp_path)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert 'Faults injected and survived: 2/3' in out
    assert 'Inputs tried and rejected cleanly (or converged): 201 tried, 151 rejected, 50 converged' in out
    assert 'Escapes attempted and blocked: 1/1' in out
    assert 'Leak counts before and after: 1/2 resources back to the baseline' in out
    assert 'fault: broken' in out and 'leak: open fds of pause' in out
    assert 'median_s=1.5' in out


def test_strict_and_markdown(tmp_path):
    assert run(tmp_path, '--strict').returncode == 1
    ok = [d for d in LINES if d['item'] not in ('broken', 'open fds of pause')]
    p = run(tmp_path, '--strict', '--markdown', lines=ok)
    assert p.returncode == 0 and '| kill -9 at x' in p.stdout


def test_empty_log_is_an_error(tmp_path):
    assert run(tmp_path, lines=[]).returncode == 2


def test_per_outcome_count_lines(tmp_path):
    """Part 2's shape: one line per outcome with `count`, the item's total in `tried`; control
    characters in item names are shown escaped on one line."""
    lines = [dict(category='input', item='pods', outcome='rejected', count=135, tried=200),
             dict(category='input', item='pods', outcome='converged', count=65, tried=200),
             dict(category='input', item='name "a\nb"', outcome='rejected'),
             dict(category='escape', item='chroot', outcome='blocked', count=3, attempted=3)]
    p = run(tmp_path, '--strict', lines=lines)
    assert p.returncode == 0, p.stdout
    assert '201 tried, 136 rejected, 65 converged' in p.stdout
    assert 'name "a\\nb"' in p.stdout and 'Escapes attempted and blocked: 3/3' in p.stdout
