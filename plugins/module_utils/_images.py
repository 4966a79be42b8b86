# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image module's manager: pull / import / remove / list / prune in the node's store,
as ``crictl pull``, ``ctr images import``, ``crictl rmi``, ``crictl images`` and
``crictl rmi --prune`` do. Observe (the store's references) -> plan (pure) -> apply behind
one check-mode guard.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile

from ansible_collections.barepod.linux.plugins.module_utils._common import Actions, BarepodError, Manager, result
from ansible_collections.barepod.linux.plugins.module_utils import _image
from ansible_collections.barepod.linux.plugins.module_utils import _imagepull
from ansible_collections.barepod.linux.plugins.module_utils import _imageref
from ansible_collections.barepod.linux.plugins.module_utils import _imagestore as st


def spec():
    """AnsibleModule keyword arguments of the image module."""
    return dict(
        argument_spec=dict(
            name=dict(type='str'),
            state=dict(type='str', choices=['present', 'absent', 'pruned'], default='present'),
            source=dict(type='str', choices=['registry', 'archive'], default='registry'),
            path=dict(type='path'),
            format=dict(type='str', choices=list(_image.FORMATS), default='auto'),
            config=dict(type='dict'),
            pull_policy=dict(type='str', choices=list(_imageref.PULL_POLICIES)),
            keep=dict(type='list', elements='str', default=[]),
            store_root=dict(type='path', default=st.DEFAULT_ROOT),
            registries_conf=dict(type='path'),
            authfile=dict(type='path'),
            pull_secrets=dict(type='list', elements='dict', no_log=True),
            tls_verify=dict(type='bool'),
            cert_dir=dict(type='path'),
            policy=dict(type='path'),
            timeout=dict(type='int', default=900),
        ),
        required_if=[('source', 'archive', ('path',)), ('state', 'absent', ('name',))],
    )


def info_spec():
    """AnsibleModule keyword arguments of the image_info module."""
    return dict(argument_spec=dict(
        name=dict(type='list', elements='str', default=[]),
        store_root=dict(type='path', default=st.DEFAULT_ROOT),
    ))


class ImageInfoManager(Manager):
    """Stored images, like ``crictl images [REF]`` / ``crictl inspecti``: read only."""

    def run(self):
        store = st.ImageStore(self.params['store_root'])
        images = store.images()
        names = self.params.get('name') or []
        if names:
            wanted = []
            for n in names:
                img = store.find_image(n) if _is_id(n) else None
                if img is None:
                    ref = parse_name(n)
                    rec = store.get(ref)
                    img = _image_facts(store, rec, ref) if rec is not None else None
                if img is not None and img['id'] not in [i['id'] for i in wanted]:
                    wanted.append(img)
            images = wanted
        for img in images:
            try:
                img['config'] = store.read_json(img['id'])
            except (IOError, OSError, ValueError):
                img['config'] = None
        return result(False, images=images)


def _is_id(key):
    k = key[len('sha256:'):] if key.startswith('sha256:') else key
    return len(k) >= 12 and all(c in '0123456789abcdef' for c in k)


DOCKERCONFIGJSON = 'kubernetes.io/dockerconfigjson'
DOCKERCFG = 'kubernetes.io/dockercfg'


def _secret_auths(i, secret):
    """The ``auths`` map of one imagePullSecret: a Secret of type kubernetes.io/dockerconfigjson
    (data base64 or stringData) or kubernetes.io/dockercfg, or a bare config.json document.
    Errors name the secret, never a value."""
    field = 'pull_secrets[%d]' % i
    if not isinstance(secret, dict):
        raise BarepodError('must be a Secret or a config.json document', field=field)
    if 'auths' in secret and 'kind' not in secret:
        auths = secret['auths']
    else:
        name = (secret.get('metadata') or {}).get('name') or field
        stype = secret.get('type')
        if stype not in (DOCKERCONFIGJSON, DOCKERCFG):
            raise BarepodError('secret %s has type %r, not %s or %s' % (name, stype, DOCKERCONFIGJSON, DOCKERCFG), field=field)
        key = '.dockerconfigjson' if stype == DOCKERCONFIGJSON else '.dockercfg'
        raw = (secret.get('stringData') or {}).get(key)
        if raw is None:
            data = (secret.get('data') or {}).get(key)
            if data is None:
                raise BarepodError('secret %s has no %s' % (name, key), field=field)
            try:
                raw = base64.b64decode(data, validate=True).decode('utf-8')
            except (ValueError, TypeError):
                raise BarepodError('secret %s: %s is not valid base64' % (name, key), field=field)
        try:
            doc = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            raise BarepodError('secret %s: %s is not valid JSON' % (name, key), field=field)
        auths = doc.get('auths') if stype == DOCKERCONFIGJSON and isinstance(doc, dict) else doc
    if not isinstance(auths, dict):
        raise BarepodError('has no auths map', field=field)
    return auths


def merged_auths(secrets, authfile=None):
    """One auth.json for skopeo from the pod's imagePullSecrets, in order (the first secret
    naming a registry wins), then the entries of `authfile` for other registries."""
    auths = {}
    for i, secret in enumerate(secrets or ()):
        for k, v in _secret_auths(i, secret).items():
            auths.setdefault(k, v)
    if authfile:
        try:
            with open(authfile) as f:
                extra = json.load(f).get('auths') or {}
        except (IOError, OSError, ValueError, AttributeError) as e:
            raise BarepodError('cannot read %s: %s' % (authfile, e), field='authfile', value=authfile)
        for k, v in extra.items():
            auths.setdefault(k, v)
    return dict(auths=auths)


def parse_name(name, field='name'):
    """A reference, or a BarepodError with kubelet's InvalidImageName message."""
    try:
        return _imageref.parse(name, field=field)
    except _imageref.ImageRefError:
        raise BarepodError('%s: %s' % (field, _imageref.invalid_image_name(name)), field=field, value=name, reason=_imagepull.INVALID_IMAGE_NAME)


def _view(store):
    """The store as --diff shows it: reference -> image id."""
    return dict((n, rec['config']) for n, rec in sorted(store.refs().items()))


def _image_facts(store, rec, ref=None):
    if rec is None:
        return None
    for img in store.images():
        if img['id'] == rec['config']:
            out = dict(img)
            if ref is not None:
                out['repo_digest'] = '%s@%s' % (ref.name, rec['target'])
            return out
    return None


class ImageManager(Manager):
    def __init__(self, params, check_mode=False, diff=False):
        super().__init__(params, check_mode, diff)
        self.store = st.ImageStore(params['store_root'])
        self.actions = Actions(check_mode)
        self.warnings = []
        self._import_done = {}
        self._authfile = None

    def puller(self):
        p = self.params
        return _imagepull.Puller(self.store, registries_conf=p.get('registries_conf'), authfile=self._authfile or p.get('authfile'),
                                 tls_verify=p.get('tls_verify'), policy=p.get('policy'), timeout=p.get('timeout') or 900,
                                 cert_dir=p.get('cert_dir'))

    def run(self):
        state = self.params['state']
        secrets = self.params.get('pull_secrets')
        if not secrets:
            return self._run(state)
        doc = merged_auths(secrets, self.params.get('authfile'))
        tmp = tempfile.mkdtemp(prefix='barepod-auth-')
        try:
            self._authfile = os.path.join(tmp, 'auth.json')
            fd = os.open(self._authfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, 'w') as f:
                json.dump(doc, f)
            return self._run(state)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _run(self, state):
        before = _view(self.store)
        facts = getattr(self, '_plan_' + state)()
        self.actions.run()
        after = _view(self.store) if not self.check_mode else self._predict(before)
        diff = dict(before=before, after=after) if self.want_diff else None
        if not self.check_mode:
            facts = self._refresh(state, facts)
        else:
            facts.pop('ref', None)
        return result(bool(self.actions), self.actions.planned, diff, self.warnings, **facts)

    def _predict(self, before):
        """--diff in check mode: the store as the plan would leave it (a pulled or imported
        image whose id is not known yet shows as '(pull)' / '(import)')."""
        after = dict(before)
        for a in self.actions.planned:
            if a['action'] in ('pull', 'import'):
                after[a['target']] = '(%s)' % a['action']
            for n in a.get('references') or ():
                after.pop(n, None)
        return after

    def _refresh(self, state, facts):
        ref = facts.pop('ref', None)
        if state == 'present' and ref is not None:
            facts['image'] = _image_facts(self.store, self.store.get(ref), ref)
        elif state == 'present' and self._import_done.get('rec') is not None:
            facts['image'] = _image_facts(self.store, self._import_done['rec'])
        return facts

    # ---- present

    def _plan_present(self):
        p = self.params
        if p['source'] == 'archive':
            return self._plan_import()
        if not p.get('name'):
            raise BarepodError('is required to pull an image', field='name')
        ref = parse_name(p['name'])
        policy = _imageref.pull_policy(ref, p.get('pull_policy'), field='pull_policy')
        rec = self.store.get(ref)
        facts = dict(ref=ref, pull_policy=policy, image=_image_facts(self.store, rec, ref))
        if policy == _imageref.PULL_NEVER:
            if rec is None:
                raise BarepodError('name: ' + _imagepull.never_pull_message(p['name']), field='name', value=p['name'],
                                   reason=_imagepull.ERR_IMAGE_NEVER_PULL)
            return facts
        if rec is not None and policy == _imageref.PULL_IF_NOT_PRESENT:
            return facts
        resolved = None
        puller = self.puller()
        if rec is not None or ref.digest:
            # Always: resolve the tag (one manifest request) and pull only when it moved
            resolved = puller.resolve(ref)
            if rec is not None and rec['target'] == resolved[0]:
                manifest = puller.platform_manifest(ref, resolved[0], resolved[1])
                if rec['manifest'] == manifest:
                    return facts
        target = resolved[0] if resolved else None

        def pull():
            with self.store.lock():
                puller.pull(ref, resolved)
                if rec is not None:
                    # the tag moved: the image it named is gone unless another reference holds it
                    self.store.gc()
        self.actions.add('pull', ref.canonical, pull, digest=target, previous=rec['target'] if rec else None)
        return facts

    def _plan_import(self):
        p = self.params
        image = _image.Image(p['path'], p['format'])
        fingerprint = image.fingerprint()
        names = []
        if p.get('name'):
            names = [parse_name(p['name']).canonical]
        refs = self.store.refs()
        source = 'archive:%s' % p['path']
        if names:
            current = [refs.get(n) for n in names]
            up_to_date = all(r is not None and r.get('fingerprint') == fingerprint and self.store.complete(r) for r in current)
        else:
            current = [r for r in refs.values() if r.get('source') == source and r.get('fingerprint') == fingerprint]
            up_to_date = bool(current) and all(self.store.complete(r) for r in current)
        ref = parse_name(p['name']) if p.get('name') else None
        facts = dict(ref=ref, image=None)
        if up_to_date:
            rec = current[0]
            facts['image'] = _image_facts(self.store, rec, ref)
            return facts
        done = {}

        def do_import():
            with self.store.lock():
                with self.store.ingest() as ing:
                    rec, canon = st.import_archive(self.store, ing, p['path'], p['format'], names, p.get('config'))
                    rec['fingerprint'] = fingerprint
                    self.store.commit(ing, canon, rec)
                    done['rec'], done['names'] = rec, canon
        self.actions.add('import', names[0] if names else p['path'], do_import, path=p['path'], format=image.format)
        self._import_done = done
        return facts

    # ---- absent

    def _names_for(self, key):
        """References to remove for `key`: a reference (name@digest: every reference of that
        repository resolving to it) or an image id (all of its references, as crictl rmi)."""
        refs = self.store.refs()
        img = None
        k = key[len('sha256:'):] if key.startswith('sha256:') else key
        if len(k) >= 12 and all(c in '0123456789abcdef' for c in k):
            hits = [rec['config'] for rec in refs.values() if rec['config'][len('sha256:'):].startswith(k)]
            if len(set(hits)) == 1:
                img = hits[0]
            elif len(set(hits)) > 1:
                raise BarepodError('image id prefix %r is ambiguous' % key, field='name', value=key)
        if img is not None:
            return sorted(n for n, rec in refs.items() if rec['config'] == img)
        ref = parse_name(key)
        out = [ref.canonical] if ref.canonical in refs else []
        if ref.digest:
            out += [n for n, rec in refs.items() if n not in out and _imageref.parse(n).name == ref.name
                    and ref.digest in (rec['target'], rec['manifest'])]
        return sorted(out)

    def _plan_absent(self):
        names = self._names_for(self.params['name'])
        if names:
            def remove():
                with self.store.lock():
                    self.store.remove_refs(names)
                    self.store.gc()
            self.actions.add('remove', ', '.join(names), remove, references=names)
        return dict(removed=names)

    # ---- pruned

    def _plan_pruned(self):
        keep_ids = set()
        refs = self.store.refs()
        for k in self.params.get('keep') or []:
            keep_ids.update(refs[n]['config'] for n in self._names_for(k) if n in refs)
        victims = sorted(n for n, rec in refs.items() if rec['config'] not in keep_ids)
        ids = sorted(set(refs[n]['config'] for n in victims))
        orphans = self.store.unreferenced_blobs() if self.store.exists() else []
        orphan_snaps = self.store.unreferenced_snapshots() if self.store.exists() else []
        if victims or orphans or orphan_snaps:
            def prune():
                with self.store.lock():
                    self.store.remove_refs(victims)
                    self.store.gc()
            self.actions.add('prune', self.store.root, prune, references=victims, images=ids, orphan_blobs=len(orphans),
                             orphan_snapshots=len(orphan_snaps))
        return dict(removed=victims, pruned=ids)
