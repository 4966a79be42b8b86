"""pod_validate refuses, naming the field, everything the pod role's modules would refuse later
(issue 17, item 5): the role calls it (through pod_identity) before its first change."""
import copy

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.barepod.linux.plugins.filter import pod as f

POD = {
    'apiVersion': 'v1', 'kind': 'Pod',
    'metadata': {'name': 'core-k8s'},
    'spec': {
        'containers': [{
            'name': 'c', 'image': 'busybox', 'command': ['sleep', '10000'],
            'resources': {'limits': {'memory': '200Mi', 'cpu': '500m'}, 'requests': {'memory': '100Mi'}},
            'volumeMounts': [{'name': 'shm', 'mountPath': '/cache'}]}],
        'volumes': [{'name': 'shm', 'emptyDir': {'medium': 'Memory', 'sizeLimit': '16Mi'}}],
    },
}


def ctr(**kw):
    return lambda m: m['spec']['containers'][0].update(kw)


REFUSED = [
    ('memory 12QQ', ctr(resources={'limits': {'memory': '12QQ'}}), 'spec.containers[0].resources.limits.memory'),
    ('cpu not a quantity', ctr(resources={'requests': {'cpu': 'lots'}}), 'spec.containers[0].resources.requests.cpu'),
    ('negative memory', ctr(resources={'limits': {'memory': '-1Gi'}}), 'spec.containers[0].resources.limits.memory'),
    ('other resource not a quantity', ctr(resources={'limits': {'ephemeral-storage': 'big'}}),
     'spec.containers[0].resources.limits.ephemeral-storage'),
    ('request above the limit', ctr(resources={'limits': {'memory': '100Mi'}, 'requests': {'memory': '200Mi'}}),
     'spec.containers[0].resources.requests.memory'),
    ('limits not a mapping', ctr(resources={'limits': ['200Mi']}), 'spec.containers[0].resources.limits'),
    ('resources not a mapping', ctr(resources='200Mi'), 'spec.containers[0].resources'),
    ('no command and no args', ctr(command=None), 'spec.containers[0].command'),
    ('empty command', ctr(command=[]), 'spec.containers[0].command'),
    ('NUL in an argument', ctr(args=['a\x00b']), 'spec.containers[0].args[0]'),
    ('env name with =', ctr(env=[{'name': 'A=B', 'value': '1'}]), 'spec.containers[0].env[0].name'),
    ('NUL in an env value', ctr(env=[{'name': 'A', 'value': 'x\x00'}]), 'spec.containers[0].env[0].value'),
    ('relative workingDir', ctr(workingDir='data'), 'spec.containers[0].workingDir'),
    ('workingDir under /proc', ctr(workingDir='/proc/self/fd/7'), 'spec.containers[0].workingDir'),
    ('runAsUser a name', ctr(securityContext={'runAsUser': 'root'}), 'spec.containers[0].securityContext.runAsUser'),
    ('runAsGroup negative', ctr(securityContext={'runAsGroup': -1}), 'spec.containers[0].securityContext.runAsGroup'),
    ('emptyDir sizeLimit not a quantity', lambda m: m['spec']['volumes'][0]['emptyDir'].update(sizeLimit='16QQ'),
     'spec.volumes[0].emptyDir.sizeLimit'),
    ('negative grace period', lambda m: m['spec'].update(terminationGracePeriodSeconds=-5),
     'spec.terminationGracePeriodSeconds'),
    ('grace period a string', lambda m: m['spec'].update(terminationGracePeriodSeconds='30s'),
     'spec.terminationGracePeriodSeconds'),
    ('shareProcessNamespace a string', lambda m: m['spec'].update(shareProcessNamespace='yes'),
     'spec.shareProcessNamespace'),
]


def test_the_base_pod_is_valid():
    assert f.pod_validate(copy.deepcopy(POD))['metadata']['name'] == 'core-k8s'


@pytest.mark.parametrize('what,mutate,field', REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_naming_the_field(what, mutate, field):
    m = copy.deepcopy(POD)
    mutate(m)
    with pytest.raises(AnsibleFilterError) as e:
        f.pod_validate(m)
    assert str(e.value).startswith(field + ':'), (what, str(e.value))
    # the role's entry points validate the whole manifest first
    for fn in (f.pod_identity, f.pod_module_args):
        with pytest.raises(AnsibleFilterError):
            fn(m)


@pytest.mark.parametrize('mutate', [
    ctr(command=None, args=['sleep', '1']),  # args alone are the command line
    ctr(resources={'limits': {'cpu': 2, 'memory': 209715200}}),  # numbers are quantities too
    ctr(securityContext={'runAsUser': 1000, 'runAsGroup': 0}, workingDir='/data'),
    lambda m: m['spec'].update(terminationGracePeriodSeconds=0, shareProcessNamespace=True),
])
def test_accepted(mutate):
    m = copy.deepcopy(POD)
    mutate(m)
    assert f.pod_validate(m) is m


def test_the_role_refuses_an_image_it_cannot_make_a_rootfs_from_before_any_change():
    m = copy.deepcopy(POD)
    m['spec']['containers'][0]['image'] = 'nginx:1.27'
    with pytest.raises(AnsibleFilterError, match=r'spec.containers\[c\].image'):
        f.pod_module_args(m)
    assert f.pod_module_args(m, dict(images={'nginx:1.27': '/srv/nginx.tar'}))['rootfs'][0]['image'] == '/srv/nginx.tar'


def test_the_role_refuses_a_volume_type_it_does_not_support_before_any_change():
    m = copy.deepcopy(POD)
    m['spec']['volumes'] = [{'name': 'shm', 'configMap': {'name': 'x'}}]
    with pytest.raises(AnsibleFilterError, match='volume type configMap is not supported'):
        f.pod_module_args(m)
