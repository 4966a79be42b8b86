# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cgroup audit (cgroup_info): read every cgroup of a subtree, check it against a policy.

Read-only: walks the primary hierarchy (the cgroup2 mount, or v1's memory controller) with
_cgroups.walk, reads each cgroup's limits, usage and events through _cgroups' readers (the
same normalisation the limit writer compares against), and reports the pods that break the
policy (no memory limit, a limit above the ceiling, limits summing above the node's memory,
empty pods, a CPU limit without a request). The limit writer (cgroup_limit) is _cgroups.
"""

from __future__ import annotations

import os

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError, Manager, result
from ansible_collections.barepod.linux.plugins.module_utils._cgroups import (
    DEFAULT_CGROUP_ROOT, DEFAULT_MOUNTINFO, PAGE_SIZE, UNLIMITED, _kv, _mem_norm, _num, detect, parse_pod_path,
    read_file, validate_relpath, walk)

V1_FILES = {
    'memory': ('memory.limit_in_bytes', 'memory.usage_in_bytes', 'memory.max_usage_in_bytes',
               'memory.failcnt', 'memory.oom_control'),
    'cpu': ('cpu.shares', 'cpu.cfs_quota_us', 'cpu.cfs_period_us', 'cpu.stat'),
    'cpuacct': ('cpuacct.usage',),
    'pids': ('pids.max', 'pids.current'),
}
V2_FILES = ('memory.max', 'memory.current', 'memory.peak', 'memory.events', 'cpu.weight',
            'cpu.max', 'cpu.stat', 'pids.max', 'pids.current')


def read_cgroup_v1(layout, rel, page=PAGE_SIZE):
    """One cgroup's limits, usage and events on v1 (files of memory, cpu, cpuacct, pids)."""
    mem = layout.v1.get('memory')
    cpu = layout.v1.get('cpu')
    acct = layout.v1.get('cpuacct')
    pids = layout.v1.get('pids')
    j = os.path.join
    info = {'limits': {}, 'usage': {}, 'events': {}}
    procs_dir = None
    if mem:
        d = j(mem, rel) if rel else mem
        procs_dir = d
        lim = read_file(j(d, 'memory.limit_in_bytes'))
        info['limits']['memory'] = _mem_norm(lim, page) if lim is not None else None
        info['usage']['memory_current'] = _num(read_file(j(d, 'memory.usage_in_bytes')))
        info['usage']['memory_peak'] = _num(read_file(j(d, 'memory.max_usage_in_bytes')))
        info['events']['failcnt'] = _num(read_file(j(d, 'memory.failcnt')))
        oc = _kv(read_file(j(d, 'memory.oom_control')))
        info['events']['oom_kill'] = oc.get('oom_kill')
        info['events']['under_oom'] = oc.get('under_oom')
    if cpu:
        d = j(cpu, rel) if rel else cpu
        procs_dir = procs_dir or d
        info['limits']['cpu_shares'] = _num(read_file(j(d, 'cpu.shares')))
        q = _num(read_file(j(d, 'cpu.cfs_quota_us')))
        info['limits']['cpu_quota'] = UNLIMITED if isinstance(q, int) and q < 0 else q
        info['limits']['cpu_period'] = _num(read_file(j(d, 'cpu.cfs_period_us')))
        st = _kv(read_file(j(d, 'cpu.stat')))
        info['usage']['nr_throttled'] = st.get('nr_throttled')
        info['usage']['throttled_usec'] = (st['throttled_time'] // 1000) if 'throttled_time' in st else None
    if acct:
        d = j(acct, rel) if rel else acct
        u = _num(read_file(j(d, 'cpuacct.usage')))
        info['usage']['cpu_usec'] = u // 1000 if isinstance(u, int) else None
    if pids:
        d = j(pids, rel) if rel else pids
        info['limits']['pids'] = _num(read_file(j(d, 'pids.max')))
        info['usage']['pids_current'] = _num(read_file(j(d, 'pids.current')))
    raw = read_file(j(procs_dir, 'cgroup.procs')) if procs_dir else None
    info['procs'] = len(raw.split()) if raw else 0
    return info


def read_cgroup_v2(mount, rel, page=PAGE_SIZE):
    j = os.path.join
    d = j(mount, rel) if rel else mount
    info = {'limits': {}, 'usage': {}, 'events': {}}
    lim = read_file(j(d, 'memory.max'))
    info['limits']['memory'] = _mem_norm(lim, page) if lim is not None else None
    info['usage']['memory_current'] = _num(read_file(j(d, 'memory.current')))
    info['usage']['memory_peak'] = _num(read_file(j(d, 'memory.peak')))
    ev = _kv(read_file(j(d, 'memory.events')))
    info['events']['oom'] = ev.get('oom')
    info['events']['oom_kill'] = ev.get('oom_kill')
    info['events']['max'] = ev.get('max')
    info['limits']['cpu_weight'] = _num(read_file(j(d, 'cpu.weight')))
    cm = read_file(j(d, 'cpu.max'))
    if cm:
        q, _sep, p = cm.strip().partition(' ')
        info['limits']['cpu_quota'] = UNLIMITED if q == 'max' else int(q)
        info['limits']['cpu_period'] = int(p) if p else None
    else:
        info['limits']['cpu_quota'] = None
    st = _kv(read_file(j(d, 'cpu.stat')))
    info['usage']['cpu_usec'] = st.get('usage_usec')
    info['usage']['nr_throttled'] = st.get('nr_throttled')
    info['usage']['throttled_usec'] = st.get('throttled_usec')
    info['limits']['pids'] = _num(read_file(j(d, 'pids.max')))
    info['usage']['pids_current'] = _num(read_file(j(d, 'pids.current')))
    raw = read_file(j(d, 'cgroup.procs'))
    info['procs'] = len(raw.split()) if raw else 0
    return info


def node_memory_total(meminfo='/proc/meminfo'):
    raw = read_file(meminfo) or ''
    for line in raw.splitlines():
        if line.startswith('MemTotal:'):
            parts = line.split()
            return int(parts[1]) * (1024 if len(parts) > 2 and parts[2] == 'kB' else 1)
    raise BarepodError('no MemTotal in %s' % meminfo, field='meminfo', value=meminfo)


def collect(layout, subtree='', max_depth=None, page=PAGE_SIZE):
    """Walk the subtree in the primary hierarchy and read every cgroup's files."""
    v2 = layout.mode == 'v2' or not layout.v1
    if v2:
        primary = layout.unified
    else:
        primary = layout.v1.get('memory') or sorted(layout.v1.values())[0]

    def reader(r):
        return read_cgroup_v2(primary, r, page) if v2 else read_cgroup_v1(layout, r, page)
    top = os.path.join(primary, subtree) if subtree else primary
    if not os.path.isdir(top):
        return None
    out = []
    for r in walk(top, max_depth):
        rel = (subtree + '/' + r if r else subtree) if subtree else r
        info = reader(rel)
        qos, uid, container = parse_pod_path(rel)
        info['path'] = rel or '/'
        info['qos_class'] = qos
        info['pod_uid'] = uid
        info['container'] = container
        out.append(info)
    return out


def audit(cgroups, policy, node_memory, subtree):
    """Policy checks over collected cgroups -> (summary, violations)."""
    violations = []
    pods = [c for c in cgroups if c['pod_uid'] and not c['container']]
    procs_by_pod = {}
    for c in cgroups:
        if c['pod_uid']:
            procs_by_pod[c['pod_uid']] = procs_by_pod.get(c['pod_uid'], 0) + (c['procs'] or 0)
    limited = [c for c in pods if isinstance(c['limits'].get('memory'), int)]
    total = sum(c['limits']['memory'] for c in limited)
    ceiling = policy.get('memory_limit_ceiling')
    for c in pods:
        if policy.get('require_memory_limit', True) and not isinstance(c['limits'].get('memory'), int):
            violations.append({'path': c['path'], 'reason': 'no_memory_limit', 'pod_uid': c['pod_uid'],
                               'qos_class': c['qos_class'],
                               'message': 'pod cgroup has no memory limit'})
        if policy.get('check_empty_pods', True) and procs_by_pod.get(c['pod_uid'], 0) == 0:
            violations.append({'path': c['path'], 'reason': 'empty_pod_cgroup', 'pod_uid': c['pod_uid'],
                               'message': 'pod cgroup holds no processes (left behind?)'})
    for c in cgroups:
        if not c['pod_uid']:
            continue
        lim = c['limits'].get('memory')
        if ceiling is not None and isinstance(lim, int) and lim > ceiling:
            violations.append({'path': c['path'], 'reason': 'memory_limit_above_ceiling', 'pod_uid': c['pod_uid'],
                               'limit': lim, 'ceiling': ceiling,
                               'message': 'memory limit %d is above the ceiling %d' % (lim, ceiling)})
        if policy.get('check_cpu_limit_without_request', True):
            quota = c['limits'].get('cpu_quota')
            minimal = (c['limits'].get('cpu_shares') == 2) if 'cpu_shares' in c['limits'] else \
                (c['limits'].get('cpu_weight') == 1)
            if isinstance(quota, int) and quota > 0 and minimal:
                violations.append({'path': c['path'], 'reason': 'cpu_limit_without_request', 'pod_uid': c['pod_uid'],
                                   'cpu_quota': quota,
                                   'message': 'cpu quota %d set while cpu shares/weight are at the minimum' % quota})
    if policy.get('check_node_memory', True) and node_memory and total > node_memory:
        violations.append({'path': subtree or '/', 'reason': 'pod_limits_exceed_node_memory', 'total': total,
                           'node_memory': node_memory,
                           'message': 'sum of pod memory limits %d exceeds node memory %d' % (total, node_memory)})
    summary = {'cgroups': len(cgroups), 'pods': len(pods), 'memory_limited': len(limited),
               'memory_unlimited': len(pods) - len(limited), 'memory_limits_total': total,
               'node_memory': node_memory, 'violations': len(violations),
               'processes': sum(c['procs'] or 0 for c in cgroups),
               'oom_kills': sum((c['events'].get('oom_kill') or 0) for c in pods)}
    return summary, violations


class CgroupInfo(Manager):
    """cgroup_info: read-only, so changed is always false and there is nothing to diff."""

    def run(self):
        params = self.params
        from ansible_collections.barepod.linux.plugins.module_utils._quantity import to_bytes
        subtree = validate_relpath('path', params.get('path'), allow_empty=True)
        policy = dict(require_memory_limit=params.get('require_memory_limit', True),
                      check_empty_pods=params.get('check_empty_pods', True),
                      check_node_memory=params.get('check_node_memory', True),
                      check_cpu_limit_without_request=params.get('check_cpu_limit_without_request', True))
        if params.get('memory_limit_ceiling') is not None:
            policy['memory_limit_ceiling'] = to_bytes(params['memory_limit_ceiling'], 'memory_limit_ceiling')
        if params.get('node_memory') is not None:
            node_memory = to_bytes(params['node_memory'], 'node_memory')
        else:
            node_memory = node_memory_total(params.get('meminfo') or '/proc/meminfo')
        max_depth = params.get('max_depth')
        layout = detect(params.get('cgroup_root') or DEFAULT_CGROUP_ROOT,
                        params.get('mountinfo') or DEFAULT_MOUNTINFO, params.get('hierarchy') or 'auto')
        cgroups = collect(layout, subtree, max_depth)
        exists = cgroups is not None
        cgroups = cgroups or []
        summary, violations = audit(cgroups, policy, node_memory, subtree)
        report = params.get('report') or 'pods'
        if report == 'pods':
            listed = [c for c in cgroups if c['pod_uid']]
        elif report == 'all':
            listed = cgroups
        else:
            listed = []
        return result(False, exists=exists, path=subtree, hierarchy=layout.as_dict(),
                      summary=summary, violations=violations, cgroups=listed)


def run_info(params):
    """The audit's result (CgroupInfo(params).run())."""
    return CgroupInfo(params).run()
