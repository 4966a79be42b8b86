import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.barepod.linux.plugins.filter import pod as f

CHAPTER = {
    'apiVersion': 'v1', 'kind': 'Pod',
    'metadata': {'name': 'core-k8s', 'labels': {'app': 'my-example-app'}},
    'spec': {
        'containers': [{
            'name': 'any-old-name-will-do', 'image': 'docker.io/busybox:latest', 'command': ['sleep', '10000'],
            'env': [{'name': 'A', 'value': 1}, {'name': 'B', 'valueFrom': {'fieldRef': {}}}],
            'securityContext': {'runAsUser': 1000},
            'volumeMounts': [{'name': 'host-tmp', 'mountPath': '/data'},
                             {'name': 'shm', 'mountPath': '/cache', 'readOnly': True}]}],
        'volumes': [{'name': 'host-tmp', 'hostPath': {'path': '/tmp'}},
                    {'name': 'shm', 'emptyDir': {'medium': 'Memory', 'sizeLimit': '16Mi'}}],
    },
}


def test_identity_is_stable_and_defaults_namespace():
    a = f.pod_identity(CHAPTER)
    assert a['name'] == 'core-k8s' and a['namespace'] == 'default'
    assert a == f.pod_identity(CHAPTER)
    other = dict(CHAPTER, metadata=dict(CHAPTER['metadata'], namespace='kube-system'))
    assert f.pod_identity(other)['uid'] != a['uid']
    given = dict(CHAPTER, metadata=dict(CHAPTER['metadata'], uid='abc-123'))
    assert f.pod_identity(given)['uid'] == 'abc-123'


@pytest.mark.parametrize('mutate,field', [
    (lambda m: m['metadata'].update(name='Bad/Name'), 'metadata.name'),
    (lambda m: m['metadata'].update(name='x; rm -rf /'), 'metadata.name'),
    (lambda m: m['metadata'].update(namespace='a.b'), 'metadata.namespace'),
    (lambda m: m['spec'].update(containers=[]), 'spec.containers'),
    (lambda m: m['spec']['containers'][0].update(name='..'), 'spec.containers[0].name'),
    (lambda m: m['spec']['containers'][0].update(command='sleep 1'), 'spec.containers[0].command'),
    (lambda m: m['spec']['containers'][0]['volumeMounts'][0].update(name='nope'),
     'spec.containers[0].volumeMounts[0].name'),
    (lambda m: m['metadata'].update(labels={'a': 'x\ny'}), 'metadata.labels.a'),
    (lambda m: m.update(kind='Service'), 'kind'),
])
def test_validate_names_the_field(mutate, field):
    import copy
    m = copy.deepcopy(CHAPTER)
    mutate(m)
    with pytest.raises(AnsibleFilterError) as e:
        f.pod_validate(m)
    assert str(e.value).startswith(field + ':')


def test_source():
    c = CHAPTER['spec']['containers'][0]
    assert f.pod_container_source(c) == {'busybox': True, 'image': None}
    assert f.pod_container_source({'name': 'x', 'image': 'busybox@sha256:abc'})['busybox']
    assert f.pod_container_source({'name': 'x', 'image': 'nginx:1'}, {'nginx:1': '/img/nginx.tar'}) == \
        {'busybox': False, 'image': '/img/nginx.tar'}
    with pytest.raises(AnsibleFilterError, match='pod_images'):
        f.pod_container_source({'name': 'x', 'image': 'nginx:1'})
    with pytest.raises(AnsibleFilterError):
        f.pod_container_source({'name': 'x', 'image': 'mybusyboxclone'})


def test_mounts():
    c = CHAPTER['spec']['containers'][0]
    assert f.pod_container_mounts(c, CHAPTER['spec']['volumes']) == [
        {'type': 'bind', 'source': '/tmp', 'target': '/data', 'read_only': False},
        {'type': 'tmpfs', 'target': '/cache', 'read_only': True, 'size': '16Mi'}]
    with pytest.raises(AnsibleFilterError, match='configMap'):
        f.pod_container_mounts({'name': 'c', 'volumeMounts': [{'name': 'v', 'mountPath': '/v'}]},
                               [{'name': 'v', 'configMap': {'name': 'x'}}])


def test_container_specs():
    [s] = f.pod_container_specs(CHAPTER, '/var/lib/barepod/rootfs/', 'u1', [{'paths': {'memory': '/m', 'cpu': '/c',
                                                                                      'cpuacct': '/c'}}])
    assert s == {'name': 'any-old-name-will-do', 'rootfs': '/var/lib/barepod/rootfs/u1/any-old-name-will-do',
                 'command': ['sleep', '10000'], 'env': [{'name': 'A', 'value': '1'}],
                 'security_context': {'run_as_user': 1000}, 'cgroups': ['/m', '/c']}
