#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Metalfleet developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: a Metalfleet rack."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: rack
short_description: Create, update or delete a Metalfleet rack
description:
  - Ensures a rack (the unit one rack agent serves) exists in a site, or does not exist,
    through C(PUT)/C(DELETE /v1/racks/{name}) of the Metalfleet REST API. The site must exist.
version_added: 0.1.0
author: Metalfleet developers
options:
  name:
    description: Rack name, unique across the fleet.
    type: str
    required: true
  site:
    description: The site the rack stands in. Required with O(state=present).
    type: str
  description:
    description: Free text.
    type: str
    default: ''
  state:
    description: Whether the rack should exist.
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
- name: Rack 12 in Amsterdam 1
  metalfleet.metalfleet.rack:
    name: ams1-r12
    site: ams1
    api_url: https://10.0.0.1:7443
    api_token_file: /etc/metalfleet/admin.token
    ca_cert: /etc/metalfleet/ca.crt
'''

RETURN = r'''
rack:
  description: The rack afterwards (null when absent).
  returned: always
  type: dict
  sample: {"name": "ams1-r12", "site": "ams1", "description": ""}
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.metalfleet.metalfleet.plugins.module_utils.api import (
    API_ARGUMENT_SPEC, Client, ensure_named)


def main():
    spec = dict(
        name=dict(type='str', required=True),
        site=dict(type='str'),
        description=dict(type='str', default=''),
        state=dict(type='str', choices=['present', 'absent'], default='present'),
    )
    spec.update(API_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True,
                           required_if=[('state', 'present', ['site'])])
    client = Client.from_module(module)
    p = module.params
    desired = dict(name=p['name'], description=p['description'])
    if p['site'] is not None:
        desired['site'] = p['site']
    ensure_named(module, client, 'racks', desired, p['state'])


if __name__ == '__main__':
    main()
