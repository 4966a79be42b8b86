# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that turn a v1 Pod manifest into the arguments of the barepod modules.

The pod role stays declarative: these filters do the translation kubelet does in Go
(volumes to mounts, container fields to the runtime's process spec) in testable Python.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
name: pod
short_description: Translate a v1 Pod manifest into barepod module arguments
version_added: 0.1.0
description:
  - C(pod_identity) returns the pod's name, namespace and uid (C(metadata.uid), or a stable uuid5
    of C(namespace/name) when the manifest has none, as the API server would have assigned one).
  - C(pod_container_source) returns the M(barepod.linux.chroot_rootfs) source for a container's image
    (C(busybox) for busybox images, else a local archive from a map of image references).
  - C(pod_container_mounts) returns the chroot_rootfs mounts for a container's volumeMounts
    (hostPath as a bind, emptyDir with medium Memory as tmpfs).
  - C(pod_container_spec) returns the M(barepod.linux.ns_sandbox) container entry.
  - C(pod_validate) checks the manifest and returns it, failing with the offending field named.
author:
  - barepod.linux developers (@barepod)
options:
  _input:
    description: The Pod manifest (or a container of it).
    type: dict
    required: true
'''

EXAMPLES = r'''
- name: Identity of the chapter's pod
  ansible.builtin.set_fact:
    pod_id: "{{ manifest | barepod.linux.pod_identity }}"
'''

RETURN = r'''
_value:
  description: See the description of each filter.
  type: raw
'''

import re
import uuid

from ansible.errors import AnsibleFilterError

NAME_RE = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')
SUBDOMAIN_RE = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')
# uuid5 namespace for pods without metadata.uid (stable across runs and hosts)
BAREPOD_NS = uuid.UUID('6ba7b811-9dad-11d1-80b4-00c04fd430c8')  # RFC 4122 URL namespace


def _fail(field, msg):
    raise AnsibleFilterError('%s: %s' % (field, msg))


def pod_validate(manifest):
    if not isinstance(manifest, dict):
        _fail('manifest', 'must be a Pod object (a mapping), got %s' % type(manifest).__name__)
    if manifest.get('kind', 'Pod') != 'Pod':
        _fail('kind', 'must be Pod, got %r' % manifest.get('kind'))
    md = manifest.get('metadata') or {}
    name = md.get('name')
    if not isinstance(name, str) or len(name) > 253 or not SUBDOMAIN_RE.match(name):
        _fail('metadata.name', '%r is not a valid DNS-1123 subdomain' % (name,))
    ns = md.get('namespace') or 'default'
    if not isinstance(ns, str) or len(ns) > 63 or not NAME_RE.match(ns):
        _fail('metadata.namespace', '%r is not a valid DNS-1123 label' % (ns,))
    labels = md.get('labels') or {}
    if not isinstance(labels, dict):
        _fail('metadata.labels', 'must be a mapping')
    for k, v in labels.items():
        if not isinstance(v, str) or len(v) > 63 or '\n' in v:
            _fail('metadata.labels.%s' % k, 'label values are strings of at most 63 characters')
    spec = manifest.get('spec') or {}
    ctrs = spec.get('containers')
    if not isinstance(ctrs, list) or not ctrs:
        _fail('spec.containers', 'a pod needs at least one container')
    seen = set()
    for i, c in enumerate(ctrs):
        f = 'spec.containers[%d]' % i
        if not isinstance(c, dict):
            _fail(f, 'must be a mapping')
        cname = c.get('name')
        if not isinstance(cname, str) or len(cname) > 63 or not NAME_RE.match(cname):
            _fail(f + '.name', '%r is not a valid DNS-1123 label' % (cname,))
        if cname in seen:
            _fail(f + '.name', 'duplicate container name %r' % cname)
        seen.add(cname)
        for key in ('command', 'args'):
            if c.get(key) is not None and not isinstance(c.get(key), list):
                _fail('%s.%s' % (f, key), 'must be a list of strings')
    vols = dict((v.get('name'), v) for v in spec.get('volumes') or [] if isinstance(v, dict))
    for i, c in enumerate(ctrs):
        for j, vm in enumerate(c.get('volumeMounts') or []):
            f = 'spec.containers[%d].volumeMounts[%d]' % (i, j)
            if vm.get('name') not in vols:
                _fail(f + '.name', 'no volume named %r in spec.volumes' % (vm.get('name'),))
            if not str(vm.get('mountPath', '')).startswith('/'):
                _fail(f + '.mountPath', 'must be an absolute path, got %r' % (vm.get('mountPath'),))
    return manifest


def pod_identity(manifest):
    pod_validate(manifest)
    md = manifest.get('metadata') or {}
    ns = md.get('namespace') or 'default'
    uid = md.get('uid') or str(uuid.uuid5(BAREPOD_NS, 'barepod:pod:%s/%s' % (ns, md['name'])))
    return dict(name=md['name'], namespace=ns, uid=uid)


def pod_container_source(container, images=None, busybox_images=None):
    """{'busybox': bool, 'image': path|None} for chroot_rootfs."""
    image = container.get('image') or ''
    images = images or {}
    if image in images:
        return dict(busybox=False, image=images[image])
    patterns = busybox_images if busybox_images is not None else ['busybox']
    repo = image.rsplit('@', 1)[0]
    last = repo.rsplit('/', 1)[-1].split(':', 1)[0]
    if any(last == p or repo == p for p in patterns):
        return dict(busybox=True, image=None)
    _fail('spec.containers[%s].image' % container.get('name'),
          '%r is neither a busybox image nor in pod_images (no registry is reachable: map the image '
          'reference to a local archive or directory)' % image)


def pod_container_mounts(container, volumes=None):
    """chroot_rootfs mounts for a container's volumeMounts."""
    vols = dict((v.get('name'), v) for v in volumes or [])
    out = []
    for j, vm in enumerate(container.get('volumeMounts') or []):
        f = 'spec.containers[%s].volumeMounts[%d]' % (container.get('name'), j)
        v = vols.get(vm.get('name'))
        if v is None:
            _fail(f + '.name', 'no volume named %r' % (vm.get('name'),))
        target = vm.get('mountPath')
        ro = bool(vm.get('readOnly', False))
        if 'hostPath' in v:
            src = (v['hostPath'] or {}).get('path')
            if vm.get('subPath'):
                src = src.rstrip('/') + '/' + vm['subPath']
            out.append(dict(type='bind', source=src, target=target, read_only=ro))
        elif 'emptyDir' in v and ((v['emptyDir'] or {}).get('medium') == 'Memory'):
            m = dict(type='tmpfs', target=target, read_only=ro)
            if (v['emptyDir'] or {}).get('sizeLimit'):
                m['size'] = str(v['emptyDir']['sizeLimit'])
            out.append(m)
        else:
            kinds = sorted(k for k in v if k != 'name')
            _fail('spec.volumes[%s]' % v.get('name'),
                  'volume type %s is not supported (hostPath and emptyDir medium Memory are)' % ','.join(kinds))
    return out


def pod_container_spec(container, rootfs, cgroups=None):
    """The ns_sandbox container entry for a Pod container."""
    spec = dict(name=container['name'], rootfs=rootfs)
    for k in ('command', 'args'):
        if container.get(k):
            spec[k] = [str(a) for a in container[k]]
    env = []
    for e in container.get('env') or []:
        if 'value' in e or 'valueFrom' not in e:
            env.append(dict(name=e['name'], value=str(e.get('value', ''))))
    if env:
        spec['env'] = env
    if container.get('workingDir'):
        spec['working_dir'] = container['workingDir']
    sc = container.get('securityContext') or {}
    if sc.get('runAsUser') is not None or sc.get('runAsGroup') is not None:
        spec['security_context'] = dict((k, sc[kk]) for k, kk in (('run_as_user', 'runAsUser'),
                                                                   ('run_as_group', 'runAsGroup'))
                                        if sc.get(kk) is not None)
    if cgroups:
        spec['cgroups'] = list(cgroups)
    return spec


def pod_container_specs(manifest, rootfs_root, uid, cgroup_results=None):
    """ns_sandbox containers for every container of the pod.

    cgroup_results: the registered results of the per-container cgroup_limit loop (in container
    order); each one's C(paths) values become the cgroups the container joins before exec.
    """
    spec = manifest.get('spec') or {}
    out = []
    results = list(cgroup_results or [])
    for i, c in enumerate(spec.get('containers') or []):
        paths = []
        if i < len(results):
            for p in (results[i].get('paths') or {}).values():
                if p not in paths:
                    paths.append(p)
        out.append(pod_container_spec(c, '%s/%s/%s' % (rootfs_root.rstrip('/'), uid, c['name']), paths))
    return out


class FilterModule(object):
    def filters(self):
        return dict(pod_validate=pod_validate, pod_identity=pod_identity,
                    pod_container_source=pod_container_source, pod_container_mounts=pod_container_mounts,
                    pod_container_spec=pod_container_spec, pod_container_specs=pod_container_specs)
