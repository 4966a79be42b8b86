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
from ansible_collections.barepod.linux.plugins.module_utils._common import makedirs
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


def sync_service_rules(params, check_mode=False, want_diff=False, yaml_mod=None, backend=None, stream=True):
    """The kube_svc_rules module: render, observe, plan the partial sync, apply once.
    stream=False: never stream a first sync into iptables-restore (tests compare both ways)."""
    # Tens of thousands of short-lived rule strings and objects: the cyclic collector would
    # rescan them again and again (a third of the run time at 10,000 Services) for no gain.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _sync_service_rules(params, check_mode, want_diff, yaml_mod, backend, stream)
    finally:
        if enabled:
            gc.enable()


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


def _sync_service_rules(params, check_mode, want_diff, yaml_mod, backend, stream=True):
    state = params.get('state') or 'present'
    if state not in ('present', 'absent'):
        raise _err('must be present or absent', 'state', state)
    resync = params.get('resync') or 'auto'
    if resync not in ('auto', 'always'):
        raise _err('must be auto or always', 'resync', resync)
    inline = params.get('objects') or []
    texts = read_source_texts(params.get('src')) if state == 'present' else []
    proc_root = params.get('proc_root') or '/proc'
    apply_ = params.get('apply', True)
    return_payload = params.get('return_payload', True)
    settings = _settings(params, apply_, proc_root)
    prefix = settings.chain_prefix

    if not apply_:
        rs = render(list(inline) + parse_source_texts(texts, yaml_mod), settings)
        result = _facts(rs, prefix)
        if return_payload:
            result['payload'] = rs.payload()
        result['chains'] = dict(desired=['%s/%s' % (t, c) for t in TABLES for c in rs.ordered_chains(t)])
        return result

    if backend is None:
        backend = _iptables.Backend(params.get('backend') or 'auto', save=params.get('iptables_save'),
                                    restore=params.get('iptables_restore'), iptables=params.get('iptables'),
                                    proc_net=os.path.join(proc_root, 'net'))
    canary = prefix + '-PROXY-CANARY'
    paths = _record_paths(params.get('state_dir') or DEFAULT_STATE_DIR, proc_root, backend.mode, prefix)

    # What is there: kube-proxy keeps it in memory and trusts it while its canary chain
    # survives; we keep it in a record (a small head and a body with every chain's fingerprint
    # and what each Service contributed), trusted the same way (resync=auto). Otherwise, and
    # always for --diff, iptables-save is the truth.
    # Like kube-proxy, compare with the kernel again every full_sync_period (FullSyncPeriod, an
    # hour) - except in large cluster mode, where kube-proxy skips the periodic full sync too.
    period = params.get('full_sync_period')
    period = 3600 if period is None else period
    if isinstance(period, bool) or not isinstance(period, int) or period < 0:
        raise _err('must be a number of seconds (0: never)', 'full_sync_period', period)
    head = _load_json(paths[0]) if (resync == 'auto' and not want_diff) else None
    trusted = False
    now = time.time()
    reason = '--diff' if want_diff else 'resync=always' if resync == 'always' else 'no record'
    if head is not None:
        token = _iptables.canary_token(backend.list_chain('mangle', canary), canary)
        trusted = token is not None and token == head.get('token')
        reason = 'record trusted (canary token matches)' if trusted else 'canary token differs from the record'
        age = now - (head.get('full_sync_at') or 0)
        if trusted and period and age > period and not (head.get('facts') or {}).get('large_cluster_mode'):
            trusted = False
            reason = 'periodic full sync (last one %d s ago)' % age
        if not trusted:
            head = None

    # Fast paths (Services and EndpointSlices unchanged, or only some Services changed): from
    # the record, without rendering everything, without iptables-save.
    settings_fp = settings_fingerprint(settings)
    objects = list(inline)
    # Without a trusted record the digests serve only the next record: computed while the
    # restore runs (below), not before.
    input_fp = digests = None
    if state == 'present' and trusted:
        digests = object_digests(inline)
        input_fp = _input_fingerprint(digests, texts, settings_fp)
        if not return_payload and head.get('input_fp') == input_fp:
            result = dict(head['facts'], changed=False, chain_prefix=prefix, backend=backend.mode,
                          backend_reason=backend.reason, sync='recorded', sync_reason=reason, render='none',
                          restore_payload='', chains=_iptables.SyncPlan().summary(), restores=0)
            return result
    if texts:
        more = parse_source_texts(texts, yaml_mod)
        objects += more
        if digests is not None:
            digests = digests + object_digests(more)
    body = None
    groups = members = okeys = None
    if state == 'present' and trusted:
        tried = False
        if not return_payload and head.get('settings_fp') == settings_fp:
            body = _load_body(paths[1])
            if body is None or body.get('id') != head.get('body_id'):
                body = None
            else:
                hit = changed_by_object(objects, digests, body)
                if hit is not None:
                    tried = True
                    res = _partial(params, check_mode, settings, backend, paths, head, body, hit[0], hit[1],
                                   input_fp, _iptables, hit[2])
                    if res is not None:
                        res['sync_reason'] = reason
                        return res
        okeys = []
        groups, members = group_by_service(objects, digests, keys=okeys)
        if body is not None and groups is not None and not tried:
            changed = changed_by_group(body.get('services'), groups)
            if changed is not None:
                res = _partial(params, check_mode, settings, backend, paths, head, body, changed, members,
                               input_fp, _iptables, object_record(objects, digests, okeys))
                if res is not None:
                    res['sync_reason'] = reason
                    return res

    # Full sync. Without a trusted record the kernel is the truth: iptables-save runs while the
    # input is validated.
    save_proc = None if trusted else backend.start_save()
    try:
        model = load(objects, settings.node_name) if state == 'present' else None
    except BaseException:
        if save_proc is not None:
            save_proc.kill()
            save_proc.communicate()
        raise
    existing = None
    record = None
    if trusted:
        if body is None:
            body = _load_body(paths[1])
        if body is not None and body.get('id') == head.get('body_id'):
            record = dict(head, tables=body.get('tables'))
            existing = _iptables.tables_from_record(record)
    sync = 'recorded' if existing is not None else 'iptables-save'
    if trusted and existing is None:
        reason = 'record body missing or stale'
    canary_present = existing is not None
    if existing is None:
        text = backend.collect_save(save_proc) if save_proc is not None else backend.save()
        existing = _iptables.parse_save(text, tables=TABLES)
        canary_present = (':%s ' % canary) in text
        record = None
        found = _iptables.canary_token(text, canary)
        if found and found.startswith('barepod kube_svc_rules '):
            record = dict(token=found)  # the canary stays; the record is rewritten after a sync
    # KUBE-FIREWALL and KUBE-MARK-MASQ are shared with kubelet: kube-proxy's CleanupLeftovers
    # leaves them. We remove them only where we created them (they did not exist before our
    # first sync, as the record and the canary token say), so a barepod-only host is left clean.
    created = _created_shared(prefix, record, existing, token_found=record.get('token') if record else None)
    keep = set((t, c) for t, c in shared_chains(prefix) if '%s/%s' % (t, c) not in created)
    token = record.get('token') if record else None

    def owns(table, chain):
        return owns_chain(prefix, table, chain)

    track = {} if state == 'present' else None
    nat_now = existing.get('nat')
    # A first sync (the nat table holds none of our chains) on iptables-legacy: every nat chain
    # is new, so the restore can start now and parse the chains as they are rendered. Not on
    # nft: iptables-nft-restore wants the declarations sorted (in render order it takes 63 s
    # instead of 14.6 s for 10,000 Services), and there the restore dwarfs our work anyway.
    streamed = (state == 'present' and stream and backend.mode == 'legacy' and sync == 'iptables-save'
                and not check_mode and not want_diff
                and not any(owns('nat', c) for c in (nat_now.chains if nat_now else ())))
    if streamed:
        _remove_record(paths)
        failpoint('rules-before-restore')
        rs, plan, token, stream_ = _stream_first_sync(backend, model, settings, existing, keep, owns, token,
                                                      created, track)
        payload = plan.payload
        desired = dict((t, dict((c, rs.saved_rules(t, c)) for c in rs.ordered_chains(t))) for t in TABLES)
        jumps = [(t, src, saved) for t, src, _kp, saved in rs.jumps]
        hashes = None
    else:
        if state == 'present':
            rs = _render(model[0], model[1], settings, track=track)
            rs.skipped = model[2]
        else:
            rs = Ruleset(prefix)
            rs.skipped = []
        desired = dict((t, dict((c, rs.saved_rules(t, c)) for c in rs.ordered_chains(t))) for t in TABLES)
        jumps = [(t, src, saved) for t, src, _kp, saved in rs.jumps]
        # written in kube-proxy's own spelling (the batch reads like kube-proxy's), compared in
        # iptables-save's
        hashes = _chain_hashes(desired) if sync == 'recorded' else None
        plan = _iptables.plan_sync(existing, desired, jumps, owns=owns, keep=keep, tables=TABLES, hashes=hashes,
                                   sides=want_diff, write=lambda t, c: [k for k, _s in rs.chains[t][c]])
        payload = plan.payload
        if plan:
            if state == 'present' and not token:
                token = _new_token(created)
                payload = _iptables.add_canary(payload, 'mangle', canary, token)
            elif state == 'absent' and canary_present:
                payload = _iptables.remove_canary(payload, 'mangle', canary)
    result = _facts(rs, prefix)
    result['render'] = 'full' if state == 'present' else 'none'
    result['backend'] = backend.mode
    result['backend_reason'] = backend.reason
    result['sync'] = sync
    result['sync_reason'] = reason
    result['chains'] = plan.summary()
    result['restore_payload'] = payload
    result['changed'] = bool(plan)
    if want_diff:
        before, after = _iptables.diff_text(plan)
        result['diff'] = dict(before=before, after=after)
    write_record = state == 'present' and not check_mode and resync == 'auto' and not want_diff and token and (
        plan or not trusted or head.get('input_fp') != input_fp)
    if plan and not check_mode and not streamed:
        # The record goes first: should the restore fail half-way (iptables-legacy commits table
        # by table) or the run die, the next run compares with iptables-save instead of
        # trusting a record that no longer describes the kernel.
        _remove_record(paths)
        failpoint('rules-before-restore')
        backend.restore(payload)
        if state == 'absent':
            _remove_record(paths)
    record = None
    try:
        if write_record:
            # (after a streamed sync this runs while iptables-restore parses and commits)
            if digests is None:
                digests = object_digests(objects)
                input_fp = _input_fingerprint(digests[:len(inline)], texts, settings_fp)
            if groups is None and okeys is None:
                okeys = []
                groups, _members = group_by_service(objects, digests, keys=okeys)
            services = None
            if groups is not None:
                services = {}
                for key, fp in groups.items():
                    services[key] = record_entry(fp, track.get(key))
            record = (dict(version=RECORD_VERSION, backend=backend.mode, prefix=prefix, token=token, created=created,
                           jumps=_jumps_by_chain(jumps), settings_fp=settings_fp, input_fp=input_fp,
                           full_sync_at=now if sync == 'iptables-save' else head.get('full_sync_at'),
                           facts=dict((k, result[k]) for k in FACT_KEYS)),
                      dict(object_record(objects, digests, okeys) if groups is not None else {},
                           tables=hashes or _chain_hashes(desired), services=services))
    finally:
        if streamed:
            stream_.finish()   # raises when the restore failed: then no record
    if record is not None:
        _write_record(paths, *record)
    if return_payload:
        result['payload'] = rs.payload() if state == 'present' else ''
    result['restores'] = backend.restores
    return result


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


FACT_KEYS = ('services', 'endpoints', 'large_cluster_mode', 'skipped', 'rules')
RECORD_VERSION = 3


def _facts(rs, prefix):
    return dict(changed=False, services=rs.services, endpoints=rs.endpoints,
                large_cluster_mode=rs.large_cluster_mode, skipped=rs.skipped,
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


def _partial(params, check_mode, settings, backend, paths, head, body, new_fps, members, input_fp, _iptables,
             objrec):
    """Only some Services changed (kube-proxy's partial sync, from the record): render those
    alone, and when what they put into the shared chains (KUBE-SERVICES, KUBE-NODEPORTS, the
    filter chains) is unchanged, plan and write only their own chains. None: do a full sync.
    new_fps: {key: new fingerprint} of the changed Services (all in the record); objrec: the
    per-object part of the next record."""
    old = body.get('services')
    if not isinstance(old, dict):
        return None
    changed = []
    for key in new_fps:
        entry = old.get(key)
        if entry is None:
            return None            # a Service added (or renamed): the shared chains change
        if entry[REC_NO_RULES]:
            return None            # it had no rules (headless...): let the full render decide
        changed.append(key)
    sub = []
    for key in changed:
        sub.extend(members[key])
    svc_ports, endpoints, skipped = load(sub, settings.node_name)   # validates the changed input
    if skipped:
        return None
    facts = dict(head['facts'])
    total = facts['endpoints'] - sum(old[k][REC_ENDPOINTS] for k in changed) + sum(
        len(endpoints.get((sp.name_string, sp.protocol), ())) for sp in svc_ports)
    large = total > LARGE_CLUSTER_ENDPOINTS_THRESHOLD
    if large != facts['large_cluster_mode']:
        return None
    track = {}
    rs = _render(svc_ports, endpoints, settings, large=large, track=track)
    for key in changed:
        t = track.get(key)
        if t is None or _contrib_fp(t.contrib) != old[key][REC_CONTRIB_FP]:
            return None            # its cluster IP, ports, node ports... changed: full sync
    nat = _iptables.Table('nat')
    tables = body['tables']
    for key in changed:
        for c in old[key][REC_CHAINS]:
            nat.chains[c] = '-'
            nat.rules[c] = tables['nat'].get(c, '')
    want = {}
    for key in changed:
        for c in track[key].chains:
            want[c] = rs.saved_rules('nat', c)
    want = dict((c, want[c]) for c in sorted(want))
    hashes = {'nat': dict((c, _iptables.chain_hash(r)) for c, r in want.items())}
    prefix = settings.chain_prefix
    plan = _iptables.plan_sync({'nat': nat}, {'nat': want}, [], owns=lambda t, c: owns_chain(prefix, t, c),
                               tables=('nat',), hashes=hashes,
                               write=lambda t, c: [k for k, _s in rs.chains[t][c]])
    for key in changed:
        e = old[key]
        t = track[key]
        facts['services'] += t.ports - e[REC_PORTS]
        facts['rules'] = dict(facts['rules'], filter=facts['rules']['filter'] + t.filter_rules - e[REC_FILTER_RULES],
                              nat=facts['rules']['nat'] + t.nat_rules - e[REC_NAT_RULES])
    facts['endpoints'] = total
    result = dict(facts, changed=bool(plan), chain_prefix=prefix, backend=backend.mode,
                  backend_reason=backend.reason, sync='recorded', render='partial (%d of %d Services)'
                  % (len(changed), len(old)), restore_payload=plan.payload, chains=plan.summary())
    if not check_mode:
        if plan:
            _remove_record(paths)
            failpoint('rules-before-restore')
            backend.restore(plan.payload)
        nat_hashes = tables['nat']
        for key in changed:
            for c in old[key][REC_CHAINS]:
                nat_hashes.pop(c, None)
            old[key] = record_entry(new_fps[key], track[key])
        nat_hashes.update(hashes['nat'])
        head = dict(head, input_fp=input_fp, facts=dict((k, facts[k]) for k in FACT_KEYS))
        _write_record(paths, head, dict(objrec, tables=tables, services=old))
    result['restores'] = backend.restores
    return result


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
