#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: image_info
short_description: The images of the node's store, like crictl images
version_added: 0.2.0
description:
  - Lists the images that M(barepod.linux.image) pulled or imported into the store under O(store_root), grouped by
    image id as C(crictl images) groups them, with each image's configuration as C(crictl inspecti) shows it.
  - Read only.
options:
  name:
    description:
      - Only these images - references (C(nginx), C(registry.k8s.io/pause:3.10), C(name@sha256:...)) or image ids
        (C(sha256:...) or at least 12 hex digits of one). Images not stored are left out.
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - barepod.linux.roots.image_store
requirements:
  - Python 3.9 or newer on the managed node (older ones are refused).
author:
  - barepod.linux developers (@barepod)
notes:
  - Supports check mode.
'''

EXAMPLES = r'''
- name: Every stored image
  barepod.linux.image_info:
  register: stored

- name: The image id of nginx
  barepod.linux.image_info:
    name: [nginx]
  register: nginx
'''

RETURN = r'''
images:
  description: The images, each with id (the config digest), repo_tags, repo_digests, size (bytes), manifest,
    layers, platform and config (the image configuration document).
  returned: always
  type: list
  elements: dict
  sample:
    - id: sha256:d07ceafa3069e50e5e265221d8063c9a80604f385c9984b6ffd79b55d5865536
      repo_tags: [docker.io/library/busybox:latest]
      repo_digests: [docker.io/library/busybox@sha256:60dd6691862bbac26e5c87c02f82c606511a88cdab9b2345ccf819f8f316aab5]
      size: 1031662
'''

from ansible_collections.barepod.linux.plugins.module_utils._images import ImageInfoManager, info_spec
from ansible_collections.barepod.linux.plugins.module_utils._module import run_module


def main():
    run_module('image_info', info_spec(), ImageInfoManager)


if __name__ == '__main__':
    main()
