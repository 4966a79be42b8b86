# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that turn a v1 Pod manifest into the arguments of the barepod modules.

The pod role stays declarative: these filters do the translation kubelet does in Go
(volumes to mounts, container fields to the runtime's process spec) in testable Python.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

# Each filter is documented in its own file next to this one (pod_validate.yml, pod_identity.yml,
# pod_container_source.yml, pod_container_mounts.yml, pod_container_spec.yml, pod_container_specs.yml,
# pod_module_args.yml): one page per filter, with its positional arguments, as ansible-doc shows them.

import re
import uuid

from ansible.errors import AnsibleFilterError

from ansible_collections.barepod.linux.plugins.module_utils import _defaults, _qos, _quantity
from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError

NAME_RE = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z')
SUBDOMAIN_RE = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z')
# uuid5 namespace for pods without metadata.uid (stable across runs and hosts)
BAREPOD_NS = uuid.UUID('6ba7b811-9dad-11d1-80b4-00c04fd430c8')  # RFC 4122 URL namespace


def _fail(field, msg):
    raise AnsibleFilterError('%s: %s' % (field, msg))


# label keys and values (k8s.io/apimachinery IsQualifiedName, IsValidLabelValue) and uids
QUALIFIED_NAME_RE = re.compile(r'^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z')
LABEL_VALUE_RE = re.compile(r'^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z')
UID_RE = re.compile(r'^[0-9a-zA-Z][0-9a-zA-Z-]{0,62}\Z')


def _check_label_key(field, k):
    if not isinstance(k, str):
        _fail(field, 'label keys are strings, got %r' % (k,))
    prefix, _sep, name = k.rpartition('/')
    if _sep and (not prefix or len(prefix) > 253 or not SUBDOMAIN_RE.match(prefix)):
        _fail(field, 'label key %r has an invalid prefix (a DNS-1123 subdomain)' % (k,))
    if not name or len(name) > 63 or not QUALIFIED_NAME_RE.match(name):
        _fail(field, 'label key %r is not a qualified name (letters, digits, "-", "_", ".", at most 63)' % (k,))


def _check_list_of(field, value, types, what):
    if value is None:
        return []
    if not isinstance(value, list):
        _fail(field, 'must be a list of %s' % what)
    for i, item in enumerate(value):
        if not isinstance(item, types) or isinstance(item, bool) and types is not bool:
            _fail('%s[%d]' % (field, i), 'must be %s, got %r' % (what, item))
    return value


def _check_id(field, value):
    """runAsUser / runAsGroup: an integer uid/gid (what ns_sandbox accepts)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFE:
        _fail(field, 'must be an integer from 0 to 4294967294, got %r' % (value,))


def _check_container(f, c, vols):
    cname = c.get('name')
    if not isinstance(cname, str) or len(cname) > 63 or not NAME_RE.match(cname):
        _fail(f + '.name', '%r is not a valid DNS-1123 label' % (cname,))
    if c.get('image') is not None and not isinstance(c.get('image'), str):
        _fail(f + '.image', 'must be a string, got %r' % (c.get('image'),))
    for key in ('command', 'args'):
        if c.get(key) is not None and not isinstance(c.get(key), list):
            _fail('%s.%s' % (f, key), 'must be a list of strings')
        _check_list_of('%s.%s' % (f, key), c.get(key), (str, int, float), 'a string')
        for j, a in enumerate(c.get(key) or []):
            if '\x00' in str(a):
                _fail('%s.%s[%d]' % (f, key, j), 'contains a NUL byte')
    if not (c.get('command') or c.get('args')):
        # ns_sandbox runs the container's command: the images barepod makes root filesystems from
        # carry no entrypoint it falls back on
        _fail(f + '.command', 'a command (or args) is required: there is no image entrypoint to fall back on')
    for j, e in enumerate(_check_list_of(f + '.env', c.get('env'), dict, 'a mapping with name and value')):
        if not isinstance(e.get('name'), str) or not e['name'] or '=' in e['name'] or '\x00' in e['name']:
            _fail('%s.env[%d].name' % (f, j), 'must be a non-empty string without "=" or NUL, got %r' % (e.get('name'),))
        if '\x00' in str(e.get('value', '')):
            _fail('%s.env[%d].value' % (f, j), 'contains a NUL byte')
    wd = c.get('workingDir')
    if wd is not None:
        if not isinstance(wd, str) or not wd.startswith('/') or '\x00' in wd:
            _fail(f + '.workingDir', 'must be an absolute path, got %r' % (wd,))
        if wd.rstrip('/') == '/proc' or wd.startswith('/proc/'):
            _fail(f + '.workingDir', '%r is under /proc; a working directory must be a directory of the rootfs' % (wd,))
    sc = c.get('securityContext')
    if sc is not None and not isinstance(sc, dict):
        _fail(f + '.securityContext', 'must be a mapping')
    for key in ('runAsUser', 'runAsGroup'):
        _check_id('%s.securityContext.%s' % (f, key), (sc or {}).get(key))
    for j, vm in enumerate(_check_list_of(f + '.volumeMounts', c.get('volumeMounts'), dict, 'a mapping')):
        fm = '%s.volumeMounts[%d]' % (f, j)
        if not isinstance(vm.get('name'), str) or vm['name'] not in vols:
            _fail(fm + '.name', 'no volume named %r in spec.volumes' % (vm.get('name'),))
        if not isinstance(vm.get('mountPath'), str) or not vm['mountPath'].startswith('/'):
            _fail(fm + '.mountPath', 'must be an absolute path, got %r' % (vm.get('mountPath'),))
        if vm.get('subPath') is not None and not isinstance(vm.get('subPath'), str):
            _fail(fm + '.subPath', 'must be a string, got %r' % (vm.get('subPath'),))


def pod_validate(manifest):
    if not isinstance(manifest, dict):
        _fail('manifest', 'must be a Pod object (a mapping), got %s' % type(manifest).__name__)
    if manifest.get('kind', 'Pod') != 'Pod':
        _fail('kind', 'must be Pod, got %r' % manifest.get('kind'))
    md = manifest.get('metadata') or {}
    if not isinstance(md, dict):
        _fail('metadata', 'must be a mapping')
    name = md.get('name')
    if not isinstance(name, str) or len(name) > 253 or not SUBDOMAIN_RE.match(name):
        _fail('metadata.name', '%r is not a valid DNS-1123 subdomain' % (name,))
    ns = md.get('namespace') or 'default'
    if not isinstance(ns, str) or len(ns) > 63 or not NAME_RE.match(ns):
        _fail('metadata.namespace', '%r is not a valid DNS-1123 label' % (ns,))
    uid = md.get('uid')
    if uid is not None and (not isinstance(uid, str) or not UID_RE.match(uid)):
        # the uid names directories (rootfs, logs, cgroups) and the netns
        _fail('metadata.uid', '%r is not a valid uid (letters, digits and "-", at most 63)' % (uid,))
    labels = md.get('labels') or {}
    if not isinstance(labels, dict):
        _fail('metadata.labels', 'must be a mapping')
    for k, v in labels.items():
        _check_label_key('metadata.labels', k)
        if not isinstance(v, str) or len(v) > 63 or not LABEL_VALUE_RE.match(v):
            _fail('metadata.labels.%s' % k, 'label values are strings of at most 63 letters, digits, "-", "_" '
                  'and ".", got %r' % (v,))
    spec = manifest.get('spec') or {}
    if not isinstance(spec, dict):
        _fail('spec', 'must be a mapping')
    ctrs = spec.get('containers')
    if not isinstance(ctrs, list) or not ctrs:
        _fail('spec.containers', 'a pod needs at least one container')
    for key in ('hostname', 'subdomain'):
        v = spec.get(key)
        if v is not None and (not isinstance(v, str) or len(v) > 63 or not NAME_RE.match(v)):
            _fail('spec.' + key, '%r is not a valid DNS-1123 label' % (v,))
    for i, a in enumerate(_check_list_of('spec.hostAliases', spec.get('hostAliases'), dict, 'a mapping')):
        if not isinstance(a.get('ip'), str):
            _fail('spec.hostAliases[%d].ip' % i, 'must be a string, got %r' % (a.get('ip'),))
        _check_list_of('spec.hostAliases[%d].hostnames' % i, a.get('hostnames'), str, 'a string')
    vols = {}
    for i, v in enumerate(_check_list_of('spec.volumes', spec.get('volumes'), dict, 'a mapping')):
        vf = 'spec.volumes[%d]' % i
        if not isinstance(v.get('name'), str) or len(v['name']) > 63 or not NAME_RE.match(v['name']):
            _fail(vf + '.name', '%r is not a valid DNS-1123 label' % (v.get('name'),))
        if 'hostPath' in v and (not isinstance(v['hostPath'], dict) or not isinstance(v['hostPath'].get('path'), str)):
            got = (v['hostPath'] or {}).get('path') if isinstance(v['hostPath'], dict) else v['hostPath']
            _fail(vf + '.hostPath.path', 'must be a string, got %r' % (got,))
        if 'emptyDir' in v and v['emptyDir'] is not None and not isinstance(v['emptyDir'], dict):
            _fail(vf + '.emptyDir', 'must be a mapping')
        if (v.get('emptyDir') or {}).get('sizeLimit') is not None:
            try:
                _quantity.to_bytes(v['emptyDir']['sizeLimit'], vf + '.emptyDir.sizeLimit')
            except BarepodError as e:
                raise AnsibleFilterError(e.msg)
        vols[v['name']] = v
    seen = set()
    for i, c in enumerate(ctrs):
        f = 'spec.containers[%d]' % i
        if not isinstance(c, dict):
            _fail(f, 'must be a mapping')
        _check_container(f, c, vols)
        if c['name'] in seen:
            _fail(f + '.name', 'duplicate container name %r' % c['name'])
        seen.add(c['name'])
    # resources: every quantity parsed as cgroup_limit parses it, requests at most the limits
    try:
        _qos.normalise_containers(ctrs, 'spec.containers')
    except BarepodError as e:
        raise AnsibleFilterError(e.msg)
    grace = spec.get('terminationGracePeriodSeconds')
    if grace is not None and (isinstance(grace, bool) or not isinstance(grace, (int, float)) or grace < 0):
        _fail('spec.terminationGracePeriodSeconds', 'must be a non-negative number of seconds, got %r' % (grace,))
    share = spec.get('shareProcessNamespace')
    if share is not None and not isinstance(share, bool):
        _fail('spec.shareProcessNamespace', 'must be true or false, got %r' % (share,))
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
        pairs = (('run_as_user', 'runAsUser'), ('run_as_group', 'runAsGroup'))
        spec['security_context'] = dict((k, sc[kk]) for k, kk in pairs if sc.get(kk) is not None)
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


# the role's settings: the shared defaults (network, paths, grace period) from _defaults, plus these
ROLE_DEFAULTS = dict(_defaults.ROLE_DEFAULTS, images={}, busybox_images=['busybox'], allowed_host_paths=['/tmp'],
                     ip_masq=True, host_ip='127.0.0.1', node='localhost')


def pod_module_args(manifest, settings=None):
    """Per step of the pod role (present), the arguments of its module task.

    settings: the role's pod_* variables without the prefix (images, busybox_images, network, ...).
    Inputs that come from earlier tasks are left out and added by the role (and by pod_converged):
    rootfs/hosts pod_ips, network netns, the containers' cgroups.
    """
    s = dict(ROLE_DEFAULTS)
    s.update(dict((k, v) for k, v in (settings or {}).items() if v is not None))
    ident = pod_identity(manifest)
    name, ns, uid = ident['name'], ident['namespace'], ident['uid']
    spec = manifest.get('spec') or {}
    ctrs = spec['containers']
    grace = spec.get('terminationGracePeriodSeconds')
    grace = s['grace_period'] if grace is None else grace
    rootfs = []
    for c in ctrs:
        src = pod_container_source(c, s['images'], s['busybox_images'])
        a = dict(pod_uid=uid, container=c['name'], namespace=ns, name=name, rootfs_root=s['rootfs_root'],
                 state_root=s['state_root'], busybox=src['busybox'],
                 mounts=pod_container_mounts(c, spec.get('volumes') or []),
                 allowed_host_paths=list(s['allowed_host_paths']), hostname=spec.get('hostname') or name)
        if src['image']:
            a['image'] = src['image']
        if spec.get('subdomain'):
            a['subdomain'] = spec['subdomain']
        if spec.get('hostAliases'):
            a['host_aliases'] = spec['hostAliases']
        rootfs.append(a)
    sandbox = dict(name=name, namespace=ns, pod_uid=uid, containers=[], prune_containers=False,
                   share_process_namespace=bool(spec.get('shareProcessNamespace', False)), grace_period=grace,
                   state_root=s['state_root'], netns_dir=s['netns_dir'], log_root=s['log_root'])
    if spec.get('hostname'):
        sandbox['hostname'] = spec['hostname']
    cg = dict(pod_uid=uid, containers=ctrs, parent=s['cgroup_parent'], cgroup_root=s['cgroup_root'],
              namespace=ns, name=name, state_root=s['state_root'])
    containers = dict(sandbox, containers=pod_container_specs(manifest, s['rootfs_root'], uid))
    containers.pop('prune_containers')
    return dict(
        identity=ident,
        record=dict(name=name, namespace=ns, manifest=manifest, update=False, state_root=s['state_root']),
        rootfs=rootfs,
        sandbox=sandbox,
        cgroup_pod=cg,
        cgroup_containers=[dict(cg, container=c['name']) for c in ctrs],
        network=dict(pod_uid=uid, namespace=ns, name=name, network=s['network'], subnet=s['subnet'],
                     bridge=s['bridge'], mtu=s['mtu'], ip_masq=s['ip_masq'], data_dir=s['cni_data_dir'],
                     state_root=s['state_root']),
        hosts=rootfs,
        containers=containers,
        status=dict(name=name, namespace=ns, host_ip=s['host_ip'], node=s['node'], state_root=s['state_root']),
    )


class FilterModule(object):
    def filters(self):
        return dict(pod_validate=pod_validate, pod_identity=pod_identity,
                    pod_container_source=pod_container_source, pod_container_mounts=pod_container_mounts,
                    pod_container_spec=pod_container_spec, pod_container_specs=pod_container_specs,
                    pod_module_args=pod_module_args)
