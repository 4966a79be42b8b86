# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kube_svc_rules manager: kube-proxy's sync loop around the renderer.

Reads the input (inline objects, YAML/JSON files), fingerprints it object by object, and
decides from the sync record (kube-proxy keeps it in memory and trusts it while its canary
chain survives; we keep it in a state file, trusted the same way) whether nothing changed,
whether only some Services changed (a partial sync of their own chains) or whether the whole
ruleset is planned against iptables-save (a full sync, streamed into iptables-restore on a
first sync on iptables-legacy). One iptables-restore batch per run.
"""

from __future__ import annotations

import gc
import hashlib
import json
import marshal
import os
import subprocess
import time
import uuid

from ansible_collections.barepod.linux.plugins.module_utils import _iptables
from ansible_collections.barepod.linux.plugins.module_utils._common import atomic_write, failpoint, failpoint_armed
from ansible_collections.barepod.linux.plugins.module_utils._common import Manager, makedirs, result
from ansible_collections.barepod.linux.plugins.module_utils._kpmodel import (
    LARGE_CLUSTER_ENDPOINTS_THRESHOLD, SERVICE_NAME_LABEL, Settings, _err, load)
from ansible_collections.barepod.linux.plugins.module_utils._kprender import (
    TABLES, Ruleset, _render, owns_chain, render)


def read_source_texts(paths):
    """[(path, text)] of the src files (read, not parsed: an unchanged input is never parsed)."""
    out = []
    for i, path in enumerate(paths or []):
        try:
            with open(path, 'r') as f:
                out.append((path, f.read()))
        except (IOError, OSError) as e:
            raise _err('cannot read %s: %s' % (path, e.strerror or e), 'src[%d]' % i, path)
    return out


def parse_source_texts(texts, yaml_mod):
    """YAML (one or many documents; JSON is YAML too) -> objects, with libyaml when available."""
    out = []
    for i, (path, text) in enumerate(texts):
        field = 'src[%d]' % i
        stripped = text.lstrip()
        if stripped[:1] in ('{', '['):
            try:
                doc = json.loads(text)
            except ValueError:
                doc = None
            else:
                docs = doc if isinstance(doc, list) else [doc]
                out.extend(d for d in docs if d is not None)
                continue
        if yaml_mod is None:
            raise _err('reading YAML needs PyYAML', field, path)
        loader = getattr(yaml_mod, 'CSafeLoader', None) or yaml_mod.SafeLoader
        try:
            docs = list(yaml_mod.load_all(text, Loader=loader))
        except yaml_mod.YAMLError as e:
            raise _err('%s is not valid YAML: %s' % (path, e), field, path)
        out.extend(d for d in docs if d is not None)
    return out


def read_object_files(paths, yaml_mod):
    return parse_source_texts(read_source_texts(paths), yaml_mod)


def _read_sysctl(proc_root, name):
    try:
        with open(os.path.join(proc_root, 'sys', name), 'r') as f:
            return f.read().strip()
    except (IOError, OSError):
        return None


def _local_ipv4_addresses():
    """The IPv4 addresses of this (network namespace's) node, for nodeport_addresses."""
    p = subprocess.run(['ip', '-4', '-o', 'addr', 'show'], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, check=False)
    out = []
    for line in p.stdout.splitlines():
        parts = line.split()
        if 'inet' in parts:
            out.append(parts[parts.index('inet') + 1].split('/')[0])
    return out


# Bump whenever the rendered rules change for the same input: records of another rendering are
# then not trusted (a full render and plan follows).
RENDER_VERSION = 2
_sha1 = hashlib.sha1


# marshal format 2 has no back-references (3 and later emit them depending on reference
# counts), so equal input always gives the same bytes; and what marshal writes loads back to
# the same value, so different input never does. Three times faster than repr.
_MARSHAL_FORMAT = 2


def object_digests(objects):
    """Each object's canonical encoding (marshal format 2 of the decoded JSON/YAML value): equal
    objects give equal bytes, different objects different bytes. Hashed per Service later."""
    dumps = marshal.dumps
    try:
        return [dumps(o, _MARSHAL_FORMAT) for o in objects]
    except ValueError:
        # something marshal does not take (a YAML timestamp, a str subclass): repr, which is
        # as deterministic for such input, tagged so the two encodings never meet
        return [_encode_one(o) for o in objects]


def _encode_one(o):
    try:
        return marshal.dumps(o, _MARSHAL_FORMAT)
    except ValueError:
        return b'repr:' + repr(o).encode('utf-8', 'surrogatepass')


def group_by_service(objects, digests, keys=None):
    """{service key: fingerprint of the Service and its EndpointSlices}, {key: [objects]}, or
    (None, None) when the input is anything but plain Services and EndpointSlices each naming a
    given Service once (Lists, Endpoints, errors...): then only the full render handles it.
    keys: a list that gets each object's Service key, in input order."""
    fps, members = {}, {}
    slices = []
    if keys is None:
        keys = []
    add_key = keys.append
    for i, o in enumerate(objects):
        d = digests[i]
        if not isinstance(o, dict):
            return None, None
        kind = o.get('kind')
        meta = o.get('metadata')
        if not isinstance(meta, dict):
            return None, None
        ns = meta.get('namespace') or 'default'
        if kind == 'Service':
            name = meta.get('name')
            if not isinstance(name, str) or not isinstance(ns, str):
                return None, None
            key = ns + '/' + name
            if key in fps:
                return None, None
            fps[key] = [d]
            members[key] = [o]
            add_key(key)
        elif kind == 'EndpointSlice':
            labels = meta.get('labels')
            svc = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, dict) else None
            if not isinstance(svc, str) or not isinstance(ns, str):
                return None, None
            slices.append((ns + '/' + svc, o, d))
            add_key(ns + '/' + svc)
        else:
            return None, None
    for key, o, d in slices:
        fp = fps.get(key)
        if fp is None:
            return None, None
        fp.append(d)
        members[key].append(o)
    join = b'\0'.join
    return dict((k, _sha1(join(v)).hexdigest()[:24]) for k, v in fps.items()), members


def object_fingerprints(digests):
    """Per-object fingerprints kept in the record (16 bytes of the sha1 of each encoding)."""
    sha1 = _sha1
    return [sha1(d).digest()[:16] for d in digests]


def object_record(objects, digests, keys):
    """What the record keeps about the input, object by object: fingerprint, Service key, kind
    ('S' Service, 'E' EndpointSlice) - so the next run finds the changed Services by comparing
    fingerprints, without looking into the unchanged objects at all."""
    return dict(objects=object_fingerprints(digests), okeys=keys,
                okinds=''.join('S' if o.get('kind') == 'Service' else 'E' for o in objects))


def changed_by_object(objects, digests, body):
    """The Services whose objects changed, from the record's per-object fingerprints, when the
    input holds the same objects in the same places (same kinds, same Services): the usual
    case of one EndpointSlice or Service rewritten. -> ({key: new fingerprint}, {key:
    [objects]}, new object record) or None (then group_by_service decides)."""
    old, okeys, okinds = body.get('objects'), body.get('okeys'), body.get('okinds')
    n = len(objects)
    if not (isinstance(old, list) and isinstance(okeys, list) and isinstance(okinds, str)
            and len(old) == n and len(okeys) == n and len(okinds) == n):
        return None
    new = object_fingerprints(digests)
    changed = set()
    for i in [i for i in range(n) if new[i] != old[i]]:
        o = objects[i]
        if not isinstance(o, dict) or not isinstance(o.get('metadata'), dict):
            return None
        kind, meta = o.get('kind'), o['metadata']
        ns = meta.get('namespace') or 'default'
        if kind == 'Service' and okinds[i] == 'S':
            name = meta.get('name')
        elif kind == 'EndpointSlice' and okinds[i] == 'E':
            labels = meta.get('labels')
            name = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, dict) else None
        else:
            return None
        if not isinstance(ns, str) or not isinstance(name, str) or ns + '/' + name != okeys[i]:
            return None            # an object moved to another Service: group everything
        changed.add(okeys[i])
    at = {}
    for j, k in enumerate(okeys):
        if k in changed:
            at.setdefault(k, []).append(j)
    fps, members = {}, {}
    join = b'\0'.join
    for k, idx in at.items():
        idx.sort(key=lambda j: okinds[j] != 'S')     # the Service first, then its slices in order
        members[k] = [objects[j] for j in idx]
        fps[k] = _sha1(join(digests[j] for j in idx)).hexdigest()[:24]
    return fps, members, dict(objects=new, okeys=okeys, okinds=okinds)


def changed_by_group(old, groups):
    """{key: new fingerprint} of the Services that changed, or None when a Service was added,
    removed or renamed (the shared chains change: full sync)."""
    if not isinstance(old, dict) or len(old) != len(groups):
        return None
    changed = {}
    for key, fp in groups.items():
        entry = old.get(key)
        if entry is None:
            return None
        if entry[REC_FP] != fp:
            changed[key] = fp
    return changed


def _settings(params, apply_, proc_root):
    liberal = params.get('conntrack_tcp_be_liberal')
    if liberal is None:
        liberal = apply_ and _read_sysctl(proc_root, 'net/netfilter/nf_conntrack_tcp_be_liberal') not in (None, '0')
    nodeport_ips = params.get('nodeport_ips')
    if params.get('nodeport_addresses') and not nodeport_ips and apply_:
        nodeport_ips = _local_ipv4_addresses()
    return Settings(
        node_name=params.get('node_name'), node_ip=params.get('node_ip'),
        cluster_cidr=params.get('cluster_cidr'), masquerade_bit=params.get('masquerade_bit', 14),
        masquerade_all=params.get('masquerade_all', False),
        nodeport_addresses=params.get('nodeport_addresses'), nodeport_ips=nodeport_ips,
        localhost_nodeports=params.get('localhost_nodeports', True),
        random_fully=params.get('random_fully', True), conntrack_tcp_be_liberal=liberal,
        nfacct=params.get('nfacct', False), chain_prefix=params.get('chain_prefix') or 'KUBE')


def settings_fingerprint(st):
    return _sha1(repr((RENDER_VERSION, st.chain_prefix, st.node_name, str(st.node_ip), str(st.cluster_cidr),
                       st.masquerade_bit, st.masquerade_all, [str(n) for n in st.nodeport_addresses],
                       [str(a) for a in st.nodeport_ips], st.localhost_nodeports, st.random_fully,
                       st.conntrack_tcp_be_liberal, st.nfacct)).encode('utf-8')).hexdigest()[:24]


class SvcRules(Manager):
    """The kube_svc_rules manager: render, observe, plan kube-proxy's (partial) sync, apply once.

    yaml_mod: PyYAML, for the src files; backend: an _iptables.Backend (tests pass fakes);
    stream=False: never stream a first sync into iptables-restore (tests compare both ways).
    run() -> _common.result(changed, actions, diff, warnings, **the facts in RETURN)."""

    def __init__(self, params, check_mode=False, diff=False, yaml_mod=None, backend=None, stream=True):
        super(SvcRules, self).__init__(params, check_mode=check_mode, diff=diff)
        self.yaml_mod = yaml_mod
        self.backend = backend
        self.stream = stream
        self.warnings = []

    def run(self):
        # Tens of thousands of short-lived rule strings and objects: the cyclic collector would
        # rescan them again and again (a third of the run time at 10,000 Services) for no gain.
        enabled = gc.isenabled()
        gc.disable()
        try:
            res = self._sync()
        finally:
            if enabled:
                gc.enable()
        changed = res.pop('changed')
        diff = res.pop('diff', None)
        return result(changed, _actions(res) if changed else (), diff, self.warnings, **res)

    # ----------------------------------------------------------------------- the steps

    def _sync(self):
        params = self.params
        self.state = _choice(params, 'state', ('present', 'absent'))
        self.resync = _choice(params, 'resync', ('auto', 'always'))
        inline = params.get('objects') or []
        self.n_inline = len(inline)
        self.texts = read_source_texts(params.get('src')) if self.state == 'present' else []
        proc_root = params.get('proc_root') or '/proc'
        apply_ = params.get('apply', True)
        self.return_payload = params.get('return_payload', True)
        self.settings = _settings(params, apply_, proc_root)
        self.prefix = self.settings.chain_prefix
        if not apply_:
            return self._render_only(inline)
        if self.backend is None:
            self.backend = _iptables.Backend(params.get('backend') or 'auto', save=params.get('iptables_save'),
                                             restore=params.get('iptables_restore'), iptables=params.get('iptables'),
                                             proc_net=os.path.join(proc_root, 'net'))
        self.canary = self.prefix + '-PROXY-CANARY'
        self.paths = _record_paths(params.get('state_dir') or DEFAULT_STATE_DIR, proc_root, self.backend.mode,
                                   self.prefix)
        self._trust_record()
        self.settings_fp = settings_fingerprint(self.settings)
        res = self._from_record(inline)
        return res if res is not None else self._full_sync()

    def _render_only(self, inline):
        """apply=false: the rules, nothing observed."""
        rs = render(list(inline) + parse_source_texts(self.texts, self.yaml_mod), self.settings,
                    warnings=self.warnings)
        res = _facts(rs, self.prefix)
        if self.return_payload:
            res['payload'] = rs.payload()
        res['chains'] = dict(desired=['%s/%s' % (t, c) for t in TABLES for c in rs.ordered_chains(t)])
        return res

    def _trust_record(self):
        """What is there: kube-proxy keeps it in memory and trusts it while its canary chain
        survives; we keep it in a record (a small head and a body with every chain's fingerprint
        and what each Service contributed), trusted the same way (resync=auto). Otherwise, and
        always for --diff, iptables-save is the truth. Like kube-proxy, compare with the kernel
        again every full_sync_period (FullSyncPeriod, an hour) - except in large cluster mode,
        where kube-proxy skips the periodic full sync too. Sets head (None unless trusted),
        trusted, reason and now."""
        period = self.params.get('full_sync_period')
        period = 3600 if period is None else period
        if isinstance(period, bool) or not isinstance(period, int) or period < 0:
            raise _err('must be a number of seconds (0: never)', 'full_sync_period', period)
        head = _load_json(self.paths[0]) if (self.resync == 'auto' and not self.want_diff) else None
        trusted = False
        self.now = time.time()
        reason = '--diff' if self.want_diff else 'resync=always' if self.resync == 'always' else 'no record'
        if head is not None:
            token = _iptables.canary_token(self.backend.list_chain('mangle', self.canary), self.canary)
            trusted = token is not None and token == head.get('token')
            reason = 'record trusted (canary token matches)' if trusted else 'canary token differs from the record'
            age = self.now - (head.get('full_sync_at') or 0)
            if trusted and period and age > period and not (head.get('facts') or {}).get('large_cluster_mode'):
                trusted = False
                reason = 'periodic full sync (last one %d s ago)' % age
            if not trusted:
                head = None
        self.head, self.trusted, self.reason = head, trusted, reason

    def _from_record(self, inline):
        """The fast paths (Services and EndpointSlices unchanged, or only some Services changed):
        from the record, without rendering everything, without iptables-save. None: a full
        sync follows (with what was learned here: objects, digests, groups, body)."""
        head = self.head
        recorded = self.state == 'present' and self.trusted
        objects = list(inline)
        # Without a trusted record the digests serve only the next record: computed while the
        # restore runs (in _full_sync), not before.
        self.input_fp = digests = None
        if recorded:
            digests = object_digests(inline)
            self.input_fp = _input_fingerprint(digests, self.texts, self.settings_fp)
            if not self.return_payload and head.get('input_fp') == self.input_fp:
                return dict(head['facts'], changed=False, chain_prefix=self.prefix, backend=self.backend.mode,
                            backend_reason=self.backend.reason, sync='recorded', sync_reason=self.reason,
                            render='none', restore_payload='', chains=_iptables.SyncPlan().summary(), restores=0)
        if self.texts:
            more = parse_source_texts(self.texts, self.yaml_mod)
            objects += more
            if digests is not None:
                digests = digests + object_digests(more)
        self.objects, self.digests = objects, digests
        self.body = self.groups = self.okeys = None
        if not recorded:
            return None
        res = None
        by_object = False
        if not self.return_payload and head.get('settings_fp') == self.settings_fp:
            body = _load_body(self.paths[1])
            if body is not None and body.get('id') == head.get('body_id'):
                self.body = body
                hit = changed_by_object(objects, digests, body)
                if hit is not None:
                    by_object = True
                    res = self._partial(*hit)
        if res is None:
            self.okeys = []
            self.groups, members = group_by_service(objects, digests, keys=self.okeys)
            if self.body is not None and self.groups is not None and not by_object:
                changed = changed_by_group(self.body.get('services'), self.groups)
                if changed is not None:
                    res = self._partial(changed, members, object_record(objects, digests, self.okeys))
        if res is not None:
            res['sync_reason'] = self.reason
        return res

    def _partial(self, new_fps, members, objrec):
        """Only some Services changed (kube-proxy's partial sync, from the record): render those
        alone, and when what they put into the shared chains (KUBE-SERVICES, KUBE-NODEPORTS, the
        filter chains) is unchanged, plan and write only their own chains. None: do a full sync.
        new_fps: {key: new fingerprint} of the changed Services; members: {key: [objects]};
        objrec: the per-object part of the next record."""
        old = self.body.get('services')
        if not isinstance(old, dict):
            return None
        for key in new_fps:
            entry = old.get(key)
            if entry is None:
                return None            # a Service added (or renamed): the shared chains change
            if entry[REC_NO_RULES]:
                return None            # it had no rules (headless...): let the full render decide
        changed = list(new_fps)
        sub = [o for key in changed for o in members[key]]
        warnings = []
        svc_ports, endpoints, skipped = load(sub, self.settings.node_name, warnings=warnings)  # validates
        if skipped:
            return None
        facts = dict(self.head['facts'])
        total = facts['endpoints'] - sum(old[k][REC_ENDPOINTS] for k in changed) + sum(
            len(endpoints.get((sp.name_string, sp.protocol), ())) for sp in svc_ports)
        large = total > LARGE_CLUSTER_ENDPOINTS_THRESHOLD
        if large != facts['large_cluster_mode']:
            return None
        track = {}
        rs = _render(svc_ports, endpoints, self.settings, large=large, track=track)
        for key in changed:
            t = track.get(key)
            if t is None or _contrib_fp(t.contrib) != old[key][REC_CONTRIB_FP]:
                return None            # its cluster IP, ports, node ports... changed: full sync
        self.warnings.extend(warnings)
        plan, hashes = self._plan_own_chains(rs, [old[key][REC_CHAINS] for key in changed],
                                             [track[key].chains for key in changed])
        for key in changed:
            e, t = old[key], track[key]
            facts['services'] += t.ports - e[REC_PORTS]
            facts['rules'] = dict(facts['rules'], filter=facts['rules']['filter'] + t.filter_rules - e[REC_FILTER_RULES],
                                  nat=facts['rules']['nat'] + t.nat_rules - e[REC_NAT_RULES])
        facts['endpoints'] = total
        backend = self.backend
        res = dict(facts, changed=bool(plan), chain_prefix=self.prefix, backend=backend.mode,
                   backend_reason=backend.reason, sync='recorded', render='partial (%d of %d Services)'
                   % (len(changed), len(old)), restore_payload=plan.payload, chains=plan.summary())
        if not self.check_mode:
            if plan:
                _remove_record(self.paths)
                failpoint('rules-before-restore')
                backend.restore(plan.payload)
            tables = self.body['tables']
            nat_hashes = tables['nat']
            for key in changed:
                for c in old[key][REC_CHAINS]:
                    nat_hashes.pop(c, None)
                old[key] = record_entry(new_fps[key], track[key])
            nat_hashes.update(hashes)
            head = dict(self.head, input_fp=self.input_fp, facts=dict((k, facts[k]) for k in FACT_KEYS))
            _write_record(self.paths, head, dict(objrec, tables=tables, services=old))
        res['restores'] = backend.restores
        return res

    def _plan_own_chains(self, rs, old_chains, new_chains):
        """The partial sync's plan: the changed Services' own nat chains as recorded -> as
        rendered. -> (SyncPlan, {chain: hash} of the rendered ones)."""
        nat = _iptables.Table('nat')
        recorded = self.body['tables']['nat']
        for chains in old_chains:
            for c in chains:
                nat.chains[c] = '-'
                nat.rules[c] = recorded.get(c, '')
        want = {}
        for chains in new_chains:
            for c in chains:
                want[c] = rs.saved_rules('nat', c)
        want = dict((c, want[c]) for c in sorted(want))
        hashes = dict((c, _iptables.chain_hash(r)) for c, r in want.items())
        prefix = self.prefix
        plan = _iptables.plan_sync({'nat': nat}, {'nat': want}, [], owns=lambda t, c: owns_chain(prefix, t, c),
                                   tables=('nat',), hashes={'nat': hashes},
                                   write=lambda t, c: [k for k, _s in rs.chains[t][c]])
        return plan, hashes

    def _full_sync(self):
        """Every chain planned against the kernel (iptables-save) or the trusted record, one
        batch; streamed into iptables-restore on a first sync on iptables-legacy."""
        model, existing, sync, canary_present, token, created = self._observe()
        prefix, state, backend = self.prefix, self.state, self.backend
        # KUBE-FIREWALL and KUBE-MARK-MASQ are shared with kubelet: kube-proxy's CleanupLeftovers
        # leaves them. We remove them only where we created them (they did not exist before our
        # first sync, as the record and the canary token say), so a barepod-only host is left clean.
        keep = set((t, c) for t, c in shared_chains(prefix) if '%s/%s' % (t, c) not in created)

        def owns(table, chain):
            return owns_chain(prefix, table, chain)

        track = {} if state == 'present' else None
        stream_ = None
        if self._streams(existing, sync):
            _remove_record(self.paths)
            failpoint('rules-before-restore')
            rs, plan, token, stream_ = _stream_first_sync(backend, model, self.settings, existing, keep, owns, token,
                                                          created, track)
            payload = plan.payload
            desired = _desired(rs)
            hashes = None
        else:
            if state == 'present':
                rs = _render(model[0], model[1], self.settings, track=track)
                rs.skipped = model[2]
            else:
                rs = Ruleset(prefix)
                rs.skipped = []
            # written in kube-proxy's own spelling (the batch reads like kube-proxy's), compared in
            # iptables-save's
            desired = _desired(rs)
            hashes = _chain_hashes(desired) if sync == 'recorded' else None
            plan = _iptables.plan_sync(existing, desired, _saved_jumps(rs), owns=owns, keep=keep, tables=TABLES,
                                       hashes=hashes, sides=self.want_diff,
                                       write=lambda t, c: [k for k, _s in rs.chains[t][c]])
            payload = plan.payload
            if plan:
                if state == 'present' and not token:
                    token = _new_token(created)
                    payload = _iptables.add_canary(payload, 'mangle', self.canary, token)
                elif state == 'absent' and canary_present:
                    payload = _iptables.remove_canary(payload, 'mangle', self.canary)
        res = self._full_result(rs, sync, plan, payload)
        write_record = state == 'present' and not self.check_mode and self.resync == 'auto' and not self.want_diff \
            and token and (plan or not self.trusted or self.head.get('input_fp') != self.input_fp)
        if plan and not self.check_mode and stream_ is None:
            # The record goes first: should the restore fail half-way (iptables-legacy commits table
            # by table) or the run die, the next run compares with iptables-save instead of
            # trusting a record that no longer describes the kernel.
            _remove_record(self.paths)
            failpoint('rules-before-restore')
            backend.restore(payload)
            if state == 'absent':
                _remove_record(self.paths)
        record = None
        try:
            if write_record:
                # (after a streamed sync this runs while iptables-restore parses and commits)
                record = self._next_record(res, rs, sync, token, created, hashes or _chain_hashes(desired), track)
        finally:
            if stream_ is not None:
                stream_.finish()   # raises when the restore failed: then no record
        if record is not None:
            _write_record(self.paths, *record)
        if self.return_payload:
            res['payload'] = rs.payload() if state == 'present' else ''
        res['restores'] = backend.restores
        return res

    def _observe(self):
        """The input validated and the current rules: without a trusted record the kernel is the
        truth, and iptables-save runs while the input is validated.
        -> (model, existing tables, sync, canary present, token, shared chains we created)."""
        backend = self.backend
        save_proc = None if self.trusted else backend.start_save()
        try:
            model = load(self.objects, self.settings.node_name, warnings=self.warnings) \
                if self.state == 'present' else None
        except BaseException:
            if save_proc is not None:
                save_proc.kill()
                save_proc.communicate()
            raise
        existing = record = None
        if self.trusted:
            body = self.body if self.body is not None else _load_body(self.paths[1])
            if body is not None and body.get('id') == self.head.get('body_id'):
                record = dict(self.head, tables=body.get('tables'))
                existing = _iptables.tables_from_record(record)
        sync = 'recorded' if existing is not None else 'iptables-save'
        if self.trusted and existing is None:
            self.reason = 'record body missing or stale'
        canary_present = existing is not None
        if existing is None:
            text = backend.collect_save(save_proc) if save_proc is not None else backend.save()
            existing = _iptables.parse_save(text, tables=TABLES)
            canary_present = (':%s ' % self.canary) in text
            record = None
            found = _iptables.canary_token(text, self.canary)
            if found and found.startswith('barepod kube_svc_rules '):
                record = dict(token=found)  # the canary stays; the record is rewritten after a sync
        token = record.get('token') if record else None
        created = _created_shared(self.prefix, record, existing, token_found=token)
        return model, existing, sync, canary_present, token, created

    def _streams(self, existing, sync):
        """A first sync (the nat table holds none of our chains) on iptables-legacy: every nat chain
        is new, so the restore can start now and parse the chains as they are rendered. Not on
        nft: iptables-nft-restore wants the declarations sorted (in render order it takes 63 s
        instead of 14.6 s for 10,000 Services), and there the restore dwarfs our work anyway."""
        nat_now = existing.get('nat')
        return (self.state == 'present' and self.stream and self.backend.mode == 'legacy' and sync == 'iptables-save'
                and not self.check_mode and not self.want_diff
                and not any(owns_chain(self.prefix, 'nat', c) for c in (nat_now.chains if nat_now else ())))

    def _full_result(self, rs, sync, plan, payload):
        res = _facts(rs, self.prefix)
        res.update(render='full' if self.state == 'present' else 'none', backend=self.backend.mode,
                   backend_reason=self.backend.reason, sync=sync, sync_reason=self.reason, chains=plan.summary(),
                   restore_payload=payload, changed=bool(plan))
        if self.want_diff:
            before, after = _iptables.diff_text(plan)
            res['diff'] = dict(before=before, after=after)
        return res

    def _next_record(self, res, rs, sync, token, created, hashes, track):
        """hashes: table -> {chain: hash} of the rules now in place."""
        digests = self.digests
        if digests is None:
            digests = object_digests(self.objects)
            self.input_fp = _input_fingerprint(digests[:self.n_inline], self.texts, self.settings_fp)
        groups, okeys = self.groups, self.okeys
        if groups is None and okeys is None:
            okeys = []
            groups, _members = group_by_service(self.objects, digests, keys=okeys)
        services = None
        if groups is not None:
            services = dict((key, record_entry(fp, track.get(key))) for key, fp in groups.items())
        head = dict(version=RECORD_VERSION, backend=self.backend.mode, prefix=self.prefix, token=token, created=created,
                    jumps=_jumps_by_chain(_saved_jumps(rs)), settings_fp=self.settings_fp, input_fp=self.input_fp,
                    full_sync_at=self.now if sync == 'iptables-save' else self.head.get('full_sync_at'),
                    facts=dict((k, res[k]) for k in FACT_KEYS))
        body = dict(object_record(self.objects, digests, okeys) if groups is not None else {},
                    tables=hashes, services=services)
        return head, body


def sync_service_rules(params, check_mode=False, diff=False, yaml_mod=None, backend=None, stream=True):
    """The manager's result in one call (tests and the bench use it)."""
    return SvcRules(params, check_mode=check_mode, diff=diff, yaml_mod=yaml_mod, backend=backend, stream=stream).run()


def _choice(params, name, choices):
    value = params.get(name) or choices[0]
    if value not in choices:
        raise _err('must be %s' % ' or '.join(choices), name, value)
    return value


def _desired(rs):
    """table -> {chain: [rules in iptables-save's spelling]}, in kube-proxy's order."""
    return dict((t, dict((c, rs.saved_rules(t, c)) for c in rs.ordered_chains(t))) for t in TABLES)


def _saved_jumps(rs):
    return [(t, src, saved) for t, src, _kp, saved in rs.jumps]


def _actions(res):
    """The one action of a sync that changes something: the iptables-restore batch."""
    chains = res.get('chains') or {}
    n = sum(len(chains.get(k) or ()) for k in ('added', 'changed', 'removed', 'jumps_added', 'jumps_removed'))
    return [dict(action='iptables-restore', target=res.get('backend') or 'iptables', chains=n)]


def _input_fingerprint(inline_digests, texts, settings_fp):
    """What the input was: the inline objects, the src files' texts, the settings."""
    h = _sha1(b''.join(inline_digests))
    for _path, text in texts:
        h.update(_sha1(text.encode('utf-8')).digest())
    h.update(settings_fp.encode('ascii'))
    return h.hexdigest()[:24]


def _chain_hashes(desired):
    chain_hash = _iptables.chain_hash
    return dict((t, dict((c, chain_hash(r)) for c, r in desired[t].items())) for t in TABLES)


def _new_token(created):
    token = 'barepod kube_svc_rules %s' % uuid.uuid4().hex
    if created:
        token += ' created=' + ','.join(created)
    return token


def _stream_first_sync(backend, model, settings, existing, keep, owns, token, created, track):
    """A full sync into a nat table that holds none of our chains, streamed (iptables-legacy):
    iptables-restore starts before the rendering does and parses each nat chain's declaration as
    the chain comes into being (libiptc does not mind their order), then the rules in the order
    of the chains (kube-proxy's sorted order: libiptc builds the table a fifth faster that way
    than in render order); the small filter table and the canary follow, planned as usual. The batch differs from the unstreamed one only in the
    order of the tables (nat first: nothing but it is known early) and of the nat declarations.
    -> (Ruleset, SyncPlan, token, the RestoreStream still running: finish() it)."""
    prefix = settings.chain_prefix
    stream = backend.stream()
    try:
        stream.write('*nat\n')

        def declare(table, chain):
            if table == 'nat':
                stream.write(':%s - [0:0]\n' % chain)
        rs = _render(model[0], model[1], settings, track=track, on_new=declare)
        rs.on_new = None
        rs.skipped = model[2]
        stream.flush()
        failpoint('rules-while-streaming')   # declarations sent, no COMMIT: nothing may apply
        plan = _iptables.SyncPlan()
        nat = rs.chains['nat']
        for c in rs.ordered_chains('nat'):
            plan.added.append('nat/' + c)
            head = '-A %s ' % c
            stream.write(''.join([head + k + '\n' for k, _s in nat[c]]))
        jumps = [(t, src, saved) for t, src, _kp, saved in rs.jumps]
        for src, rule in _iptables.missing_jumps(existing.get('nat'), jumps, 'nat'):
            stream.write(_iptables.jump_insert(src, rule) + '\n')
            plan.jumps_added.append('nat/%s %s' % (src, rule))
        stream.write('COMMIT\n')
        if failpoint_armed('rules-between-tables'):
            stream.finish()          # the nat table applied, then the sync dies
            failpoint('rules-between-tables')
        desired = {'filter': dict((c, rs.saved_rules('filter', c)) for c in rs.ordered_chains('filter'))}
        fplan = _iptables.plan_sync(existing, desired, jumps, owns=owns, keep=keep, tables=('filter',), sides=False,
                                    write=lambda t, c: [k for k, _s in rs.chains[t][c]])
        stream.write(fplan.payload)
        for attr in ('added', 'changed', 'removed', 'jumps_added', 'jumps_removed'):
            getattr(plan, attr).extend(getattr(fplan, attr))
        if not token:
            token = _new_token(created)
            stream.write(_iptables.add_canary('', 'mangle', prefix + '-PROXY-CANARY', token))
        stream.flush()
    except BaseException:
        stream.abort()
        raise
    plan.payload = stream.text()
    return rs, plan, token, stream


# `not_proxied`, not `skipped`: Ansible reserves `skipped` in a task result (a non-empty list made the
# task show as skipped, changed=false, handlers not notified).
FACT_KEYS = ('services', 'endpoints', 'large_cluster_mode', 'not_proxied', 'rules')
RECORD_VERSION = 4  # 4: the facts' `skipped` became `not_proxied`


def _facts(rs, prefix):
    return dict(changed=False, services=rs.services, endpoints=rs.endpoints,
                large_cluster_mode=rs.large_cluster_mode, not_proxied=rs.skipped,
                rules=rs.rule_count(), chain_prefix=prefix)


def _contrib_fp(contrib):
    return _sha1('\n'.join(contrib).encode('utf-8')).hexdigest()[:24]


# The record's entry for one Service, a plain list (marshal writes lists), read by these indices:
# the fingerprint of its objects, of what it put into the shared chains, its endpoints, its own
# nat chains, its ports, its filter and nat rules, and 1 when it wrote no rules at all.
(REC_FP, REC_CONTRIB_FP, REC_ENDPOINTS, REC_CHAINS, REC_PORTS, REC_FILTER_RULES, REC_NAT_RULES,
 REC_NO_RULES) = range(8)


def record_entry(fp, contribution):
    """A Service's record entry from its Contribution (None: headless, ExternalName, IPv6 - no rules)."""
    t = contribution
    if t is None:
        return [fp, '', 0, [], 0, 0, 0, 1]
    return [fp, _contrib_fp(t.contrib), t.endpoints, t.chains, t.ports, t.filter_rules, t.nat_rules, 0]


DEFAULT_STATE_DIR = '/run/barepod/kube_svc_rules'


def shared_chains(prefix):
    """The chains kubelet shares with kube-proxy (only under kube-proxy's own prefix)."""
    return [('filter', 'KUBE-FIREWALL'), ('nat', 'KUBE-MARK-MASQ')] if prefix == 'KUBE' else []


def _created_shared(prefix, record, existing, token_found=None):
    """['table/chain'] of the shared chains this module created: from the record, else from
    the canary's token (which carries them from the first sync on), else - on a first sync -
    those that do not exist yet (this sync creates them)."""
    shared = shared_chains(prefix)
    if not shared:
        return []
    names = ['%s/%s' % tc for tc in shared]
    if record is not None and isinstance(record.get('created'), list):
        return [c for c in record['created'] if c in names]
    if token_found:
        _head, sep, tail = token_found.partition(' created=')
        return [c for c in tail.split(',') if c in names] if sep else []
    return ['%s/%s' % (t, c) for t, c in shared if c not in (existing.get(t).chains if existing.get(t) else ())]


def _record_paths(state_dir, proc_root, mode, prefix):
    """(head, body) of the sync record of this network namespace, backend and prefix."""
    st = os.stat(os.path.join(proc_root, 'self', 'ns', 'net'))
    base = os.path.join(state_dir, 'netns-%d-%d-%s-%s' % (st.st_dev, st.st_ino, mode, prefix))
    return base + '.json', base + '.body'


def _load_json(path):
    try:
        with open(path, 'r') as f:
            rec = json.load(f)
    except (IOError, OSError, ValueError):
        return None
    if not isinstance(rec, dict):
        return None
    return rec if rec.get('version') == RECORD_VERSION else None


def _load_body(path):
    """The record body: marshal (format 2) of a dict of strings, numbers and lists, several MB
    at 10,000 Services, which JSON would take five times as long to read and write. It is a
    cache in root's own state dir, trusted only when its id matches the head's; anything
    unreadable is no body (a full sync follows)."""
    try:
        with open(path, 'rb') as f:
            rec = marshal.loads(f.read())
    except (IOError, OSError, ValueError, EOFError, TypeError):
        return None
    return rec if isinstance(rec, dict) else None


def _write_record(paths, head, body):
    """The body first, the head (naming the body) last: a head is only ever found beside its body.

    Each file is replaced atomically (rename) but not fsynced: the record describes iptables
    rules, which do not survive a crash either, and a torn or stale record is never trusted
    (the canary token and the body id must match), so durability would buy nothing but time."""
    makedirs(os.path.dirname(paths[0]), 0o700)
    head = dict(head, body_id=uuid.uuid4().hex)
    body = dict(body, id=head['body_id'])
    atomic_write(paths[1], marshal.dumps(body, _MARSHAL_FORMAT), 0o600, fsync=False)
    atomic_write(paths[0], json.dumps(head, sort_keys=True, separators=(',', ':')).encode('utf-8'), 0o600,
                 fsync=False)


def _remove_record(paths):
    # (+ the JSON body that records of version 2 kept beside the head)
    for path in tuple(paths) + (paths[1] + '.json',):
        try:
            os.unlink(path)
        except OSError:
            pass


def _jumps_by_chain(jumps):
    out = {}
    for t, src, rule in jumps:
        out.setdefault(t, {}).setdefault(src, []).insert(0, rule)
    return out
