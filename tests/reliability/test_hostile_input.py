# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile input: every manifest or module argument either converges (render-only paths and
check mode, which are cheap and change nothing) or fails with a clear error naming a field,
before any change: no other exception type (a traceback in Ansible), no file under the
throwaway state roots, no subprocess started with an unvalidated string, and nothing of a
name ever reaching an iptables-restore payload, a path or a command line unescaped.

None of this needs root: the pod filter, the managers' validation, kube_svc_rules with
apply=false and check mode only read the host. Each test records one 'input' evidence line
(how many inputs were tried, rejected cleanly and converged) for `make reliability`.
"""
import os
import re
import shutil
import subprocess
import tempfile
import uuid

import pytest
from ansible.errors import AnsibleFilterError
from hypothesis import HealthCheck, given, settings, strategies as st

from _hostile import run_module

from ansible_collections.barepod.linux.plugins.filter import pod as podf
from ansible_collections.barepod.linux.plugins.module_utils import _defaults, _kpsync, _rootfs, _sandbox, _state
from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
from ansible_collections.barepod.linux.plugins.module_utils._kprender import split_rule
from ansible_collections.barepod.linux.plugins.module_utils._kpsync import sync_service_rules

pytestmark = pytest.mark.reliability

# ------------------------------------------------------------------ hostile values

HOSTILE = [
    '; rm -rf /', '$(touch /tmp/barepod-pwned)', '`id`', 'a\nb', 'a\r\nb', 'a"b', "a'b", 'a b', 'a\tb',
    '../../etc', '..', '.', '/etc/passwd', 'x' * 64, 'y' * 254, 'ünïcödé', '名前', 'a\x00b',
    '-A INPUT -j ACCEPT', '--comment', 'UPPER', 'a.b', 'a_b', '-lead', 'trail-', '', '\\', '*', '|sh',
    '&&', '%s%n', '\u202e', 'web"\n-A INPUT -j ACCEPT\n#', 'ok-name', 'web', 'kube-system', 'http',
]
SAFE_LABEL = st.from_regex(r'\A[a-z0-9]([-a-z0-9]{0,12}[a-z0-9])?\Z')
HOSTILE_STR = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=70), SAFE_LABEL)
HOSTILE_ANY = st.one_of(HOSTILE_STR, HOSTILE_STR, HOSTILE_STR, st.integers(-5, 70000), st.none(), st.booleans(),
                        st.lists(HOSTILE_STR, max_size=2), st.dictionaries(HOSTILE_STR, HOSTILE_STR, max_size=2))
HOST_PATHS = ['/', '/etc', '/etc/', '/proc', '/proc/1/root', '/sys', '/dev', '/var/lib', '/var/lib/kubelet',
              '/var/lib/docker', '/run/containerd/containerd.sock', '/var/run/docker.sock', '/run/crio/crio.sock',
              '/tmp', '/tmp/../etc', '/tmp/./', '//etc', 'relative/path', '/nonexistent-barepod', '/var', '/run']

FIELD_MSG = re.compile(r'^(manifest|kind|metadata|spec)[^:\s]*: ')
NAME_OK = re.compile(r'^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')
UID_OK = re.compile(r'^[0-9a-zA-Z][0-9a-zA-Z-]{0,62}$')
SAFE_PATH = re.compile(r'^(/[A-Za-z0-9][A-Za-z0-9._-]*)+$')  # no metacharacters, spaces, unicode or ..

PROPS = settings(max_examples=int(os.environ.get("BAREPOD_HOSTILE_EXAMPLES", "200")), deadline=None, suppress_health_check=list(HealthCheck))
PROPS_IO = settings(max_examples=int(os.environ.get("BAREPOD_HOSTILE_EXAMPLES_IO", "60")), deadline=None, suppress_health_check=list(HealthCheck))
PROPS_FORK = settings(max_examples=int(os.environ.get("BAREPOD_HOSTILE_EXAMPLES_FORK", "15")), deadline=None, suppress_health_check=list(HealthCheck))


class Tally(object):
    """Counts of outcomes of one property test, written as one evidence line at the end."""

    def __init__(self):
        self.rejected = self.converged = 0

    def __call__(self, ok):
        if ok:
            self.converged += 1
        else:
            self.rejected += 1


@pytest.fixture
def tally(reliability_log, request):
    """Outcome counts of one (property) test -> evidence lines; FAILED when the test failed
    (the session's failure count grows during the call phase, before this teardown)."""
    t = Tally()
    failed_before = request.session.testsfailed
    yield t
    item = request.node.name
    if request.session.testsfailed > failed_before:
        reliability_log('input', item, 'FAILED', tried=t.rejected + t.converged)
        return
    if t.rejected:
        reliability_log('input', item, 'rejected', count=t.rejected, tried=t.rejected + t.converged)
    if t.converged:
        reliability_log('input', item, 'converged', count=t.converged, tried=t.rejected + t.converged)


# fixed words only: busybox --list-full (chroot_rootfs, busybox=true), ldconfig -p (ctypes.util.find_library)
ALLOWED_COMMANDS = (['--list-full'], ['-p'])


@pytest.fixture(autouse=True)
def no_subprocess(monkeypatch, request):
    """No render/validation path may start a process with anything but fixed words."""
    calls = []
    if 'node' in request.fixturenames or 'netns' in request.fixturenames:
        return calls  # these tests run ansible-playbook / ip netns on purpose
    real_popen = subprocess.Popen

    def check(argv):
        calls.append(argv)
        if not isinstance(argv, (list, tuple)) or list(argv[1:]) not in ALLOWED_COMMANDS:
            raise AssertionError('subprocess started on a render/validation path: %r' % (argv,))

    def popen(*a, **kw):
        check(a[0] if a else kw.get('args'))
        return real_popen(*a, **kw)

    def system(cmd):
        check(cmd)

    monkeypatch.setattr(subprocess, 'Popen', popen)  # subprocess.run and check_output go through it
    monkeypatch.setattr(os, 'system', system)
    return calls


def base_manifest():
    return dict(
        apiVersion='v1', kind='Pod',
        metadata=dict(name='web', namespace='default', labels=dict(app='web')),
        spec=dict(
            containers=[dict(name='c', image='busybox', command=['sleep', '1000'], workingDir='/',
                             env=[dict(name='A', value='1')],
                             volumeMounts=[dict(name='data', mountPath='/data'), dict(name='mem', mountPath='/mem')])],
            volumes=[dict(name='data', hostPath=dict(path='/tmp')), dict(name='mem', emptyDir=dict(medium='Memory'))]))


def _set(d, path, value):
    """Set d[path...] (keys and list indexes), creating mappings on the way."""
    cur = d
    for k in path[:-1]:
        if isinstance(cur, list):
            cur = cur[k] if isinstance(k, int) and k < len(cur) else None
        elif isinstance(cur, dict):
            cur = cur.setdefault(k, {}) if not isinstance(cur.get(k), (dict, list)) else cur[k]
        if not isinstance(cur, (dict, list)):
            return
    if isinstance(cur, dict):
        cur[path[-1]] = value
    elif isinstance(cur, list) and isinstance(path[-1], int) and path[-1] < len(cur):
        cur[path[-1]] = value


C0 = ('spec', 'containers', 0)
MUTABLE = [
    ('metadata',), ('metadata', 'name'), ('metadata', 'namespace'), ('metadata', 'uid'), ('metadata', 'labels'),
    ('spec',), ('spec', 'hostname'), ('spec', 'subdomain'), ('spec', 'containers'), ('spec', 'volumes'),
    ('spec', 'hostAliases'), C0, C0 + ('name',), C0 + ('image',), C0 + ('command',), C0 + ('args',),
    C0 + ('workingDir',), C0 + ('env',), C0 + ('env', 0, 'name'), C0 + ('env', 0, 'value'),
    C0 + ('securityContext',), C0 + ('securityContext', 'runAsUser'), C0 + ('volumeMounts',),
    C0 + ('volumeMounts', 0), C0 + ('volumeMounts', 0, 'mountPath'), C0 + ('volumeMounts', 0, 'name'),
    C0 + ('volumeMounts', 0, 'subPath'), ('spec', 'volumes', 0, 'name'), ('spec', 'volumes', 0, 'hostPath'),
    ('spec', 'volumes', 1, 'emptyDir'),
]


@st.composite
def manifests(draw):
    m = base_manifest()
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.integers(0, 4))
        if kind == 0:
            _set(m, ('spec', 'volumes', 0, 'hostPath', 'path'), draw(st.one_of(st.sampled_from(HOST_PATHS), HOSTILE_STR)))
        elif kind == 1:
            _set(m, ('metadata', 'labels'), draw(st.dictionaries(HOSTILE_STR, HOSTILE_ANY, max_size=3)))
        elif kind == 2:
            _set(m, draw(st.sampled_from(MUTABLE)), draw(SAFE_LABEL))  # plausible values
        else:
            _set(m, draw(st.sampled_from(MUTABLE)), draw(HOSTILE_ANY))
    return m


def filter_chain(m, rootfs_root='/var/lib/barepod/rootfs'):
    """What the pod role does with a manifest, in order; AnsibleFilterError is the only way out."""
    podf.pod_validate(m)
    ident = podf.pod_identity(m)
    spec = m['spec']
    per = []
    for c in spec['containers']:
        src = podf.pod_container_source(c)
        mounts = podf.pod_container_mounts(c, spec.get('volumes') or [])
        per.append((c, src, mounts))
    specs = podf.pod_container_specs(m, rootfs_root, ident['uid'])
    return ident, per, specs


# ------------------------------------------------------------------ Pod manifests

@PROPS
@given(m=manifests())
def test_pod_manifest_through_the_filters(m, tally):
    try:
        ident, per, specs = filter_chain(m)
    except AnsibleFilterError as e:
        assert FIELD_MSG.match(str(e)), str(e)
        tally(False)
        return
    tally(True)
    # what reaches paths (rootfs, logs, record dir, netns name) is a validated name
    assert NAME_OK.match(ident['name']) and NAME_OK.match(ident['namespace']) and UID_OK.match(ident['uid'])
    paths = [os.path.join(_defaults.STATE_ROOT, _state.pod_key(ident['namespace'], ident['name'])),
             _state.netns_path(ident['uid'])]
    for s in specs:
        assert re.match(r'^[a-z0-9-]+$', s['name'])
        assert s['rootfs'] == _state.rootfs_dir(ident['uid'], s['name'])
        paths += [s['rootfs'], _state.log_dir(ident['namespace'], ident['name'], ident['uid'], s['name'])]
    for p in paths:
        assert SAFE_PATH.match(p) and os.path.normpath(p) == p, p


def _tree(d):
    out = []
    for dirpath, dirnames, filenames in os.walk(d):
        out += [os.path.join(dirpath, n) for n in dirnames + filenames]
    return out


@pytest.fixture(scope='module')
def roots():
    d = tempfile.mkdtemp(prefix='bphostile-')
    rootfs = os.path.join(d, 'prepared-rootfs')
    os.makedirs(os.path.join(rootfs, 'bin'))
    for prog in ('sleep', 'sh'):
        p = os.path.join(rootfs, 'bin', prog)
        with open(p, 'w') as f:
            f.write('#!/bin/sh\n')
        os.chmod(p, 0o755)
    os.makedirs(os.path.join(d, 'empty'))
    try:
        yield d, rootfs
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _clear_error(e):
    return isinstance(e, BarepodError) and bool(str(e)) and (e.field is not None or ':' in str(e))


@PROPS_IO
@given(m=manifests())
def test_pod_manifest_through_the_managers_in_check_mode(m, roots, tally):
    """The accepted manifests, on to chroot_rootfs (check mode) and ns_sandbox's validation:
    either converge or raise BarepodError naming a field; the state roots stay empty."""
    base, prepared = roots
    work = os.path.join(base, 'empty')
    try:
        ident, per, specs = filter_chain(m, os.path.join(work, 'rootfs'))
    except AnsibleFilterError:
        tally(False)
        return
    spec = m['spec']
    ok = True
    for c, src, mounts in per:
        params = dict(pod_uid=ident['uid'], container=c['name'], namespace=ident['namespace'], name=ident['name'],
                      rootfs_root=os.path.join(work, 'rootfs'), state_root=os.path.join(work, 'state'),
                      busybox=src['busybox'], mounts=mounts, allowed_host_paths=['/tmp'],
                      hostname=spec.get('hostname') or ident['name'], subdomain=spec.get('subdomain'),
                      host_aliases=spec.get('hostAliases'), shm_size='64Mi')
        try:
            _rootfs.run(params, check_mode=True)
        except BarepodError as e:
            assert _clear_error(e), e
            ok = False
    sb = dict(name=ident['name'], namespace=ident['namespace'], pod_uid=ident['uid'],
              hostname=spec.get('hostname'), state_root=os.path.join(work, 'state'),
              containers=[dict(s, rootfs=prepared) for s in specs])
    try:
        _sandbox.desired(sb)
    except BarepodError as e:
        assert _clear_error(e), e
        ok = False
    # a hostPath outside /tmp never gets through
    for _c, _src, mounts in per:
        for mnt in mounts:
            if mnt['type'] == 'bind' and ok:
                real = os.path.realpath(mnt['source'], strict=True)
                assert real == '/tmp' or real.startswith('/tmp/'), mnt
    tally(ok)
    assert _tree(work) == []


# ------------------------------------------------------------------ Services and EndpointSlices

def mostly(valid, hostile, n=4):
    """valid n times out of n+1 (one_of picks branches unevenly)."""
    return st.integers(0, n).flatmap(lambda i: hostile if i == 0 else valid)


PORT = mostly(st.integers(1, 65535), HOSTILE_ANY)
IP = mostly(st.sampled_from(['10.96.0.10', '10.96.0.11', '10.96.0.12']),
            st.one_of(st.sampled_from(['None', '', '::1', '10.96.0.300', '10.0.0.1\n-A']), HOSTILE_ANY))
NAME = mostly(st.sampled_from(['web', 'dns', 'kube-dns', 'a1', 'metrics-server']), HOSTILE_ANY)


@st.composite
def services(draw):
    svc = dict(apiVersion='v1', kind='Service',
               metadata=dict(name=draw(NAME), namespace=draw(mostly(st.sampled_from(['default', 'kube-system']), HOSTILE_ANY))),
               spec=dict(clusterIP=draw(IP),
                         type=draw(mostly(st.sampled_from(['ClusterIP', 'NodePort', 'LoadBalancer']), st.sampled_from(['Bogus', 'ExternalName']))),
                         ports=[dict(name=draw(NAME), port=draw(PORT),
                                     protocol=draw(mostly(st.sampled_from(['TCP', 'UDP', 'SCTP']), st.sampled_from(['tcp', 'ICMP', '']))),
                                     targetPort=draw(mostly(PORT, HOSTILE_STR)))
                                for _ in range(draw(st.integers(1, 2)))]))
    if draw(st.integers(0, 3)) == 0:
        svc['spec'][draw(st.sampled_from(['externalIPs', 'sessionAffinity', 'externalTrafficPolicy',
                                          'loadBalancerSourceRanges', 'ports', 'selector']))] = draw(HOSTILE_ANY)
    return svc


@st.composite
def slices(draw, svc):
    meta = svc.get('metadata') if isinstance(svc.get('metadata'), dict) else {}
    ports = svc['spec'].get('ports') if isinstance(svc['spec'].get('ports'), list) else []
    pname = ports[0].get('name') if ports and isinstance(ports[0], dict) else None
    return dict(apiVersion='discovery.k8s.io/v1', kind='EndpointSlice',
                metadata=dict(name=draw(HOSTILE_STR), namespace=meta.get('namespace'),
                              labels={'kubernetes.io/service-name': draw(mostly(st.just(meta.get('name')), HOSTILE_ANY))}),
                addressType=draw(mostly(st.just('IPv4'), st.sampled_from(['IPv6', 'FQDN', 'bogus']))),
                endpoints=draw(st.lists(st.fixed_dictionaries(dict(
                    addresses=st.lists(mostly(st.sampled_from(['10.244.0.5', '10.244.0.6']), HOSTILE_STR), max_size=2),
                    conditions=mostly(st.one_of(st.none(), st.fixed_dictionaries(dict(ready=st.booleans()))), HOSTILE_ANY),
                    nodeName=mostly(st.just('node-a'), HOSTILE_STR))), max_size=3) | HOSTILE_ANY),
                ports=[dict(name=draw(mostly(st.just(pname), HOSTILE_ANY)), port=draw(PORT),
                            protocol=draw(mostly(st.just('TCP'), st.sampled_from(['UDP', 'bogus']))))])


LINE_OK = re.compile(r'^(\*(filter|nat)|COMMIT|:[A-Z0-9-]+ - \[0:0\]|-[AX] [A-Z0-9-]+( .*)?)$')


def check_payload(payload):
    """Every line is a rule of a chain the payload declares; comments are single tokens
    without quotes, control characters or newlines (nothing broke out of a comment)."""
    declared = set()
    for line in payload.splitlines():
        assert LINE_OK.match(line), repr(line)
        assert not any(ord(ch) < 32 for ch in line), repr(line)
        if line.startswith(':'):
            declared.add(line[1:].split()[0])
        elif line.startswith('-A '):
            tokens = split_rule(line)
            assert tokens[1] in declared, line  # never a rule in INPUT/OUTPUT/... smuggled in
            for i, t in enumerate(tokens):
                if t == '--comment':
                    c = tokens[i + 1]
                    assert '"' not in c and '\\' not in c, line
            assert line.count('"') % 2 == 0, line
        elif line.startswith('*'):
            declared = set()


@PROPS
@given(data=st.data())
def test_services_and_slices_render_or_fail_cleanly(data, tally, no_subprocess):
    objs = []
    for _ in range(data.draw(st.integers(1, 2))):
        svc = data.draw(services())
        objs.append(svc)
        if data.draw(st.booleans()):
            objs.append(data.draw(slices(svc)))
    if data.draw(st.integers(0, 3)) == 0:
        objs.append(data.draw(HOSTILE_ANY))
    try:
        res = sync_service_rules(dict(objects=objs, apply=False, return_payload=True, node_name='node-a'))
    except BarepodError as e:
        assert _clear_error(e) and str(e).split(':')[0].startswith('objects'), str(e)
        tally(False)
        return
    tally(True)
    check_payload(res['payload'])
    assert all(list(c[1:]) in ALLOWED_COMMANDS for c in no_subprocess)


POD_VIEW = st.fixed_dictionaries(dict(
    name=mostly(st.sampled_from(['web-1', 'web-2']), HOSTILE_ANY),
    namespace=mostly(st.just('default'), HOSTILE_ANY),
    labels=mostly(st.just({'app': 'web'}), st.one_of(HOSTILE_ANY, st.dictionaries(HOSTILE_STR, HOSTILE_ANY, max_size=2))),
    status=mostly(st.fixed_dictionaries(dict(
        phase=mostly(st.just('Running'), HOSTILE_ANY),
        podIP=mostly(st.sampled_from(['10.244.0.5', '10.244.0.6']), HOSTILE_ANY),
        conditions=mostly(st.just([{'type': 'Ready', 'status': 'True'}]), HOSTILE_ANY)),
        optional=dict(podIPs=HOSTILE_ANY, containerStatuses=HOSTILE_ANY)), HOSTILE_ANY),
    spec=mostly(st.just(dict(containers=[dict(name='c', ports=[dict(name='http', containerPort=8080)])])), HOSTILE_ANY),
    node=mostly(st.just('node-a'), HOSTILE_ANY)), optional=dict(kind=HOSTILE_ANY))


@PROPS
@given(data=st.data())
def test_endpointslices_filter_then_render(data, tally, no_subprocess):
    """The service role's path: Services + pod views -> the endpointslices filter (only
    AnsibleFilterError may come out) -> kube_svc_rules' render (BarepodError or a clean payload)."""
    from ansible_collections.barepod.linux.plugins.filter.endpointslices import endpointslices
    services_ = []
    for _ in range(data.draw(st.integers(1, 2))):
        svc = data.draw(services())
        if isinstance(svc['spec'], dict) and data.draw(st.integers(0, 3)):
            svc['spec']['selector'] = {'app': 'web'}
        services_.append(svc)
    pods = data.draw(st.lists(POD_VIEW, max_size=3))
    if data.draw(st.integers(0, 5)) == 0:
        pods = data.draw(HOSTILE_ANY)
    try:
        slices_ = endpointslices(services_, pods)
    except AnsibleFilterError as e:
        assert re.match(r'^(services|pods|max_endpoints)\b.*?: ', str(e)), str(e)
        tally(False)
        return
    try:
        res = sync_service_rules(dict(objects=services_ + slices_, apply=False, return_payload=True, node_name='node-a'))
    except BarepodError as e:
        assert _clear_error(e), str(e)
        tally(False)
        return
    tally(True)
    check_payload(res['payload'])


@pytest.mark.parametrize('where,value', [
    ('metadata.name', 'web"\n-A INPUT -j ACCEPT\n#'),
    ('metadata.name', 'web service'),
    ('metadata.name', 'Web'),
    ('metadata.name', 'x' * 64),
    ('metadata.name', 'wéb'),
    ('metadata.namespace', 'de"fault'),
    ('metadata.namespace', 'a\nb'),
    ('spec.ports[0].name', 'h t"tp'),
    ('spec.ports[0].name', 'http\n-A OUTPUT -j DROP'),
    ('spec.ports[0].name', '$(id)'),
])
def test_service_names_never_reach_the_rule_payload_unescaped(where, value, reliability_log):
    svc = dict(kind='Service', metadata=dict(name='web', namespace='default'),
               spec=dict(clusterIP='10.96.0.10', ports=[dict(name='http', port=80)]))
    if where.startswith('metadata.'):
        svc['metadata'][where.split('.')[1]] = value
    else:
        svc['spec']['ports'][0]['name'] = value
    with pytest.raises(BarepodError) as e:
        sync_service_rules(dict(objects=[svc], apply=False))
    assert 'objects[0].' + where in str(e.value)
    reliability_log('input', 'Service %s %r' % (where, value), 'rejected')


def _svc(**spec):
    s = dict(clusterIP='10.96.0.10', ports=[dict(name='http', port=80)])
    s.update(spec)
    return dict(kind='Service', metadata=dict(name='web', namespace='default'), spec=s)


def _slice(**kw):
    s = dict(kind='EndpointSlice', metadata=dict(name='web-1', namespace='default',
                                                   labels={'kubernetes.io/service-name': 'web'}),
             endpoints=[dict(addresses=['10.244.0.5'])], ports=[dict(name='http', port=8080)])
    s.update(kw)
    return s


@pytest.mark.parametrize('objs,field', [
    ([_svc(externalIPs=1)], 'objects[0].spec.externalIPs'),
    ([_svc(loadBalancerSourceRanges=7)], 'objects[0].spec.loadBalancerSourceRanges'),
    ([_svc(sessionAffinity='ClientIP', sessionAffinityConfig='x')], 'objects[0].spec.sessionAffinityConfig'),
    ([dict(_svc(type='LoadBalancer'), status=dict(loadBalancer=5))], 'objects[0].status.loadBalancer'),
    ([_svc(), _slice(endpoints=[dict(addresses=['10.244.0.5'], conditions=['x'])])],
     'objects[1].endpoints[0].conditions'),
    ([_svc(), _slice(ports=5)], 'objects[1].ports'),
])
def test_malformed_service_fields_fail_with_the_field_named(objs, field, reliability_log):
    """Regressions found by the property test above (they were TypeError/AttributeError)."""
    with pytest.raises(BarepodError) as e:
        sync_service_rules(dict(objects=objs, apply=False))
    assert str(e.value).startswith(field), str(e.value)
    reliability_log('input', 'Service/EndpointSlice %s malformed' % field, 'rejected')


def test_valid_service_comments_are_quoted_as_kube_proxy_does():
    svc = dict(kind='Service', metadata=dict(name='web', namespace='default'),
               spec=dict(clusterIP='10.96.0.10', ports=[dict(name='http', port=80)]))
    res = sync_service_rules(dict(objects=[svc], apply=False, return_payload=True))
    check_payload(res['payload'])
    assert '-m comment --comment "default/web:http has no endpoints"' in res['payload']


# ------------------------------------------------------------------ names into paths and commands

BAD_NAMES = ['a;b', 'a b', 'a\nb', '../x', 'a/b', 'A', '$(id)', '`id`', 'ü', 'x' * 64, 'x' * 254, '-x', '', 'a"b']


@pytest.mark.parametrize('value', BAD_NAMES)
def test_names_are_rejected_before_they_become_paths(value, reliability_log, tmp_path):
    from ansible_collections.barepod.linux.plugins.module_utils._state import PodRecord
    from ansible_collections.barepod.linux.plugins.module_utils import _veth
    state = str(tmp_path / 'state')
    checks = [
        ('pod record name', lambda: PodRecord('default', value, state)),
        ('pod record namespace', lambda: PodRecord(value, 'p', state)),
        ('ns_sandbox name', lambda: _sandbox.desired(dict(name=value, state_root=state))),
        ('ns_sandbox namespace', lambda: _sandbox.desired(dict(name='p', namespace=value, state_root=state))),
        ('ns_sandbox hostname', lambda: _sandbox.desired(dict(name='p', hostname=value, state_root=state))),
        ('chroot_rootfs container', lambda: _rootfs.run(dict(pod_uid='u1', container=value,
                                                             rootfs_root=str(tmp_path / 'r')), check_mode=True)),
        ('chroot_rootfs pod_uid', lambda: _rootfs.run(dict(pod_uid=value, container='c',
                                                           rootfs_root=str(tmp_path / 'r')), check_mode=True)),
        ('veth_net uid', lambda: _veth.Spec(dict(pod_uid=value, state='absent'))),
        ('veth_net network', lambda: _veth.Spec(dict(pod_uid='u1', network=value + '"\n', state='absent'))),
    ]
    for what, fn in checks:
        if value == '' and what in ('ns_sandbox namespace', 'ns_sandbox hostname'):
            continue  # empty means the default
        if value == 'A' and 'uid' in what:
            continue  # uids may hold upper case (UUIDs from other tools)
        if value == 'x' * 64 and what in ('pod record name', 'ns_sandbox name'):
            continue  # pod names are DNS-1123 subdomains (up to 253)
        try:
            fn()
        except BarepodError as e:
            assert e.field, (what, str(e))
        else:
            raise AssertionError('%s accepted %r' % (what, value))
        reliability_log('input', '%s %r' % (what, value), 'rejected')
    assert not os.path.exists(state) and not os.path.exists(str(tmp_path / 'r'))


def test_env_values_with_shell_metacharacters_are_passed_verbatim(roots):
    """Values (not names) may hold anything but NUL: they reach execve, never a shell."""
    _base, prepared = roots
    d = _sandbox.desired(dict(name='p', containers=[dict(name='c', rootfs=prepared, command=['sleep', '1'],
                                                          env=[dict(name='X', value='$(id); `id` "\n')])]))
    assert 'X=$(id); `id` "\n' in d['containers'][0]['env']
    with pytest.raises(BarepodError) as e:
        _sandbox.desired(dict(name='p', containers=[dict(name='c', rootfs=prepared, command=['sleep', '1'],
                                                          env=[dict(name='X', value='a\x00b')])]))
    assert 'containers[0].env[0].value' in str(e.value)


# ------------------------------------------------------------------ module arguments, as Ansible runs them

MODULE_ARGS = {
    'ns_sandbox': dict(name=HOSTILE_ANY, namespace=HOSTILE_ANY, uid=HOSTILE_ANY, hostname=HOSTILE_ANY,
                       grace_period=HOSTILE_ANY, namespaces=HOSTILE_ANY, state=HOSTILE_ANY,
                       containers=st.lists(st.dictionaries(st.sampled_from(['name', 'rootfs', 'command', 'working_dir',
                                                                            'env', 'cgroups']), HOSTILE_ANY), max_size=2)),
    'chroot_rootfs': dict(pod_uid=HOSTILE_ANY, container=HOSTILE_ANY, namespace=HOSTILE_ANY, name=HOSTILE_ANY,
                          hostname=HOSTILE_ANY, subdomain=HOSTILE_ANY, shm_size=HOSTILE_ANY, binaries=HOSTILE_ANY,
                          mounts=st.lists(st.fixed_dictionaries(dict(source=st.one_of(st.sampled_from(HOST_PATHS), HOSTILE_STR),
                                                                     target=HOSTILE_STR)), max_size=2),
                          host_aliases=HOSTILE_ANY, pod_ips=HOSTILE_ANY),
    'kube_svc_rules': dict(objects=st.lists(st.one_of(services(), HOSTILE_ANY), max_size=2), chain_prefix=HOSTILE_ANY,
                           node_ip=HOSTILE_ANY, cluster_cidr=HOSTILE_ANY, masquerade_bit=HOSTILE_ANY),
    'pod_status': dict(name=HOSTILE_ANY, namespace=HOSTILE_ANY, host_ip=HOSTILE_ANY, node=HOSTILE_ANY),
    'cgroup_limit': dict(pod_uid=HOSTILE_ANY, container=HOSTILE_ANY, parent=HOSTILE_ANY, qos_class=HOSTILE_ANY,
                         containers=st.lists(st.fixed_dictionaries(dict(name=HOSTILE_ANY, resources=HOSTILE_ANY)), max_size=2)),
    # network modules: check mode inside a throwaway netns (root only)
    'veth_net': dict(uid=mostly(st.just('0f1e2d3c-aaaa-bbbb-cccc-000000000001'), HOSTILE_ANY),
                     container_id=HOSTILE_ANY, network=mostly(st.just('barepod'), HOSTILE_ANY),
                     subnet=mostly(st.just('10.244.0.0/24'), HOSTILE_ANY), bridge=HOSTILE_ANY, ifname=HOSTILE_ANY,
                     host_ifname=HOSTILE_ANY, ip=HOSTILE_ANY, range_start=HOSTILE_ANY, gateway=HOSTILE_ANY,
                     mtu=HOSTILE_ANY, namespace=HOSTILE_ANY, name=HOSTILE_ANY),
    'node_routes': dict(nodes=st.lists(st.fixed_dictionaries(dict(name=HOSTILE_ANY, pod_cidr=mostly(
        st.sampled_from(['10.244.1.0/24', '10.244.2.0/24']), HOSTILE_ANY), node_ip=mostly(
        st.sampled_from(['192.0.2.11', '192.0.2.12']), HOSTILE_ANY))), max_size=2), node_name=HOSTILE_ANY),
}
NETNS_MODULES = ('veth_net', 'node_routes')
FIXED = {
    'ns_sandbox': lambda d: dict(state_root=d + '/state', netns_dir=d + '/netns', log_root=d + '/logs',
                                 pause_dir=d + '/pause'),
    'chroot_rootfs': lambda d: dict(rootfs_root=d + '/rootfs', state_root=d + '/state', allowed_host_paths=['/tmp']),
    'kube_svc_rules': lambda d: dict(apply=False, state_dir=d + '/svc'),
    'pod_status': lambda d: dict(state_root=d + '/state'),
    'cgroup_limit': lambda d: dict(state_root=d + '/state', parent='bp-hostile-%s' % uuid.uuid4().hex[:8]),
    'veth_net': lambda d: dict(state_root=d + '/state', data_dir=d + '/cni', netns=d + '/no-such-netns'),
    'node_routes': lambda d: dict(),
}


@pytest.mark.parametrize('module', sorted(MODULE_ARGS))
def test_module_arguments_as_ansible_runs_them(module, tally, no_subprocess, monkeypatch, netns):
    """Forked like Ansible, in check mode (kube_svc_rules: apply=false): a JSON result, no
    traceback, a failure names a field, and nothing is written under the throwaway roots."""
    monkeypatch.undo()  # run_module itself forks
    node = None
    if module in NETNS_MODULES:
        if os.geteuid() != 0:
            pytest.skip('needs root (check mode inside a throwaway netns)')
        node = netns()

    @settings(PROPS_FORK, max_examples=8 if module in NETNS_MODULES else PROPS_FORK.max_examples)
    @given(args=st.fixed_dictionaries({}, optional=MODULE_ARGS[module]))
    def one(args):
        d = tempfile.mkdtemp(prefix='bphostile-mod-')
        try:
            a = dict((k, v) for k, v in args.items())
            a.update(FIXED[module](d))
            r = run_module(module, a, check=True, timeout=60, netns=node)
            assert 'Traceback' not in r['_stderr'] and 'exception' not in r and 'module_stderr' not in r, r
            if r.failed:
                assert r.get('msg'), r
            tally(not r.failed)
            assert _tree(d) == [], (a, r)
            if module == 'cgroup_limit':
                assert not os.path.exists(os.path.join('/sys/fs/cgroup/memory', a['parent']))
        finally:
            shutil.rmtree(d, ignore_errors=True)

    one()


def test_no_subprocess_guard_is_active(no_subprocess):
    with pytest.raises(AssertionError):
        _kpsync.subprocess.run(['true'])
    with pytest.raises(AssertionError):
        os.system('true')
    assert no_subprocess == [['true'], 'true']


# ------------------------------------------------------------------ CNI masquerade comments, for real

HOSTILE_IDS = ['a"b', 'a\\b', 'a\\"b', '$(id)', '`id`', 'a b', "a'b", 'ü-名前', '-j ACCEPT', 'x' * 200, 'a;b|c&d']


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root (iptables in a throwaway netns)')
@pytest.mark.parametrize('container_id', HOSTILE_IDS)
def test_masquerade_comment_round_trips_through_iptables(container_id, netns, reliability_log, monkeypatch):
    """veth_net's rules carry the container id in a comment, as the CNI bridge plugin writes it.
    Whatever the id holds, iptables-restore (in a throwaway netns) must store exactly the quoted
    comment, and veth_net must find its own rules again in iptables-save (or refuse the id)."""
    import ipaddress
    from ansible_collections.barepod.linux.plugins.module_utils import _veth
    monkeypatch.undo()  # this test runs iptables on purpose, inside its own netns
    try:
        _veth.Spec(dict(pod_uid='u1', container_id=container_id, state='absent'))
    except BarepodError as e:
        assert e.field == 'container_id'
        reliability_log('input', 'veth_net container_id %r' % container_id, 'rejected')
        return
    ns = netns()
    chain, want = _veth.masq_rules('barepod', container_id, ipaddress.ip_address('10.244.0.7'),
                                   ipaddress.ip_network('10.244.0.0/24'))
    batch = _veth.masq_batch(want, [], chain, False)
    p = subprocess.run(['ip', 'netns', 'exec', ns, 'iptables-restore', '-w', '--noflush'], input=batch.encode(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    assert p.returncode == 0, (batch, p.stderr)
    saved = subprocess.run(['ip', 'netns', 'exec', ns, 'iptables-save', '-t', 'nat'], stdout=subprocess.PIPE,
                           check=True).stdout.decode()
    exists, lines = _veth.owned_nat(saved, 'barepod', container_id)
    ok = exists and sorted(lines) == sorted(want) and not any(
        ln.startswith('-A ') and ln not in want for ln in saved.splitlines())
    reliability_log('input', 'veth_net container_id %r in the masquerade comment' % container_id,
                    'converged' if ok else 'FAILED')
    assert exists and sorted(lines) == sorted(want), (saved, want)
    assert [ln for ln in saved.splitlines() if ln.startswith('-A ') and ln not in want] == [], saved


# ------------------------------------------------------------------ the pod role, end to end

@pytest.mark.skipif(os.geteuid() != 0, reason='needs root (ansible-playbook in a throwaway node netns)')
def test_hostile_names_through_the_pod_role_fail_before_any_change(node, reliability_log, monkeypatch):
    """ansible-playbook pod_up.yml with a pod name, label and container name holding shell
    metacharacters, a newline and unicode: the play fails at the manifest check, naming the
    field, and the node is exactly as before."""
    import yaml
    monkeypatch.undo()  # ansible-playbook is started on purpose
    cases = [('metadata.name', ('metadata', 'name'), 'web;touch /tmp/barepod-pwned'),
             ('metadata.labels', ('metadata', 'labels'), {'app': 'web\n$(id)'}),
             ('spec.containers[0].name', ('spec', 'containers', 0, 'name'), 'ctr`id`ü')]
    files = []
    for what, path, value in cases:
        m = node.manifest_dict(name='hostile-names')
        _set(m, path, value)
        f = os.path.join(node.tmp, 'hostile-%d.yaml' % len(files))
        with open(f, 'w') as fh:
            yaml.safe_dump(m, fh)
        files.append((what, f))
    before = node.snapshot()
    for what, f in files:
        rc, _stats, res, _failures = node.playbook('pod_up.yml', [f])
        after = node.snapshot()
        msgs = [str(t.get('msg')) for play in res.get('plays', []) for t in
                [h for task in play.get('tasks', []) for h in task.get('hosts', {}).values()] if t.get('failed')]
        ok = rc != 0 and any(what in m_ for m_ in msgs) and after == before
        reliability_log('input', 'pod role with a hostile %s' % what, 'rejected' if ok else 'FAILED')
        assert rc != 0 and any(what in m_ for m_ in msgs), msgs
        assert after == before
    assert not os.path.exists('/tmp/barepod-pwned')
