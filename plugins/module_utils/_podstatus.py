# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A pod's status as the Kubernetes API reports it, computed from the pod record and /proc.

The pod record (see _state.py) holds what each module built: 'sandbox' and 'containers'
(ns_sandbox), 'network' (veth_net), 'cgroups' (cgroup_limit), 'rootfs' (chroot_rootfs) and
'manifest' (the Pod object the pod role converged, kept so labels can be selected on). This
module turns that into the v1 PodStatus shape (phase, podIP(s), hostIP(s), startTime,
conditions, containerStatuses, qosClass) and a `kubectl get pods -o wide` row.

Times come from the records (when a process was started), never from "now", so the status
of an unchanged pod serialises to the same bytes and a converged run writes nothing.
"""

from __future__ import annotations

import calendar
import os
import time

from ansible_collections.barepod.linux.plugins.module_utils import _defaults
from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError, Manager, pid_alive, result
from ansible_collections.barepod.linux.plugins.module_utils._state import PodRecord, list_records, pod_key

MANIFEST_SECTION = 'manifest'


def _alive(entry):
    return bool(entry) and bool(entry.get('pid')) and pid_alive(entry.get('pid'), entry.get('starttime'))


def _manifest_containers(rec):
    spec = (rec.get(MANIFEST_SECTION) or {}).get('spec') or {}
    return [c for c in spec.get('containers') or [] if isinstance(c, dict) and c.get('name')]


def compute_status(rec, host_ip=None, alive=_alive):
    """PodStatus dict for one record (dict as loaded from record.json)."""
    sandbox = rec.get('sandbox') or {}
    recorded = rec.get('containers') or {}
    network = rec.get('network') or {}
    manifest_ctrs = _manifest_containers(rec)
    names = [c['name'] for c in manifest_ctrs] or sorted(recorded)
    images = dict((c['name'], c.get('image', '')) for c in manifest_ctrs)
    sb_alive = alive(sandbox)
    started = sandbox.get('started_at')

    statuses = []
    for n in names:
        c = recorded.get(n) or {}
        running = sb_alive and alive(c)
        st = dict(name=n, image=images.get(n, ''), imageID='', ready=running, started=running,
                  restartCount=int(c.get('restart_count', 0) or 0))
        if c.get('spec_hash'):
            st['containerID'] = 'barepod://%s' % c['spec_hash'][:64]
        if running:
            st['state'] = {'running': {'startedAt': c.get('started_at')}}
        elif c:
            st['state'] = {'terminated': {'reason': 'Error', 'startedAt': c.get('started_at'), 'exitCode': -1}}
        else:
            st['state'] = {'waiting': {'reason': 'ContainerCreating'}}
        st['lastState'] = {}
        statuses.append(st)

    all_running = bool(statuses) and all(s['ready'] for s in statuses)
    any_started = any('running' in s['state'] for s in statuses)
    if sb_alive and statuses and all(n in recorded for n in names) and any_started:
        phase = 'Running'
    else:
        phase = 'Pending'

    net_ready = sb_alive and (bool(network.get('ip')) or 'net' not in (sandbox.get('namespaces') or []))
    t = started

    def cond(ctype, ok):
        return dict(type=ctype, status='True' if ok else 'False', lastProbeTime=None, lastTransitionTime=t)

    conditions = [
        cond('PodReadyToStartContainers', net_ready),
        cond('Initialized', True),
        cond('Ready', all_running and net_ready),
        cond('ContainersReady', all_running),
        cond('PodScheduled', True),
    ]
    status = dict(phase=phase, conditions=conditions, containerStatuses=statuses, startTime=started)
    if network.get('ip'):
        status['podIP'] = network['ip']
        status['podIPs'] = [{'ip': network['ip']}]
    if host_ip:
        status['hostIP'] = host_ip
        status['hostIPs'] = [{'ip': host_ip}]
    qos = (rec.get('cgroups') or {}).get('qos_class')
    if qos:
        status['qosClass'] = qos
    return status


def _age(started, now=None):
    if not started:
        return '<unknown>'
    try:
        t0 = calendar.timegm(time.strptime(started, '%Y-%m-%dT%H:%M:%SZ'))
    except ValueError:
        return '<unknown>'
    secs = max(0, int((now if now is not None else time.time()) - t0))
    # kubectl's duration.HumanDuration, coarsely: 45s, 5m3s, 3h2m, 2d3h
    if secs < 120:
        return '%ds' % secs
    mins = secs // 60
    if mins < 10:
        return '%dm%ds' % (mins, secs % 60)
    if mins < 180:
        return '%dm' % mins
    hours = mins // 60
    if hours < 48:
        return '%dh%dm' % (hours, mins % 60) if hours < 8 else '%dh' % hours
    return '%dd%dh' % (hours // 24, hours % 24)


def wide_row(namespace, name, status, node, now=None):
    """One `kubectl get pods -o wide` row (NAME READY STATUS RESTARTS AGE IP NODE)."""
    cs = status.get('containerStatuses') or []
    return dict(
        namespace=namespace, name=name,
        ready='%d/%d' % (sum(1 for c in cs if c.get('ready')), len(cs)),
        status=status.get('phase', 'Unknown'),
        restarts=sum(int(c.get('restartCount', 0)) for c in cs),
        age=_age(status.get('startTime'), now),
        ip=status.get('podIP', '<none>'),
        node=node or '<none>')


def format_table(rows):
    cols = [('NAME', 'name'), ('READY', 'ready'), ('STATUS', 'status'), ('RESTARTS', 'restarts'),
            ('AGE', 'age'), ('IP', 'ip'), ('NODE', 'node')]
    cells = [[head for head, _key in cols]] + [[str(r.get(key, '')) for _head, key in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return ['   '.join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]


def pod_view(rec, host_ip=None, node=None):
    md = (rec.get(MANIFEST_SECTION) or {}).get('metadata') or {}
    status = compute_status(rec, host_ip)
    # spec: the recorded Pod spec, so Services can resolve named targetPorts (endpointslices filter)
    return dict(namespace=rec.get('namespace'), name=rec.get('name'), uid=rec.get('uid'),
                labels=md.get('labels') or {}, node=node, status=status,
                row=wide_row(rec.get('namespace'), rec.get('name'), status, node),
                spec=(rec.get(MANIFEST_SECTION) or {}).get('spec') or {})


def manifest_summary(manifest):
    """What of the Pod object the record keeps: metadata (name, namespace, uid, labels) and spec."""
    md = dict(manifest.get('metadata') or {})
    keep = dict((k, md[k]) for k in ('name', 'namespace', 'uid', 'labels', 'annotations') if k in md)
    return dict(apiVersion=manifest.get('apiVersion', 'v1'), kind=manifest.get('kind', 'Pod'),
                metadata=keep, spec=manifest.get('spec') or {})


class PodStatusManager(Manager):
    """pod_status: the pod's status as Kubernetes reports it, from the pod record (and the record's
    manifest summary kept, or the record removed with state=absent)."""

    def __init__(self, params, check_mode=False, diff=False):
        super().__init__(params, check_mode, diff)
        self.p = params
        self.state_root = params.get('state_root') or _defaults.STATE_ROOT
        self.diff = None

    def validate(self):
        """The names (a valid pod key) and the manifest's metadata.name, before anything is read."""
        p = self.p
        if p.get('name'):
            pod_key(p.get('namespace') or 'default', p['name'])
        if p.get('manifest') is not None:
            md = p['manifest'].get('metadata') or {}
            if md.get('name') not in (None, p.get('name')):
                raise BarepodError('metadata.name %r does not match name %r' % (md.get('name'), p.get('name')),
                                   field='manifest', value=md.get('name'))

    def _one(self, namespace, name):
        rec = PodRecord(namespace, name, self.state_root)
        changed = False
        data = rec.load()
        manifest = self.p.get('manifest')
        if manifest is not None:
            summary = manifest_summary(manifest)
            if data.get(MANIFEST_SECTION) != summary:
                changed = True
                if not self.check_mode:
                    rec.update(MANIFEST_SECTION, summary)
                data[MANIFEST_SECTION] = summary
        if not data.get('sandbox') and not data.get('containers') and manifest is None:
            return dict(exists=False, changed=False, pod=None)
        before = rec.load_status()
        host_ip = self.p.get('host_ip') or before.get('hostIP')  # as recorded by the last bring-up
        view = pod_view(dict(data, namespace=namespace, name=name), host_ip, self.p.get('node'))
        self.diff = dict(before=dict(manifest=data.get(MANIFEST_SECTION) if manifest is None else
                                     rec.load().get(MANIFEST_SECTION), status=before),
                         after=dict(manifest=data.get(MANIFEST_SECTION), status=view['status']))
        if self.p.get('update', True):
            if before != view['status']:
                changed = True
                if not self.check_mode:
                    rec.write_status(view['status'])
        return dict(exists=True, changed=changed, pod=view)

    def _absent(self, namespace, name):
        rec = PodRecord(namespace, name, self.state_root)
        if not os.path.exists(rec.path):
            return dict(changed=False, exists=False, pods=[], table=format_table([]))
        leftover = sorted(k for k, v in rec.load().items()
                          if v and k not in ('uid', 'namespace', 'name', MANIFEST_SECTION))
        if leftover and not self.p.get('force'):
            raise BarepodError('pod %s/%s still has %s in its record: tear those down first (or force=true)'
                               % (namespace, name, ', '.join(leftover)), field='name', value=name)
        if not self.check_mode:
            rec.remove()
        return dict(changed=True, exists=False, pods=[], table=format_table([]))

    def run(self):
        self.validate()
        out = self._run()
        return result(out.pop('changed'), (), self.diff, (), **out)

    def _run(self):
        ns, name = self.p.get('namespace') or 'default', self.p.get('name')
        if self.p.get('state') == 'absent':
            return self._absent(ns, name)
        if name:
            r = self._one(ns, name)
            pods = [r['pod']] if r['pod'] else []
            out = dict(changed=r['changed'], exists=r['exists'], pods=pods)
            if r['pod']:
                out['status'] = r['pod']['status']
                out['pod'] = r['pod']
        else:
            pods = []
            for rec in list_records(self.state_root):
                if self.p.get('namespace') and rec.get('namespace') != self.p['namespace']:
                    continue
                host_ip = self.p.get('host_ip')
                if not host_ip:  # the address the pod role recorded with the status
                    host_ip = PodRecord(rec['namespace'], rec['name'], self.state_root).load_status().get('hostIP')
                pods.append(pod_view(rec, host_ip, self.p.get('node')))
            out = dict(changed=False, pods=pods)
        sel = self.p.get('selector') or {}
        if sel:
            out['pods'] = [p for p in out['pods'] if all(p['labels'].get(k) == v for k, v in sel.items())]
        out['table'] = format_table([p['row'] for p in out['pods']])
        return out
