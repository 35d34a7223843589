#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Metalfleet developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: a Metalfleet network (tenant, public, provisioning, BMC) and its access list."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: network
short_description: Create or delete a Metalfleet network and converge its access list
description:
  - Reads the network (C(GET /v1/networks/{name})); creates it when missing
    (C(POST /v1/networks)) and deletes it for O(state=absent) (C(DELETE /v1/networks/{name})).
  - O(access) is the complete set of other projects allowed to attach their nodes; missing
    ones are granted (C(PUT /v1/networks/{name}/access/{project})) and extra ones revoked
    (C(DELETE /v1/networks/{name}/access/{project})).
  - The API cannot change a network's kind, owner or VLAN; a difference fails the task
    (delete the network and create it again).
  - Attaching node NICs is not this module's job (C(metalctl network attach)).
version_added: 0.2.0
author: Metalfleet developers
options:
  name:
    description: Network name (letters, digits, C(.), C(_), C(-)).
    type: str
    required: true
  kind:
    description: What the network is for.
    type: str
    choices: [tenant, public, provisioning, bmc]
    default: tenant
  owner:
    description:
      - Owning project of a tenant network. Project members create networks of their own
        project (the default for them); admins name it.
    type: str
  vlan:
    description:
      - 802.1Q VLAN id (admins only). Without it the coordinator takes the lowest free VLAN
        of its configured pool; an existing network's VLAN is then left as it is.
    type: int
  access:
    description:
      - The complete list of other projects allowed to attach nodes. Omit it to leave the
        access list as it is.
    type: list
    elements: str
  state:
    description: Whether the network should exist.
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
- name: A private network for the web project, shared with the db project
  metalfleet.metalfleet.network:
    name: web-backend
    owner: web
    access: [db]
    api_url: https://10.0.0.1:7443
    api_token: "{{ metalfleet_token }}"
    ca_cert: /etc/metalfleet/ca.crt

- name: The internet uplink on VLAN 10
  metalfleet.metalfleet.network:
    name: uplink
    kind: public
    vlan: 10
    api_url: https://10.0.0.1:7443
    api_token: "{{ metalfleet_token }}"
    ca_cert: /etc/metalfleet/ca.crt
'''

RETURN = r'''
network:
  description: The network afterwards (null when absent; in check mode, as it would be).
  returned: success
  type: dict
  sample: {"name": "web-backend", "kind": "tenant", "owner": "web", "access": ["db"], "vlan": 100,
           "created_at": 1763700000000, "revision": 42}
granted:
  description: Projects granted access (or that would be).
  returned: success
  type: list
  elements: str
revoked:
  description: Projects whose access was revoked (or would be).
  returned: success
  type: list
  elements: str
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.metalfleet.metalfleet.plugins.module_utils.api import (
    API_ARGUMENT_SPEC, Client, MetalfleetError, seg)


def immutable_differences(p, current):
    """Requested values the API cannot change on an existing network."""
    out = []
    if current.get('kind') != p['kind']:
        out.append('kind is %s, want %s' % (current.get('kind'), p['kind']))
    if p['owner'] is not None and current.get('owner') != p['owner']:
        out.append('owner is %s, want %s' % (current.get('owner'), p['owner']))
    if p['vlan'] is not None and current.get('vlan') != p['vlan']:
        out.append('vlan is %s, want %s' % (current.get('vlan'), p['vlan']))
    return out


def main():
    spec = dict(
        name=dict(type='str', required=True),
        kind=dict(type='str', choices=['tenant', 'public', 'provisioning', 'bmc'], default='tenant'),
        owner=dict(type='str'),
        vlan=dict(type='int'),
        access=dict(type='list', elements='str'),
        state=dict(type='str', choices=['present', 'absent'], default='present'),
    )
    spec.update(API_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    client = Client.from_module(module)
    p = module.params
    path = '/v1/networks/%s' % seg(p['name'])
    granted, revoked = [], []
    try:
        current = client.get_or_none(path)
        before = current or {}
        if p['state'] == 'absent':
            changed = current is not None
            if changed and not module.check_mode:
                client.request('DELETE', path)
            module.exit_json(changed=changed, network=None, granted=granted, revoked=revoked,
                             diff=dict(before=before, after={}))
        changed = False
        if current is None:
            changed = True
            body = dict(name=p['name'], kind=p['kind'])
            if p['owner'] is not None:
                body['owner'] = p['owner']
            if p['vlan'] is not None:
                body['vlan'] = p['vlan']
            if module.check_mode:
                # The VLAN comes from the pool at creation: unknown until then.
                current = dict(body, owner=p['owner'], access=[], vlan=p['vlan'])
            else:
                current = client.request('POST', '/v1/networks', body=body)
        else:
            bad = immutable_differences(p, current)
            if bad:
                module.fail_json(msg='network %s: %s; the API cannot change that (delete the network '
                                     'and create it again)' % (p['name'], '; '.join(bad)),
                                 network=current)
        have = set(current.get('access') or [])
        if p['access'] is not None:
            want = set(p['access'])
            granted = sorted(want - have)
            revoked = sorted(have - want)
        if granted or revoked:
            changed = True
            if not module.check_mode:
                for project in granted:
                    client.request('PUT', '%s/access/%s' % (path, seg(project)))
                for project in revoked:
                    client.request('DELETE', '%s/access/%s' % (path, seg(project)))
        after = dict(current, access=sorted((have | set(granted)) - set(revoked)))
        if changed and not module.check_mode:
            after = client.get(path)
    except MetalfleetError as e:
        module.fail_json(msg=e.message, error=e.as_dict())
    module.exit_json(changed=changed, network=after, granted=granted, revoked=revoked,
                     diff=dict(before=before, after=after))


if __name__ == '__main__':
    main()
