# -*- coding: utf-8 -*-
# Copyright: barepod.linux developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r'''
name: project_dir
author:
  - barepod.linux developers (@barepod)
short_description: The directory ansible-playbook runs in (the user's project)
version_added: 0.1.0
description:
  - Returns the controller's current working directory, where the user ran C(ansible-playbook),
    that is the project directory that the collection's roles and playbooks use as the default place for
    their output (reports, inventories), so nothing is ever written inside the installed collection.
  - Unlike C(lookup('ansible.builtin.pipe', 'pwd')), which runs in the playbook's own directory
    (inside the collection for C(barepod.linux.*) playbooks), and C(lookup('ansible.builtin.env', 'PWD')),
    which is whatever the calling shell last set, this is the process's real working directory.
options: {}
'''

EXAMPLES = r'''
- name: Write a report below the user's project
  ansible.builtin.copy:
    content: "{{ report }}"
    dest: "{{ lookup('barepod.linux.project_dir') }}/build/report.json"
    mode: "0644"
  delegate_to: localhost
'''

RETURN = r'''
_raw:
  description: The controller's current working directory, as one absolute path.
  type: list
  elements: path
'''

import os

from ansible.plugins.lookup import LookupBase


class LookupModule(LookupBase):

    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        return [os.getcwd()]
