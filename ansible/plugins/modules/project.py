#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Metalfleet developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: a Metalfleet project (tenant)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: project
short_description: Create, update or delete a Metalfleet project
description:
  - Ensures a project (tenant) exists with the given description, or does not exist, through
    C(PUT)/C(DELETE /v1/projects/{name}) of the Metalfleet REST API.
version_added: 0.1.0
author: Metalfleet developers
options:
  name:
    description: Project name (letters, digits, C(.), C(_), C(-)).
    type: str
    required: true
  description:
    description: Free text.
    type: str
    default: ''
  state:
    description: Whether the project should exist.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - metalfleet.metalfleet.api
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
'''

EXAMPLES = r'''
- name: A project for the web team
  metalfleet.metalfleet.project:
    name: web
    description: Web frontends
    api_url: [https://10.0.0.1:7443, https://10.0.0.2:7443]
    api_token: "{{ metalfleet_token }}"
    ca_cert: /etc/metalfleet/ca.crt
'''

RETURN = r'''
project:
  description: The project afterwards (null when absent).
  returned: always
  type: dict
  sample: {"name": "web", "description": "Web frontends"}
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.metalfleet.metalfleet.plugins.module_utils.api import (
    API_ARGUMENT_SPEC, Client, ensure_named)


def main():
    spec = dict(
        name=dict(type='str', required=True),
        description=dict(type='str', default=''),
        state=dict(type='str', choices=['present', 'absent'], default='present'),
    )
    spec.update(API_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    client = Client.from_module(module)
    p = module.params
    ensure_named(module, client, 'projects', dict(name=p['name'], description=p['description']), p['state'])


if __name__ == '__main__':
    main()
