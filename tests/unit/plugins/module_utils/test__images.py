# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image manager's pure parts: imagePullSecrets merged into one auth file, skopeo's
messages, and the plan for references (no registry needed)."""

import base64
import json

import pytest

from ansible_collections.barepod.linux.plugins.module_utils._common import BarepodError
from ansible_collections.barepod.linux.plugins.module_utils import _images
from ansible_collections.barepod.linux.plugins.module_utils import _imagepull


def secret(auths, name='regcred', stype='kubernetes.io/dockerconfigjson', string=False):
    doc = json.dumps({'auths': auths} if stype.endswith('json') else auths)
    s = dict(apiVersion='v1', kind='Secret', metadata=dict(name=name), type=stype)
    key = '.dockerconfigjson' if stype.endswith('json') else '.dockercfg'
    if string:
        s['stringData'] = {key: doc}
    else:
        s['data'] = {key: base64.b64encode(doc.encode()).decode()}
    return s


def test_merged_auths_first_secret_wins(tmp_path):
    f = tmp_path / 'auth.json'
    f.write_text(json.dumps({'auths': {'a.example': {'auth': 'file'}, 'c.example': {'auth': 'file'}}}))
    out = _images.merged_auths([
        secret({'a.example': {'auth': 'one'}}),
        secret({'a.example': {'auth': 'two'}, 'b.example': {'auth': 'two'}}, string=True),
        secret({'d.example': {'auth': 'legacy'}}, stype='kubernetes.io/dockercfg'),
        {'auths': {'e.example': {'auth': 'bare'}}},
    ], str(f))
    assert out == {'auths': {'a.example': {'auth': 'one'}, 'b.example': {'auth': 'two'}, 'c.example': {'auth': 'file'},
                             'd.example': {'auth': 'legacy'}, 'e.example': {'auth': 'bare'}}}


@pytest.mark.parametrize('bad,msg', [
    (dict(kind='Secret', metadata=dict(name='x'), type='Opaque', data={}), "secret x has type 'Opaque'"),
    (dict(kind='Secret', metadata=dict(name='x'), type='kubernetes.io/dockerconfigjson', data={}), 'secret x has no .dockerconfigjson'),
    (dict(kind='Secret', metadata=dict(name='x'), type='kubernetes.io/dockerconfigjson', data={'.dockerconfigjson': '!!'}),
     'not valid base64'),
    ('text', 'must be a Secret'),
])
def test_bad_secrets(bad, msg):
    with pytest.raises(BarepodError) as e:
        _images.merged_auths([bad])
    assert msg in str(e.value) and str(e.value).startswith('pull_secrets[0]: ')


def test_skopeo_message():
    err = (b'time="2026-12-08T02:11:56Z" level=fatal msg="writing blob: happened during read: Digest did not match, '
           b'expected sha256:aa, got sha256:bb"\n')
    assert _imagepull.skopeo_message(err) == 'writing blob: happened during read: Digest did not match, expected sha256:aa, got sha256:bb'
    quoted = b'time="x" level=fatal msg="Error parsing image name \\"docker://x\\": nope"\n'
    assert _imagepull.skopeo_message(quoted) == 'Error parsing image name "docker://x": nope'
    assert _imagepull.skopeo_message(b'plain failure\n') == 'plain failure'
    e = _imagepull.PullError('nginx', 'manifest unknown')
    assert str(e) == 'Failed to pull image "nginx": manifest unknown' and e.reason == 'ErrImagePull'


def params(tmp_path, **kw):
    p = dict(name=None, state='present', source='registry', path=None, format='auto', config=None, pull_policy=None, keep=[],
             store_root=str(tmp_path / 'store'), registries_conf=None, authfile=None, pull_secrets=None, tls_verify=None,
             cert_dir=None, policy=None, timeout=900)
    p.update(kw)
    return p


def test_bad_name_refused_before_anything(tmp_path):
    with pytest.raises(BarepodError) as e:
        _images.ImageManager(params(tmp_path, name='Nginx:1')).run()
    assert str(e.value).startswith('name: Failed to apply default image tag "Nginx:1"')
    assert e.value.extra['reason'] == 'InvalidImageName'
    assert not (tmp_path / 'store').exists()


def test_never_without_image(tmp_path):
    with pytest.raises(BarepodError) as e:
        _images.ImageManager(params(tmp_path, name='nginx:1', pull_policy='Never')).run()
    assert 'Container image "nginx:1" is not present with pull policy of Never' in str(e.value)
    assert e.value.extra['reason'] == 'ErrImageNeverPull'


def test_check_mode_plans_a_pull_without_the_registry(tmp_path):
    # IfNotPresent and not stored: the plan needs no registry request
    res = _images.ImageManager(params(tmp_path, name='nginx:1'), check_mode=True, diff=True).run()
    assert res['diff'] == {'before': {}, 'after': {'docker.io/library/nginx:1': '(pull)'}}
    assert res['changed'] and res['actions'][0]['action'] == 'pull' and res['actions'][0]['target'] == 'docker.io/library/nginx:1'
    assert not (tmp_path / 'store').exists()


def test_absent_and_pruned_on_an_empty_store(tmp_path):
    assert not _images.ImageManager(params(tmp_path, name='nginx', state='absent')).run()['changed']
    assert not _images.ImageManager(params(tmp_path, state='pruned')).run()['changed']
    assert not (tmp_path / 'store').exists()
