# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image module against a real registry (Debian's docker-registry on 127.0.0.1, the
mirror of docker.io in a test registries.conf) and real skopeo: pulls of an unmodified
``busybox`` reference, idempotence, imports, removal, prune, a corrupted blob and a bad
reference."""

import hashlib
import io
import json
import os
import subprocess
import tarfile
import threading

import pytest

from conftest import run_module

from registry import Registry, _goarch, busybox_layout, busybox_registry, two_platform_layout

pytestmark = pytest.mark.skipif(not os.path.exists('/usr/bin/docker-registry') or not os.path.exists('/usr/bin/skopeo'),
                                reason='needs docker-registry and skopeo')


@pytest.fixture(scope='module')
def registry(tmp_path_factory):
    with busybox_registry(tmp_path_factory.mktemp('registry'), tags=('latest', '1.36')) as reg:
        yield reg


def image(args, store, reg=None, **kw):
    a = dict(store_root=str(store))
    if reg is not None:
        a['registries_conf'] = reg.conf
    a.update(args)
    return run_module('image', a, **kw)


def store_files(store):
    out = []
    for dirpath, _dirs, files in os.walk(str(store)):
        for f in files:
            out.append(os.path.relpath(os.path.join(dirpath, f), str(store)))
    return sorted(out)


def blob_count(store):
    d = os.path.join(str(store), 'blobs', 'sha256')
    return len(os.listdir(d)) if os.path.isdir(d) else 0


def test_pull_cold_then_again(registry, tmp_path):
    store = tmp_path / 'images'
    chk = image(dict(name='busybox'), store, registry, check=True)
    assert chk.changed and not chk.failed, chk
    assert not store.exists(), 'check mode created the store'

    r = image(dict(name='busybox'), store, registry, diff=True)
    assert r.changed and not r.failed, r
    img = r['image']
    assert r['pull_policy'] == 'Always'
    assert img['repo_tags'] == ['docker.io/library/busybox:latest']
    assert img['repo_digest'] == 'docker.io/library/busybox@' + registry.manifest
    cfg_digest = img['id']
    with open(os.path.join(str(store), 'blobs', 'sha256', cfg_digest.split(':')[1]), 'rb') as f:
        data = f.read()
    assert 'sha256:' + hashlib.sha256(data).hexdigest() == cfg_digest
    assert json.loads(data)['config']['Cmd'] == ['sh']
    assert r['diff']['after'] == {'docker.io/library/busybox:latest': cfg_digest}
    assert os.listdir(os.path.join(str(store), 'ingest')) == []

    # again: the tag is resolved (Always) and nothing is fetched or written
    before = {p: os.stat(os.path.join(str(store), p)).st_mtime_ns for p in store_files(store)}
    again = image(dict(name='busybox'), store, registry)
    assert not again.changed and not again.failed, again
    assert again['image']['id'] == cfg_digest
    assert {p: os.stat(os.path.join(str(store), p)).st_mtime_ns for p in store_files(store)} == before

    # another tag of the same image downloads no blob: only a reference is added
    nblobs = blob_count(store)
    other = image(dict(name='docker.io/library/busybox:1.36'), store, registry)
    assert other.changed and other['pull_policy'] == 'IfNotPresent'
    assert other['image']['id'] == cfg_digest
    assert blob_count(store) == nblobs
    listed = run_module('image_info', dict(store_root=str(store)))
    assert not listed.changed
    assert [i['repo_tags'] for i in listed['images']] == [['docker.io/library/busybox:1.36', 'docker.io/library/busybox:latest']]

    one = run_module('image_info', dict(store_root=str(store), name=['busybox', cfg_digest[7:19]]))
    assert [i['id'] for i in one['images']] == [cfg_digest]
    assert one['images'][0]['config']['config']['Cmd'] == ['sh']

    # by digest: already held, nothing to do
    pinned = image(dict(name='busybox@' + registry.manifest), store, registry)
    assert not pinned.failed and not pinned.changed, pinned


def test_absent_and_prune(registry, tmp_path):
    store = tmp_path / 'images'
    assert image(dict(name='busybox'), store, registry).changed
    gone = image(dict(name='busybox', state='absent'), store, diff=True)
    assert gone.changed and gone['removed'] == ['docker.io/library/busybox:latest'], gone
    assert blob_count(store) == 0
    assert not image(dict(name='busybox', state='absent'), store).changed

    assert image(dict(name='busybox'), store, registry).changed
    imported = image(dict(source='archive', path=registry.layout, name='example.com/mine:1'), store)
    assert imported.changed, imported
    # the same image id behind both names: keeping one name keeps the image
    chk = image(dict(state='pruned', keep=['example.com/mine:1']), store, check=True)
    assert not chk.changed and chk['removed'] == [], chk
    chk = image(dict(state='pruned'), store, check=True, diff=True)
    assert chk.changed and chk['removed'] == ['docker.io/library/busybox:latest', 'example.com/mine:1'], chk
    assert len(chk['diff']['before']) == 2 and chk['diff']['after'] == {}
    assert blob_count(store) == 3
    pr = image(dict(state='pruned', keep=['example.com/mine:1']), store)
    assert pr['pruned'] == [] and not pr.changed, pr
    pr = image(dict(state='pruned'), store)
    assert pr.changed and len(pr['pruned']) == 1
    assert blob_count(store) == 0
    assert not image(dict(state='pruned'), store).changed


def _docker_save(path, layout):
    """A docker-save archive of the busybox layout (manifest.json, <id>.json, <layer>/layer.tar)."""
    index = json.load(open(os.path.join(layout, 'index.json')))
    man = json.load(open(os.path.join(layout, 'blobs', 'sha256', index['manifests'][0]['digest'].split(':')[1])))
    cfg = open(os.path.join(layout, 'blobs', 'sha256', man['config']['digest'].split(':')[1]), 'rb').read()
    import gzip
    layer = gzip.decompress(open(os.path.join(layout, 'blobs', 'sha256', man['layers'][0]['digest'].split(':')[1]), 'rb').read())
    cid = hashlib.sha256(cfg).hexdigest()
    lid = hashlib.sha256(layer).hexdigest()
    with tarfile.open(str(path), 'w') as tf:
        for name, data in (('%s.json' % cid, cfg), ('%s/layer.tar' % lid, layer),
                           ('manifest.json', json.dumps([dict(Config='%s.json' % cid, RepoTags=['busybox:saved'],
                                                              Layers=['%s/layer.tar' % lid])]).encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return 'sha256:' + cid


def test_import_docker_save(registry, tmp_path):
    store = tmp_path / 'images'
    archive = tmp_path / 'busybox.tar'
    cid = _docker_save(archive, registry.layout)
    r = image(dict(source='archive', path=str(archive)), store, diff=True)
    assert r.changed and not r.failed, r
    assert r['image']['id'] == cid
    assert r['image']['repo_tags'] == ['docker.io/library/busybox:saved']
    again = image(dict(source='archive', path=str(archive)), store)
    assert not again.changed, again
    # a rootfs directory with a config given, like docker import --change
    rootfs = tmp_path / 'rootfs'
    os.makedirs(str(rootfs / 'bin'))
    with open(str(rootfs / 'bin' / 'hello'), 'w') as f:
        f.write('hi\n')
    d = image(dict(source='archive', path=str(rootfs), name='local/hello', config=dict(Cmd=['/bin/hello'])), store)
    assert d.changed, d
    cfg = json.load(open(os.path.join(str(store), 'blobs', 'sha256', d['image']['id'].split(':')[1])))
    assert cfg['config'] == {'Cmd': ['/bin/hello']} and cfg['os'] == 'linux'
    assert not image(dict(source='archive', path=str(rootfs), name='local/hello', config=dict(Cmd=['/bin/hello'])), store).changed


def test_corrupted_blob_refused(registry, tmp_path):
    store = tmp_path / 'images'
    layout = str(tmp_path / 'other-oci')
    extra = [('etc/marker', b'corrupt me\n')]
    manifest = busybox_layout(layout, tag='1', extra=extra)
    registry.push(layout, '1', 'library/corrupt:1')
    man = json.load(open(os.path.join(layout, 'blobs', 'sha256', manifest.split(':')[1])))
    blob = registry.blob_path(man['layers'][0]['digest'])
    with open(blob, 'r+b') as f:
        f.seek(200)
        b = f.read(1)
        f.seek(200)
        f.write(bytes([b[0] ^ 0xff]))
    r = image(dict(name='corrupt:1'), store, registry)
    assert r.failed, r
    assert r['msg'].startswith('Failed to pull image "corrupt:1": ') and 'igest' in r['msg'], r['msg']
    assert man['layers'][0]['digest'] in r['msg']
    # nothing a later pod would use: no reference, no blob, no work directory
    assert not os.path.exists(os.path.join(str(store), 'refs.json'))
    assert blob_count(store) == 0
    assert os.listdir(os.path.join(str(store), 'ingest')) == []


def test_bad_reference_refused_before_anything(registry, tmp_path):
    store = tmp_path / 'images'
    r = image(dict(name='BusyBox'), store, registry)
    assert r.failed
    assert r['msg'] == ('name: Failed to apply default image tag "BusyBox": couldn\'t parse image reference "BusyBox": '
                        'invalid reference format: repository name (library/BusyBox) must be lowercase')
    r = image(dict(name='busybox@sha256:1234'), store, registry)
    assert r.failed and 'invalid reference format' in r['msg']
    assert not store.exists()


def test_unknown_image_and_never(registry, tmp_path):
    store = tmp_path / 'images'
    r = image(dict(name='nosuch:1'), store, registry)
    assert r.failed and r['msg'].startswith('Failed to pull image "nosuch:1": '), r
    assert 'manifest unknown' in r['msg']
    r = image(dict(name='busybox', pull_policy='Never'), store, registry)
    assert r.failed and 'Container image "busybox" is not present with pull policy of Never' in r['msg']
    assert not os.path.exists(os.path.join(str(store), 'refs.json'))


@pytest.mark.parametrize('point', ['image-pull-copied', 'image-commit'])
def test_killed_pull_leaves_nothing_usable(registry, tmp_path, point, reliability_log):
    store = tmp_path / 'images'
    try:
        r = image(dict(name='busybox'), store, registry, env={'BAREPOD_FAILPOINTS': point + '=kill'})
    except AssertionError as e:
        assert 'printed no JSON' in str(e)  # killed: no result at all
    else:
        raise AssertionError('the module was not killed: %r' % (r,))
    # no reference: a pod asking for busybox with pull policy Never would not find it
    assert not os.path.exists(os.path.join(str(store), 'refs.json'))
    never = image(dict(name='busybox', pull_policy='Never'), store)
    assert never.failed and 'Container image "busybox" is not present with pull policy of Never' in never['msg']
    # the next pull completes; what the dead one left is cleared (work dir) or collected (blobs)
    ok = image(dict(name='busybox'), store, registry)
    assert ok.changed and not ok.failed, ok
    assert os.listdir(os.path.join(str(store), 'ingest')) == []
    assert not image(dict(state='pruned', keep=['busybox']), store).changed
    reliability_log('fault', 'kill -9 during image pull at %s' % point, 'survived')


def _secret(host, user, password, name='regcred'):
    import base64
    auth = base64.b64encode(('%s:%s' % (user, password)).encode()).decode()
    doc = json.dumps({'auths': {host: {'auth': auth}}})
    return {'apiVersion': 'v1', 'kind': 'Secret', 'metadata': {'name': name}, 'type': 'kubernetes.io/dockerconfigjson',
            'data': {'.dockerconfigjson': base64.b64encode(doc.encode()).decode()}}


def test_pull_with_image_pull_secret(tmp_path):
    password = 'pw-' + os.urandom(8).hex()
    reg = Registry(tmp_path / 'reg', htpasswd=('puller', password)).start()
    try:
        layout = str(tmp_path / 'oci')
        busybox_layout(layout)
        reg.push(layout, 'latest', 'team/app:1')
        conf = reg.registries_conf(tmp_path / 'registries.conf')
        store = tmp_path / 'images'
        ref = '%s/team/app:1' % reg.host
        # tls_verify=false: the test registry speaks plain HTTP on loopback
        anon = image(dict(name=ref, tls_verify=False), store, None)
        assert anon.failed and anon['msg'].startswith('Failed to pull image "%s": ' % ref), anon
        assert 'unauthorized' in anon['msg'] or 'authentication required' in anon['msg'], anon['msg']

        wrong = image(dict(name=ref, tls_verify=False, pull_secrets=[_secret(reg.host, 'puller', 'nope')]), store)
        assert wrong.failed and ('unauthorized' in wrong['msg'] or 'authentication required' in wrong['msg']), wrong['msg']

        ok = image(dict(name=ref, tls_verify=False, pull_secrets=[_secret(reg.host, 'puller', password)]), store)
        assert ok.changed and not ok.failed, ok
        assert ok['image']['repo_tags'] == [ref]
        for res in (anon, wrong, ok):
            text = json.dumps(res)
            assert password not in text and 'cHVsbGVy' not in text  # neither the password nor the base64 auth
        # a secret of another type is refused, naming the field (Ansible masks the secret's own strings, no_log)
        bad = image(dict(name=ref, tls_verify=False, pull_secrets=[dict(_secret(reg.host, 'puller', password), type='Opaque')]), store)
        assert bad.failed and bad['msg'].startswith('pull_secrets[0]: secret ') and 'not kubernetes.io/dockerconfigjson' in bad['msg']
        assert password not in json.dumps(bad)
        assert conf  # the mirror config is not needed for a fully qualified name
    finally:
        reg.stop()


def test_index_resolved_to_this_platform(registry, tmp_path):
    layout = str(tmp_path / 'multi')
    index, manifests = two_platform_layout(layout)
    registry.push(layout, 'latest', 'library/multi:2', all_platforms=True)
    store = tmp_path / 'images'
    r = image(dict(name='multi:2'), store, registry)
    assert r.changed and not r.failed, r
    host = _goarch()
    assert r['image']['repo_digest'] == 'docker.io/library/multi@' + index  # the index, as kubelet's imageID
    assert r['image']['manifest'] == manifests[host]
    other = [d for a, d in manifests.items() if a != host][0]
    stored = set('sha256:' + n for n in os.listdir(os.path.join(str(store), 'blobs', 'sha256')))
    assert other not in stored and index in stored
    cfg = json.load(open(os.path.join(str(store), 'blobs', 'sha256', r['image']['id'][7:])))
    assert cfg['architecture'] == host and cfg['config']['Cmd'] == ['sh']
    assert not image(dict(name='multi:2'), store, registry).changed
    # pinned by the index digest: held already
    assert not image(dict(name='multi@' + index), store, registry).changed


def test_pull_over_tls_with_a_test_ca(tmp_path):
    reg = Registry(tmp_path / 'reg', tls=True).start()
    try:
        layout = str(tmp_path / 'oci')
        busybox_layout(layout)
        reg.push(layout, 'latest', 'secure/app:1')
        store = tmp_path / 'images'
        ref = '%s/secure/app:1' % reg.host
        unknown = image(dict(name=ref), store)
        assert unknown.failed and 'certificate' in unknown['msg'], unknown['msg']
        assert not os.path.exists(os.path.join(str(store), 'refs.json'))
        ok = image(dict(name=ref, cert_dir=reg.cert_dir), store)
        assert ok.changed and not ok.failed, ok
        assert not image(dict(name=ref, cert_dir=reg.cert_dir), store).changed
    finally:
        reg.stop()


def test_docker_v2s2_image(registry, tmp_path):
    """Most of Docker Hub serves Docker schema 2 manifests: pulled with their digests kept."""
    subprocess.run(['skopeo', 'copy', '--quiet', '--format', 'v2s2', '--dest-tls-verify=false', 'oci:%s:latest' % registry.layout,
                    'docker://%s/library/dockerish:1' % registry.host], check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store = tmp_path / 'images'
    r = image(dict(name='dockerish:1'), store, registry)
    assert r.changed and not r.failed, r
    man = json.load(open(os.path.join(str(store), 'blobs', 'sha256', r['image']['manifest'][7:])))
    assert man['mediaType'] == 'application/vnd.docker.distribution.manifest.v2+json'
    assert r['image']['repo_digest'] == 'docker.io/library/dockerish@' + r['image']['manifest']


def test_concurrent_pulls_one_image(registry, tmp_path):
    store = tmp_path / 'images'
    results = []

    def pull(name):
        results.append(image(dict(name=name), store, registry))
    threads = [threading.Thread(target=pull, args=(n,)) for n in ('busybox', 'busybox:1.36', 'busybox')]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(not r.failed for r in results), results
    ids = set(r['image']['id'] for r in results)
    assert len(ids) == 1
    assert blob_count(store) == 3  # manifest, config, layer: once
    assert os.listdir(os.path.join(str(store), 'ingest')) == []


def test_moved_tag_pulls_again_and_drops_the_old_image(registry, tmp_path):
    store = tmp_path / 'images'
    layout = str(tmp_path / 'v1')
    busybox_layout(layout, tag='v', config=dict(Env=['VERSION=1']))
    registry.push(layout, 'v', 'library/moving:latest')
    first = image(dict(name='moving'), store, registry)
    assert first.changed and not first.failed, first
    layout2 = str(tmp_path / 'v2')
    busybox_layout(layout2, tag='v', config=dict(Env=['VERSION=2']))
    registry.push(layout2, 'v', 'library/moving:latest')
    second = image(dict(name='moving'), store, registry)
    assert second.changed and second['actions'][0]['previous'] == first['image']['repo_digest'].split('@')[1]
    assert second['image']['id'] != first['image']['id']
    stored = set('sha256:' + n for n in os.listdir(os.path.join(str(store), 'blobs', 'sha256')))
    assert first['image']['id'] not in stored and second['image']['id'] in stored
    assert blob_count(store) == 3  # the layer is shared, the old config and manifest are gone


def test_blocked_registry(registry, tmp_path):
    conf = tmp_path / 'blocked.conf'
    with open(registry.conf) as f:
        text = f.read()
    conf.write_text(text + '\n[[registry]]\nprefix = "docker.io/library/forbidden"\nlocation = "docker.io/library/forbidden"\nblocked = true\n')
    store = tmp_path / 'images'
    r = image(dict(name='forbidden:1', registries_conf=str(conf)), store)
    assert r.failed and r['msg'].startswith('Failed to pull image "forbidden:1": ') and 'blocked' in r['msg'], r['msg']
    assert not os.path.exists(os.path.join(str(store), 'refs.json'))
