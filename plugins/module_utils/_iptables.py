# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""iptables plumbing for rule sets that own a family of chains.

- Backend detection, nft vs legacy, the way kube-proxy's iptables-wrapper does it: a hint
  chain kubelet leaves in the mangle table (KUBE-IPTABLES-HINT / KUBE-KUBELET-CANARY) wins;
  otherwise the backend holding more rules (legacy when it has at least 10, and on a tie).
  Legacy tables are only read when /proc/net/ip{,6}_tables_names list some (never created).
- iptables-save parsing into table -> chain -> rules (one save of all tables per run).
- Planning a partial sync: only chains whose rules differ are written; owned chains that are
  no longer wanted are flushed and deleted (-X) in the same batch; jump rules from built-in
  chains are inserted when missing and deleted when they point at a chain being removed;
  chains not owned are never touched. Nothing to do -> no payload, no restore.
- Applying the payload with one `iptables-restore -w 5 --noflush --counters` (one batch per
  table, each committed atomically by the kernel/xtables).

Every binary is a parameter, so tests pick a backend or wrap the binaries in counting shims.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import subprocess
import tempfile
import threading

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError, failpoint_partial

HINT_CHAINS = ('KUBE-IPTABLES-HINT', 'KUBE-KUBELET-CANARY')
LEGACY_RULES_THRESHOLD = 10
WAIT_SECONDS = 5
F_SETPIPE_SZ = getattr(fcntl, 'F_SETPIPE_SZ', 1031)
BUILTIN = {
    'filter': ('INPUT', 'FORWARD', 'OUTPUT'),
    'nat': ('PREROUTING', 'INPUT', 'OUTPUT', 'POSTROUTING'),
    'mangle': ('PREROUTING', 'INPUT', 'FORWARD', 'OUTPUT', 'POSTROUTING'),
    'raw': ('PREROUTING', 'OUTPUT'),
}
_FAILED_LINE_RE = re.compile(r'line (\d+) failed|Error occurred at line: (\d+)|line (\d+):')


def _popen(argv, **kw):
    try:
        return subprocess.Popen(argv, **kw)
    except OSError as e:
        raise BarepodError('cannot run %s: %s' % (argv[0], e), field='iptables', value=argv[0])


def _run(argv, input_text=None, check=False):
    try:
        p = subprocess.run(argv, input=input_text, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, check=False)
    except OSError as e:
        raise BarepodError('cannot run %s: %s' % (argv[0], e), field='iptables', value=argv[0])
    if check and p.returncode != 0:
        raise BarepodError('%s failed (exit %d): %s' % (' '.join(argv), p.returncode, p.stderr.strip()),
                           field='iptables', value=argv[0])
    return p


def count_rules(text):
    return sum(1 for line in text.splitlines() if line.startswith('-'))


def legacy_table_names(proc_net='/proc/net'):
    """{'ip': [...], 'ip6': [...]}: the iptables-legacy (x_tables) tables that exist in this
    network namespace, read from /proc/net/ip{,6}_tables_names. A missing file (x_tables not
    loaded) means no table; None when /proc/net itself cannot be read (then ask the binaries)."""
    if not os.path.isdir(proc_net):
        return None
    out = {}
    for fam, fname in (('ip', 'ip_tables_names'), ('ip6', 'ip6_tables_names')):
        try:
            with open(os.path.join(proc_net, fname), 'r') as f:
                out[fam] = f.read().split()
        except (IOError, OSError):
            out[fam] = []
    return out


def detect_backend(runner=None, proc_net='/proc/net'):
    """-> (mode, reason): what kube-proxy's iptables-wrapper would pick on this host.

    Like the wrapper, iptables-legacy-save is never asked for one table (``-t mangle`` would
    make the kernel create that table in a namespace that never had it, and iptables-nft would
    then warn "iptables-legacy tables present"); unlike it, the legacy binaries are not run at
    all when /proc/net/ip{,6}_tables_names say that no legacy table exists."""
    runner = runner or (lambda argv: _run(argv).stdout)

    def save(argv):
        try:
            return runner(argv) or ''
        except BarepodError:
            return ''
    for fam in ('iptables', 'ip6tables'):
        out = save(['%s-nft-save' % fam, '-t', 'mangle'])
        for hint in HINT_CHAINS:
            if '\n:%s ' % hint in '\n' + out:
                return 'nft', '%s chain found in %s-nft' % (hint, fam)
    names = legacy_table_names(proc_net)
    legacy = 0
    for fam, key in (('iptables', 'ip'), ('ip6tables', 'ip6')):
        if names is not None and not names.get(key):
            continue
        out = save(['%s-legacy-save' % fam])
        for hint in HINT_CHAINS:
            if '\n:%s ' % hint in '\n' + out:
                return 'legacy', '%s chain found in %s-legacy' % (hint, fam)
        legacy += count_rules(out)
    if legacy >= LEGACY_RULES_THRESHOLD:
        return 'legacy', 'iptables-legacy holds %d rules' % legacy
    nft = sum(count_rules(save(['%s-nft-save' % fam])) for fam in ('iptables', 'ip6tables'))
    if legacy >= nft:
        return 'legacy', 'iptables-legacy holds %d rules, iptables-nft %d' % (legacy, nft)
    return 'nft', 'iptables-nft holds %d rules, iptables-legacy %d' % (nft, legacy)


class Backend(object):
    """The save/restore pair of one backend (or explicit binaries, e.g. test shims)."""

    def __init__(self, mode='auto', save=None, restore=None, runner=None, iptables=None, proc_net='/proc/net'):
        if mode not in ('auto', 'nft', 'legacy'):
            raise BarepodError('must be auto, nft or legacy, got %r' % (mode,), field='backend', value=mode)
        self.reason = 'chosen by the backend option'
        if mode == 'auto':
            mode, self.reason = detect_backend(runner, proc_net)
        self.mode = mode
        self.save_cmd = save or 'iptables-%s-save' % mode
        self.restore_cmd = restore or 'iptables-%s-restore' % mode
        self.iptables_cmd = iptables or 'iptables-%s' % mode
        self.restores = 0

    @classmethod
    def system(cls, save='iptables-save', restore='iptables-restore', iptables='iptables'):
        """The binaries the host's plain iptables names select (its alternatives), with no detection:
        what the CNI plugins use (go-iptables runs `iptables` from PATH), so veth_net's masquerade
        rules land where the bridge plugin's would."""
        b = cls('nft', save=save, restore=restore, iptables=iptables)
        b.mode, b.reason = 'system', 'the iptables binaries on PATH, as the CNI plugins use them'
        return b

    def list_chain(self, table, chain):
        """`iptables -S chain` of one table (cheap: no dump of the big tables), '' if absent."""
        p = _run([self.iptables_cmd, '-w', str(WAIT_SECONDS), '-t', table, '-S', chain])
        return p.stdout if p.returncode == 0 else ''

    def save(self, table=None):
        return self.collect_save(self.start_save(table))

    def restore_argv(self):
        return [self.restore_cmd, '-w', str(WAIT_SECONDS), '--noflush', '--counters']

    def restore(self, payload):
        argv = self.restore_argv()
        payload = failpoint_partial('rules-between-tables', payload, lambda first: _run(argv, input_text=first))
        p = _run(argv, input_text=payload)
        self.restores += 1
        if p.returncode != 0:
            self.restore_failed(payload, p.stderr)

    def restore_failed(self, payload, stderr):
        raise BarepodError('iptables-restore failed, nothing was changed (each table is committed '
                           'atomically): %s%s' % (stderr.strip(), context_of_error(payload, stderr)),
                           field='iptables', value=self.restore_cmd)

    def start_save(self, table=None):
        """iptables-save (of every table by default), started now and read with collect_save(),
        so that it can run while this process validates its input."""
        argv = [self.save_cmd] + (['-t', table] if table else [])
        return _popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)

    def collect_save(self, proc):
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise BarepodError('%s failed (exit %d): %s' % (' '.join(proc.args), proc.returncode, err.strip()),
                               field='iptables', value=self.save_cmd)
        return out

    def stream(self):
        """A RestoreStream into this backend's iptables-restore (counted as one restore)."""
        self.restores += 1
        return RestoreStream(self)


class RestoreStream(object):
    """One iptables-restore fed while the batch is still being produced.

    A first sync of a big rule set spends as long rendering as iptables-restore spends parsing
    (iptables-legacy-restore parses ~110,000 rules of 10,000 Services in ~0.5 s, then commits):
    the chain declarations go out as the rules are rendered, the rules as they are formatted,
    so both run at once. A thread does the writing (the pipe blocks while the restore catches
    up); nothing is committed before the caller writes a table's COMMIT, and abort() kills the
    restore before that (the kernel's tables stay as they were).
    """

    CHUNK = 1 << 16

    def __init__(self, backend):
        self.backend = backend
        argv = backend.restore_argv()
        # stderr into a file, not a pipe: nobody reads it before the end, and a restore that
        # fills a pipe with messages would block while we block writing its input
        self._err = tempfile.TemporaryFile()
        try:
            self.proc = _popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._err)
        except BarepodError:
            self._err.close()
            raise
        try:
            # a big pipe: each time the writer thread gets the interpreter it moves up to 1 MiB,
            # so the restore does not wait on this process's GIL while it renders
            fcntl.fcntl(self.proc.stdin.fileno(), F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass   # above /proc/sys/fs/pipe-max-size: the default 64 KiB works, only slower
        self.parts = []      # everything written, for the result and error context
        self._pending = []
        self._size = 0
        self._ready = threading.Condition()
        self._queue = []
        self._closed = False
        self.broken = False
        self._thread = threading.Thread(target=self._pump, name='iptables-restore-writer')
        self._thread.daemon = True
        self._thread.start()

    def _pump(self):
        fd = self.proc.stdin.fileno()
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                chunks, self._queue = self._queue, []
                closed = self._closed
            # everything queued in one write: the thread needs the interpreter lock again only
            # when the write returns, which (while the main thread renders) takes up to a
            # switch interval - once per batch, not once per chunk
            data = memoryview(b''.join(chunks))
            while data and not self.broken:
                try:
                    data = data[os.write(fd, data):]
                except (BrokenPipeError, OSError):
                    self.broken = True   # it exited early: its exit status and stderr say why
            if closed:
                with self._ready:
                    if not self._queue:
                        break
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            self.broken = True

    def write(self, text):
        self.parts.append(text)
        self._pending.append(text)
        self._size += len(text)
        if self._size >= self.CHUNK:
            self.flush()

    def flush(self):
        if not self._pending:
            return
        chunk = ''.join(self._pending).encode('utf-8')
        self._pending, self._size = [], 0
        with self._ready:
            self._queue.append(chunk)
            self._ready.notify()

    def text(self):
        return ''.join(self.parts)

    def finish(self):
        """Close the input, wait for the restore; raise (with context) when it failed."""
        self.flush()
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join()
        rc = self.proc.wait()
        self._err.seek(0)
        err = self._err.read().decode('utf-8', 'replace')
        self._err.close()
        if rc != 0:
            self.backend.restore_failed(self.text(), err)

    def abort(self):
        """Kill the restore before it reads a COMMIT it has not been given."""
        try:
            self.proc.kill()
        except OSError:
            pass
        with self._ready:
            self._closed = True
            self._queue = []
            self._ready.notify()
        self._thread.join()
        self.proc.wait()
        self._err.close()


def context_of_error(payload, stderr):
    m = _FAILED_LINE_RE.search(stderr or '')
    if not m:
        return ''
    n = int(next(g for g in m.groups() if g))
    lines = payload.splitlines()
    lo, hi = max(0, n - 3), min(len(lines), n + 2)
    return '; payload lines %d-%d: %s' % (lo + 1, hi, ' | '.join(lines[lo:hi]))


class Table(object):
    __slots__ = ('name', 'chains', 'rules')

    def __init__(self, name):
        self.name = name
        self.chains = {}   # name -> policy ('-' for user chains)
        self.rules = {}    # name -> [rule text after "-A <chain> "]


def parse_save(text, tables=None):
    """iptables-save output -> {table: Table}. Only `tables` when given."""
    out = {}
    cur = None
    for line in text.splitlines():
        if not line:
            continue
        c = line[0]
        if c == '-':
            if cur is not None and line.startswith('-A '):
                sp = line.find(' ', 3)
                if sp < 0:
                    chain, rule = line[3:], ''
                else:
                    chain, rule = line[3:sp], line[sp + 1:]
                lst = cur.rules.get(chain)
                if lst is None:
                    lst = cur.rules[chain] = []
                lst.append(rule)
        elif c == ':':
            if cur is not None:
                parts = line[1:].split(' ')
                cur.chains[parts[0]] = parts[1] if len(parts) > 1 else '-'
                cur.rules.setdefault(parts[0], [])
        elif c == '*':
            name = line[1:].strip()
            if tables is None or name in tables:
                cur = out[name] = Table(name)
            else:
                cur = None
        elif line == 'COMMIT':
            cur = None
    return out


def rule_target(rule):
    """The -j/-g target of a rule in iptables-save form, or None."""
    i = rule.rfind(' -j ')
    if i < 0:
        if rule.startswith('-j '):
            i = -1
        else:
            i = rule.rfind(' -g ')
            if i < 0:
                return None
    rest = rule[i + 4:]
    return rest.split(' ', 1)[0]


class SyncPlan(object):
    def __init__(self):
        self.added = []
        self.changed = []
        self.removed = []
        self.jumps_added = []
        self.jumps_removed = []
        self.payload = ''
        self.before = {}
        self.after = {}

    def __bool__(self):
        return bool(self.payload)

    __nonzero__ = __bool__

    def summary(self):
        return dict(added=self.added, changed=self.changed, removed=self.removed,
                    jumps_added=self.jumps_added, jumps_removed=self.jumps_removed)


def plan_sync(existing, desired, jumps, owns, keep=(), tables=('filter', 'nat'), write=None, hashes=None,
              sides=True):
    """Plan the partial sync.

    existing: {table: Table} from parse_save.
    desired:  {table: {chain: [rule in iptables-save form]}} in output order.
    jumps:    [(table, built-in chain, rule in iptables-save form)] in kube-proxy's order
              (each is prepended, like EnsureRule(Prepend)).
    owns(table, chain): True for chains this rule set owns (others are never touched).
    keep:     {(table, chain)} owned chains never deleted even when not desired.
    write:    optionally write(table, chain) -> [rule], the same rules spelled as they are to
              be written (e.g. kube-proxy's own spelling); default: the compared form.
    hashes:   optionally {table: {chain: chain_hash(rules)}} of `desired`, when already known.
    sides:    keep the before/after rules of every touched chain (for diff_text); False saves
              that work when no diff is wanted.
    """
    plan = SyncPlan()
    for table in tables:
        have = existing.get(table) or Table(table)
        want = desired.get(table, {})
        chain_lines, rule_lines, del_lines, ins_lines, x_lines = [], [], [], [], []
        for chain, rules in want.items():
            cur = have.rules.get(chain) if chain in have.chains else None
            if cur is None:
                plan.added.append('%s/%s' % (table, chain))
            elif cur == rules or (isinstance(cur, str) and cur == (
                    hashes[table][chain] if hashes is not None else chain_hash(rules))):
                continue
            else:
                plan.changed.append('%s/%s' % (table, chain))
                if isinstance(cur, str):
                    cur = None  # known only by its fingerprint (recorded sync)
            if sides:
                plan.before['%s/%s' % (table, chain)] = cur or []
                plan.after['%s/%s' % (table, chain)] = rules
            chain_lines.append(':%s - [0:0]' % chain)
            out_rules = write(table, chain) if write is not None else rules
            for r in out_rules:
                rule_lines.append('-A %s %s' % (chain, r))
        removed = set()
        for chain in have.chains:
            if chain in want or (table, chain) in keep or chain in BUILTIN.get(table, ()):
                continue
            if owns(table, chain):
                removed.add(chain)
        for chain in sorted(removed):
            plan.removed.append('%s/%s' % (table, chain))
            cur = have.rules.get(chain, [])
            plan.before['%s/%s' % (table, chain)] = cur if isinstance(cur, list) else []
            plan.after['%s/%s' % (table, chain)] = None
            chain_lines.append(':%s - [0:0]' % chain)
            x_lines.append('-X %s' % chain)
        # jump rules from built-in chains into chains being removed
        touched = {}
        for chain in BUILTIN.get(table, ()):
            for r in have.rules.get(chain, []):
                if rule_target(r) in removed:
                    del_lines.append('-D %s %s' % (chain, r))
                    plan.jumps_removed.append('%s/%s %s' % (table, chain, r))
                    after = touched.setdefault(chain, list(have.rules.get(chain, [])))
                    after.remove(r)
        for src, rule in missing_jumps(have, jumps, table):
            ins_lines.append(jump_insert(src, rule))
            plan.jumps_added.append('%s/%s %s' % (table, src, rule))
            touched.setdefault(src, list(have.rules.get(src, []))).insert(0, rule)
        for chain, after in touched.items():
            plan.before['%s/%s' % (table, chain)] = have.rules.get(chain, [])
            plan.after['%s/%s' % (table, chain)] = after
        if chain_lines or del_lines or ins_lines:
            plan.payload += '\n'.join(['*' + table] + chain_lines + del_lines + rule_lines + ins_lines
                                      + x_lines + ['COMMIT']) + '\n'
    return plan


def missing_jumps(have, jumps, table):
    """[(built-in chain, rule)] of the jumps into `table` that the Table `have` (or None) lacks."""
    rules = have.rules if have is not None else {}
    return [(src, rule) for jt, src, rule in jumps if jt == table and rule not in rules.get(src, ())]


def jump_insert(src, rule):
    """The batch line putting a jump first in its built-in chain (kube-proxy's EnsureRule(Prepend))."""
    return '-I %s 1 %s' % (src, rule)


def chain_hash(rules):
    """Fingerprint of a chain's rules (iptables-save form), kept in the sync record."""
    return hashlib.sha1('\n'.join(rules).encode('utf-8')).hexdigest()[:20]


def tables_from_record(record):
    """A sync record -> {table: Table} whose user chains hold fingerprints instead of rules and
    whose built-in chains hold the jump rules the record says were inserted."""
    out = {}
    for table, chains in (record.get('tables') or {}).items():
        t = out[table] = Table(table)
        for chain, h in chains.items():
            t.chains[chain] = '-'
            t.rules[chain] = h
        for chain, rules in ((record.get('jumps') or {}).get(table) or {}).items():
            t.chains[chain] = 'ACCEPT'
            t.rules[chain] = list(rules)
    return out


def add_canary(payload, table, chain, token, present=False):
    """Put the canary chain (with the record's token) into the batch, as its own table batch."""
    batch = '*%s\n:%s - [0:0]\n-A %s -m comment --comment "%s"\nCOMMIT\n' % (table, chain, chain, token)
    return payload + batch


def remove_canary(payload, table, chain):
    return payload + '*%s\n:%s - [0:0]\n-X %s\nCOMMIT\n' % (table, chain, chain)


def canary_token(save_text, chain):
    """The token in the canary chain of an iptables-save or iptables -S listing, or None."""
    marker = '-A %s -m comment --comment "' % chain
    i = save_text.find(marker)
    if i < 0:
        return None
    j = save_text.find('"', i + len(marker))
    return save_text[i + len(marker):j] if j > 0 else None


def diff_text(plan):
    """Rule-level before/after of the chains the plan touches, in iptables-save form."""
    def fmt(side):
        out = []
        for key in sorted(side):
            rules = side[key]
            if rules is None:
                continue
            table, chain = key.split('/', 1)
            out.append('# %s' % key)
            out.append(':%s' % chain)
            out.extend('-A %s %s' % (chain, r) for r in rules)
        return '\n'.join(out) + ('\n' if out else '')
    before = dict((k, v) for k, v in plan.before.items() if k not in plan.added)
    return fmt(before), fmt(plan.after)


def which(binary):
    if os.path.sep in binary:
        return binary if os.access(binary, os.X_OK) else None
    for d in os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin').split(os.pathsep) + ['/usr/sbin', '/sbin']:
        p = os.path.join(d, binary)
        if os.access(p, os.X_OK):
            return p
    return None
