# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kubelet's QoS classes and its resources -> cgroup value mappings.

Sources (kubernetes/kubernetes, opencontainers):
- QoS class: pkg/apis/core/v1/helper/qos/qos.go GetPodQOS (only cpu and memory count; a
  container with limits but no requests gets requests = limits, which is what API
  defaulting, pkg/apis/core/v1/defaults.go SetDefaults_Container, does before GetPodQOS).
- Shares and quota: pkg/kubelet/cm/helpers_linux.go
    MinShares = 2, MaxShares = 262144, SharesPerCPU = 1024, MilliCPUToCPU = 1000,
    QuotaPeriod = 100000 (100ms), MinQuotaPeriod = 1000 (1ms)
    MilliCPUToShares(m):  m == 0 -> MinShares; m*1024/1000 clamped to [MinShares, MaxShares]
    MilliCPUToQuota(m, period): m == 0 -> 0 (no quota); m*period/1000, at least MinQuotaPeriod
- Pod-level values: pkg/kubelet/cm/helpers_linux.go ResourceConfigForPod: Guaranteed gets
  shares, quota and memory limit; Burstable gets shares, plus quota only when every container
  declares a cpu limit and a memory limit only when every container declares one;
  BestEffort gets shares = MinShares and nothing else.
- Container-level values: pkg/kubelet/kuberuntime/kuberuntime_container_linux.go
  (calculateLinuxResources): shares from the cpu request, quota from the cpu limit, memory
  limit from the memory limit.
- cgroup v2 weight: opencontainers/cgroups utils.go ConvertCPUSharesToCgroupV2Value as in
  runc >= 1.3.2 (runc PR #4785, kubernetes issue #131216): a quadratic in log2(shares)
  mapping 2 -> 1, 1024 -> 100, 262144 -> 10000:
      l = log2(shares); exponent = (l*l + 125*l)/612 - 7/34; weight = ceil(10**exponent)
  (0 -> 0 "unset", <= 2 -> 1, >= 262144 -> 10000). The older linear formula
  1 + (shares-2)*9999/262142 is kept as shares_to_weight_linear for reference.
"""

from __future__ import annotations

import math

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
from ansible_collections.barepod.linux.plugins.module_utils._quantity import to_bytes, to_milli

MIN_SHARES = 2
MAX_SHARES = 262144
SHARES_PER_CPU = 1024
MILLI_CPU_TO_CPU = 1000
QUOTA_PERIOD = 100000
MIN_QUOTA_PERIOD = 1000
MAX_WEIGHT = 10000

GUARANTEED = 'Guaranteed'
BURSTABLE = 'Burstable'
BEST_EFFORT = 'BestEffort'
QOS_CLASSES = (GUARANTEED, BURSTABLE, BEST_EFFORT)
QOS_DIR = {GUARANTEED: '', BURSTABLE: 'burstable', BEST_EFFORT: 'besteffort'}
SUPPORTED = ('cpu', 'memory')


def millicpu_to_shares(milli):
    """kubelet MilliCPUToShares."""
    if milli == 0:
        return MIN_SHARES
    shares = (milli * SHARES_PER_CPU) // MILLI_CPU_TO_CPU
    return max(MIN_SHARES, min(MAX_SHARES, shares))


def millicpu_to_quota(milli, period=QUOTA_PERIOD):
    """kubelet MilliCPUToQuota: 0 means 'no quota' (the caller writes -1 / max)."""
    if milli == 0:
        return 0
    quota = (milli * period) // MILLI_CPU_TO_CPU
    return max(quota, MIN_QUOTA_PERIOD)


def shares_to_weight(shares):
    """runc (opencontainers/cgroups) ConvertCPUSharesToCgroupV2Value, current quadratic form."""
    if shares == 0:
        return 0
    if shares <= 2:
        return 1
    if shares >= MAX_SHARES:
        return MAX_WEIGHT
    lg = math.log2(shares)
    exponent = (lg * lg + 125 * lg) / 612.0 - 7.0 / 34.0
    return int(math.ceil(10 ** exponent))


def shares_to_weight_linear(shares):
    """The formula runc used before 1.3.2: 1 + (shares-2)*9999/262142."""
    if shares == 0:
        return 0
    return 1 + ((shares - 2) * 9999) // 262142


def _norm_container(c, idx, field):
    if not isinstance(c, dict):
        raise BarepodError('each container must be a dict with name and resources, got %r' % (c,),
                           field='%s[%d]' % (field, idx), value=c)
    res = c.get('resources') or {}
    if not isinstance(res, dict):
        raise BarepodError('resources must be a dict with requests and limits', field='%s[%d].resources'
                           % (field, idx), value=res)
    out = {'name': c.get('name'), 'requests': {}, 'limits': {}}
    for kind in ('requests', 'limits'):
        sect = res.get(kind) or {}
        if not isinstance(sect, dict):
            raise BarepodError('must be a dict of resource name -> quantity',
                               field='%s[%d].resources.%s' % (field, idx, kind), value=sect)
        for rname, q in sect.items():
            f = '%s[%d].resources.%s.%s' % (field, idx, kind, rname)
            if rname == 'cpu':
                out[kind]['cpu'] = to_milli(q, f)
            elif rname == 'memory':
                out[kind]['memory'] = to_bytes(q, f)
            else:
                # other resources (ephemeral-storage, hugepages-*) are validated, not used
                to_bytes(q, f)
    # API defaulting: a limit without a request makes the request equal to the limit
    for rname, v in out['limits'].items():
        out['requests'].setdefault(rname, v)
    for rname in SUPPORTED:
        req, lim = out['requests'].get(rname), out['limits'].get(rname)
        if req is not None and lim is not None and req > lim:
            raise BarepodError('request %s must be less than or equal to the limit %s' % (req, lim),
                               field='%s[%d].resources.requests.%s' % (field, idx, rname), value=req)
    return out


def normalise_containers(containers, field='containers'):
    """Pod spec containers -> [{name, requests: {cpu: milli, memory: bytes}, limits: {...}}]."""
    if containers is None:
        return []
    if not isinstance(containers, list):
        raise BarepodError('must be a list of containers', field=field, value=containers)
    return [_norm_container(c, i, field) for i, c in enumerate(containers)]


def qos_class(containers):
    """GetPodQOS on normalised containers."""
    requests = {}
    limits = {}
    guaranteed = True
    for c in containers:
        for rname in SUPPORTED:
            v = c['requests'].get(rname, 0)
            if v:
                requests[rname] = requests.get(rname, 0) + v
        found = set()
        for rname in SUPPORTED:
            v = c['limits'].get(rname, 0)
            if v:
                found.add(rname)
                limits[rname] = limits.get(rname, 0) + v
        if found != set(SUPPORTED):
            guaranteed = False
    if not requests and not limits:
        return BEST_EFFORT
    if guaranteed:
        for rname, v in requests.items():
            if limits.get(rname) != v:
                guaranteed = False
                break
    if guaranteed and len(requests) == len(limits):
        return GUARANTEED
    return BURSTABLE


def pod_config(containers, period=QUOTA_PERIOD):
    """ResourceConfigForPod: {'cpu_shares', 'cpu_quota' (None = unlimited), 'cpu_period',
    'memory_limit' (None = unlimited)} for the pod cgroup."""
    qos = qos_class(containers)
    cpu_req = sum(c['requests'].get('cpu', 0) for c in containers)
    cpu_lim = sum(c['limits'].get('cpu', 0) for c in containers)
    mem_lim = sum(c['limits'].get('memory', 0) for c in containers)
    cpu_declared = bool(containers) and all(c['limits'].get('cpu', 0) for c in containers)
    mem_declared = bool(containers) and all(c['limits'].get('memory', 0) for c in containers)
    shares = millicpu_to_shares(cpu_req)
    quota = millicpu_to_quota(cpu_lim, period)
    cfg = {'qos_class': qos, 'cpu_shares': shares, 'cpu_quota': None, 'cpu_period': period,
           'memory_limit': None}
    if qos == GUARANTEED:
        cfg.update(cpu_quota=quota or None, memory_limit=mem_lim)
    elif qos == BURSTABLE:
        if cpu_declared:
            cfg['cpu_quota'] = quota or None
        if mem_declared:
            cfg['memory_limit'] = mem_lim
    else:
        cfg['cpu_shares'] = MIN_SHARES
    return cfg


def container_config(container, period=QUOTA_PERIOD):
    """Container cgroup values from one normalised container."""
    cpu_req = container['requests'].get('cpu', 0)
    cpu_lim = container['limits'].get('cpu', 0)
    mem_lim = container['limits'].get('memory', 0)
    return {'cpu_shares': millicpu_to_shares(cpu_req),
            'cpu_quota': millicpu_to_quota(cpu_lim, period) or None,
            'cpu_period': period,
            'memory_limit': mem_lim or None}
