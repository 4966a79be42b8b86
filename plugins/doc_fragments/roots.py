# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node-wide roots the modules share, one fragment each (barepod.linux.roots.<name>)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    # Where the pod records live: every module that keeps or reads a pod record.
    STATE_ROOT = r'''
options:
  state_root:
    description: Directory of the pod records.
    type: path
    default: /run/barepod/pods
'''

    # Where the node-wide image store lives: the image modules.
    IMAGE_STORE = r'''
options:
  store_root:
    description: Root of the image store.
    type: path
    default: /var/lib/barepod/images
'''
