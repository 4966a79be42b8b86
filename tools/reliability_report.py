#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The `make reliability` table, from the JSON lines the tests wrote ($BAREPOD_RELIABILITY_LOG).

    python tools/reliability_report.py [LOG] [--strict] [--markdown]

Each line: {"category": "fault"|"input"|"escape"|"leak"|"timing", "item": ..., "outcome": ..., ...}
(written by the `reliability_log` fixture of tests/conftest.py). Per category:

- fault:  an item is injected when any line names it (outcome 'injected', or a test that only
          records the end result) and survived with an outcome 'survived'; 'detected' counts
          drifts that check mode reported.
- input:  tried = lines (or the sum of their `tried` counts); rejected cleanly = outcome
          'rejected' (or the sum of `rejected`); 'converged' inputs are fine too.
- escape: attempted = lines (or `attempted`), blocked = outcome 'blocked' (or `blocked`).
- leak:   before and after counts per resource, clean when equal.
- timing: shown as recorded.

--strict exits 1 when a fault was not survived, an input was neither rejected nor converged,
an escape was not blocked, or a leak count changed. With no log lines at all it exits 2.
"""
from __future__ import absolute_import, division, print_function

import json
import os
import sys
from collections import OrderedDict

OK_INPUT = ('rejected', 'converged', 'accepted')


def load(path):
    lines = []
    with open(path) as f:
        for n, raw in enumerate(f, 1):
            raw = raw.strip()
            if not raw:
                continue
            try:
                d = json.loads(raw)
            except ValueError:
                sys.stderr.write('%s:%d: not JSON, skipped\n' % (path, n))
                continue
            if isinstance(d, dict) and d.get('category') and d.get('item') is not None:
                lines.append(d)
    return lines


def _num(d, key, default):
    v = d.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else default


def summarise(lines):
    groups = OrderedDict((c, OrderedDict()) for c in ('fault', 'input', 'escape', 'leak', 'timing'))
    for d in lines:
        groups.setdefault(d['category'], OrderedDict()).setdefault(str(d['item']), []).append(d)
    out = OrderedDict()

    rows = []
    for item, ds in groups['fault'].items():
        outcomes = [d['outcome'] for d in ds]
        n_inj = max(1, outcomes.count('injected'))
        survived = min(n_inj, outcomes.count('survived'))
        detected = outcomes.count('detected')
        ok = survived >= n_inj and not any(o in ('FAILED', 'LEAKED') for o in outcomes)
        rows.append(dict(item=item, injected=n_inj, survived=survived, detected=detected, ok=ok))
    out['fault'] = rows

    def tally(ds, total_key, good):
        """(total, {outcome: n}) for one item. A line stands for `count` inputs (default 1) with
        its outcome; `<total_key>` on a line is the item's total (the largest one counts), or,
        with per-outcome fields (rejected=, converged=, blocked=), a batch summarised in one line."""
        totals, by = [], {}
        for d in ds:
            if _num(d, 'count', None) is None and any(_num(d, k, None) is not None for k in good):
                for k in good:
                    by[k] = by.get(k, 0) + _num(d, k, 0)
                totals.append(_num(d, total_key, sum(_num(d, k, 0) for k in good)))
                continue
            n = _num(d, 'count', 1)
            by[d['outcome']] = by.get(d['outcome'], 0) + n
            if _num(d, total_key, None) is not None:
                totals.append(d[total_key])
        counted = sum(by.values())
        total = max(totals + [counted]) if totals else counted
        return total, by

    rows = []
    for item, ds in groups['input'].items():
        tried, by = tally(ds, 'tried', ('rejected', 'converged'))
        rejected = by.get('rejected', 0)
        converged = sum(by.get(k, 0) for k in ('converged', 'accepted'))
        bad = [o for o in by if o not in OK_INPUT and by[o]]
        rows.append(dict(item=item, tried=tried, rejected=rejected, converged=converged,
                         ok=not bad and rejected + converged >= tried))
    out['input'] = rows

    rows = []
    for item, ds in groups['escape'].items():
        attempted, by = tally(ds, 'attempted', ('blocked',))
        blocked = by.get('blocked', 0)
        rows.append(dict(item=item, attempted=attempted, blocked=blocked, ok=blocked >= attempted))
    out['escape'] = rows

    rows = []
    for item, ds in groups['leak'].items():
        d = ds[-1]
        before, after = d.get('before'), d.get('after')
        ok = d['outcome'] == 'clean' and before == after
        rows.append(dict(item=item, before=before, after=after, cycles=d.get('cycles'), ok=ok))
    out['leak'] = rows

    rows = []
    for item, ds in groups['timing'].items():
        d = ds[-1]
        rows.append(dict(item=item, details=', '.join('%s=%s' % (k, d[k]) for k in sorted(d)
                                                      if k not in ('category', 'item', 'outcome'))))
    out['timing'] = rows
    return out


def shown(value, width=90):
    """One line: control characters escaped, long values cut."""
    text = ''.join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))
    return text if len(text) <= width else text[:width - 3] + '...'


def table(headers, rows, markdown=False):
    cells = [[shown(c) for c in headers]] + [[shown(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt_row(r):
        padded = [c.ljust(widths[n]) for n, c in enumerate(r)]
        return ('| ' + ' | '.join(padded) + ' |') if markdown else '  '.join(padded).rstrip()

    sep = ('|' + '|'.join('-' * (w + 2) for w in widths) + '|') if markdown else '  '.join('-' * w for w in widths)
    return '\n'.join([fmt_row(cells[0]), sep] + [fmt_row(r) for r in cells[1:]])


def mark(ok):
    return 'ok' if ok else 'FAIL'


def render(s, markdown=False):
    parts = []
    f = s['fault']
    parts.append('Faults injected and survived: %d/%d' % (sum(1 for r in f if r['ok']), len(f)))
    if f:
        parts.append(table(['fault', 'injected', 'survived', 'detected', ''],
                           [[r['item'], r['injected'], r['survived'], r['detected'] or '', mark(r['ok'])] for r in f],
                           markdown))
    i = s['input']
    parts.append('\nInputs tried and rejected cleanly (or converged): %d tried, %d rejected, %d converged'
                 % (sum(r['tried'] for r in i), sum(r['rejected'] for r in i), sum(r['converged'] for r in i)))
    if i:
        parts.append(table(['input', 'tried', 'rejected', 'converged', ''],
                           [[r['item'], r['tried'], r['rejected'], r['converged'], mark(r['ok'])] for r in i], markdown))
    e = s['escape']
    parts.append('\nEscapes attempted and blocked: %d/%d' % (sum(r['blocked'] for r in e), sum(r['attempted'] for r in e)))
    if e:
        parts.append(table(['escape', 'attempted', 'blocked', ''],
                           [[r['item'], r['attempted'], r['blocked'], mark(r['ok'])] for r in e], markdown))
    lk = s['leak']
    parts.append('\nLeak counts before and after: %d/%d resources back to the baseline'
                 % (sum(1 for r in lk if r['ok']), len(lk)))
    if lk:
        parts.append(table(['resource', 'before', 'after', 'cycles', ''],
                           [[r['item'], r['before'], r['after'], r['cycles'] or '', mark(r['ok'])] for r in lk],
                           markdown))
    t = s['timing']
    if t:
        parts.append('\nTimings')
        parts.append(table(['what', 'figures'], [[r['item'], r['details']] for r in t], markdown))
    return '\n'.join(parts) + '\n'


def failed(s):
    return [(cat, r['item']) for cat in ('fault', 'input', 'escape', 'leak') for r in s[cat] if not r['ok']]


def main(argv):
    args = [a for a in argv if not a.startswith('--')]
    path = args[0] if args else os.environ.get('BAREPOD_RELIABILITY_LOG')
    if not path:
        sys.stderr.write('usage: reliability_report.py LOG (or set BAREPOD_RELIABILITY_LOG)\n')
        return 2
    if not os.path.exists(path):
        sys.stderr.write('%s: no such file (did the reliability tests run with BAREPOD_RELIABILITY_LOG set?)\n' % path)
        return 2
    lines = load(path)
    s = summarise(lines)
    sys.stdout.write(render(s, markdown='--markdown' in argv))
    if not lines:
        return 2
    bad = failed(s)
    if bad:
        sys.stdout.write('\nNot survived / not blocked / leaked: %s\n' % ', '.join('%s: %s' % b for b in bad))
    return 1 if bad and '--strict' in argv else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
