#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: image
short_description: Container images in the node's content-addressed store (pull, import, remove, list, prune)
version_added: 0.2.0
description:
  - Keeps images in one node-wide store under O(store_root), content-addressed like containerd's (blobs by sha256,
    each verified on write; a reference is recorded only after all its blobs are, so a pull or import that is killed
    or fails leaves nothing a pod would use).
  - C(state=present) pulls O(name) from a registry through containers/image (Debian's C(skopeo)), honouring
    C(/etc/containers/registries.conf) (mirrors, blocked registries, insecure registries), auth files and
    C(policy.json), like C(crictl pull); or imports a local archive with O(source=archive) (C(docker save), an OCI
    layout directory or tar, a root filesystem tar or directory), like C(ctr images import).
  - C(state=absent) removes a reference (or, given an image id, every reference of that image), like C(crictl rmi);
    blobs no reference holds any more are removed.
  - C(state=pruned) removes every image not named in O(keep), and blobs left by interrupted pulls, like
    C(crictl rmi --prune).
  - M(barepod.linux.image_info) lists the stored images, like C(crictl images).
  - References are normalised as container runtimes do (C(nginx) is C(docker.io/library/nginx:latest)); a malformed
    one fails before anything changes, with kubelet's InvalidImageName message.
options:
  name:
    description:
      - The image reference (C(nginx), C(registry.k8s.io/pause:3.10), C(name@sha256:...), C(name:tag@sha256:...)).
      - With O(state=absent), a reference or an image id (C(sha256:...) or at least 12 hex digits of it).
      - With O(source=archive), the reference to record the import as; omitted, the archive's own names are used
        (C(RepoTags) of a C(docker save) archive, C(org.opencontainers.image.ref.name) of an OCI layout).
    type: str
  state:
    description: What to do with the image.
    type: str
    choices: [present, absent, pruned]
    default: present
  source:
    description: Pull from a registry, or import the local archive at O(path).
    type: str
    choices: [registry, archive]
    default: registry
  path:
    description: The local image to import (absolute path), with O(source=archive).
    type: path
  format:
    description: The archive's format; C(auto) detects it from the content.
    type: str
    choices: [auto, dir, tar, oci, docker-archive]
    default: auto
  config:
    description:
      - The image configuration (C(Entrypoint), C(Cmd), C(Env), C(WorkingDir), C(User), C(StopSignal) ...) of an image
        imported from a plain root filesystem (C(dir) or C(tar)), which has none of its own; like C(docker import --change).
    type: dict
  pull_policy:
    description:
      - C(Always) resolves the reference at the registry each run and pulls when it moved; C(IfNotPresent) pulls only
        when the image is not stored; C(Never) never pulls and fails (ErrImageNeverPull) when the image is not stored.
      - Default as Kubernetes defaults C(imagePullPolicy) - C(Always) for the C(latest) tag or no tag, else
        C(IfNotPresent).
    type: str
    choices: [Always, IfNotPresent, Never]
  keep:
    description: With O(state=pruned), references or image ids of images to keep.
    type: list
    elements: str
    default: []
  registries_conf:
    description: A registries.conf to use instead of C(/etc/containers/registries.conf) (skopeo C(--registries-conf)).
    type: path
  authfile:
    description:
      - Registry credentials in the C(auth.json) / C(~/.docker/config.json) format (skopeo C(--authfile)). Omitted,
        containers/image looks at C($REGISTRY_AUTH_FILE), C(${XDG_RUNTIME_DIR}/containers/auth.json) and
        C(~/.docker/config.json). The file's content is never printed.
    type: path
  pull_secrets:
    description:
      - The Pod's C(imagePullSecrets), as the Secret objects - type C(kubernetes.io/dockerconfigjson) (C(data) in
        base64, or C(stringData)) or C(kubernetes.io/dockercfg) - or as bare C(config.json) documents (with an C(auths) map).
      - Their credentials go to skopeo in a private temporary auth file (entries of O(authfile) are added for the
        registries they do not name), removed after the task; the first secret naming a registry wins. Never printed.
    type: list
    elements: dict
  tls_verify:
    description: Require HTTPS with verified certificates (skopeo C(--src-tls-verify)). Omitted, registries.conf decides.
    type: bool
  cert_dir:
    description:
      - A directory of certificates for the registry (C(*.crt) CA certificates, C(*.cert) + C(*.key) client
        certificates; skopeo C(--src-cert-dir)). Omitted, containers/image reads C(/etc/containers/certs.d/<registry>/)
        and C(/etc/docker/certs.d/<registry>/).
    type: path
  policy:
    description: A signature policy file instead of C(/etc/containers/policy.json) (skopeo C(--policy)).
    type: path
  timeout:
    description: Seconds a pull may take.
    type: int
    default: 900
requirements:
  - Python 3.9 or newer on the managed node (older ones are refused).
  - skopeo (Debian package C(skopeo)) for pulls
extends_documentation_fragment:
  - barepod.linux.roots.image_store
author:
  - barepod.linux developers (@barepod)
notes:
  - Supports check mode and diff. With C(pull_policy=Always) check mode still asks the registry what the reference
    resolves to (a read), to report whether a pull would change the store.
  - An image index is resolved to this node's platform (linux, its GOARCH and variant); only that platform's
    manifest, config and layers are fetched.
'''

EXAMPLES = r'''
- name: Pull nginx (docker.io/library/nginx:latest) as a node would
  barepod.linux.image:
    name: nginx

- name: Pull through a mirror configured in a registries.conf of its own
  barepod.linux.image:
    name: registry.k8s.io/pause:3.10
    registries_conf: /etc/barepod/registries.conf

- name: Import a docker save archive (its RepoTags name it), like kind load image-archive
  barepod.linux.image:
    source: archive
    path: /srv/images/app.tar

- name: Make busybox from a root filesystem directory, with the config docker.io/busybox has
  barepod.linux.image:
    name: docker.io/library/busybox:latest
    source: archive
    path: /srv/rootfs/busybox
    config:
      Cmd: [sh]

- name: Pull from a registry that needs credentials, with the Pod's imagePullSecrets
  barepod.linux.image:
    name: registry.example.com/team/app:1.4
    pull_secrets:
      - "{{ lookup('file', 'regcred.json') | from_json }}"   # a kubernetes.io/dockerconfigjson Secret

- name: Remove an image
  barepod.linux.image:
    name: nginx
    state: absent

- name: Remove every image but pause, like crictl rmi --prune
  barepod.linux.image:
    state: pruned
    keep: [registry.k8s.io/pause:3.10]
'''

RETURN = r'''
image:
  description: The image (state=present) - its id (the config digest), repo tags, repo digests and size in bytes.
  returned: with state=present, when the image is stored
  type: dict
  sample:
    id: sha256:d07ceafa3069e50e5e265221d8063c9a80604f385c9984b6ffd79b55d5865536
    repo_tags: [docker.io/library/busybox:latest]
    repo_digests: [docker.io/library/busybox@sha256:60dd6691862bbac26e5c87c02f82c606511a88cdab9b2345ccf819f8f316aab5]
    repo_digest: docker.io/library/busybox@sha256:60dd6691862bbac26e5c87c02f82c606511a88cdab9b2345ccf819f8f316aab5
    size: 1031662
pull_policy:
  description: The pull policy applied (given, or Kubernetes' default for the reference).
  returned: with state=present and source=registry
  type: str
removed:
  description: References removed.
  returned: with state=absent or state=pruned
  type: list
  elements: str
pruned:
  description: Ids of the images removed.
  returned: with state=pruned
  type: list
  elements: str
actions:
  description: What was done (or, in check mode, would be).
  returned: always
  type: list
  elements: dict
'''

from ansible_collections.barepod.linux.plugins.module_utils._images import ImageManager, spec
from ansible_collections.barepod.linux.plugins.module_utils._module import run_module


def main():
    run_module('image', spec(), ImageManager)


if __name__ == '__main__':
    main()
