#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Metalfleet developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: import expected-inventory records into Metalfleet."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: inventory_import
short_description: Import expected-inventory records (servers known by serial) into Metalfleet
description:
  - Upserts records by serial with C(POST /v1/inventory/import), all or nothing.
  - Always asks the coordinator first with C(?dry_run=true); reports changed only when a
    record would be created or updated, and writes only then (never in check mode). A BMC
    password that is the same as the stored one counts as unchanged (the coordinator compares
    keyed fingerprints; the password is never returned).
version_added: 0.1.0
author: Metalfleet developers
options:
  records:
    description:
      - Records as the API takes them (C(InventoryInput) in C(/v1/openapi.json)) - C(serial),
        C(site), C(rack), optional C(u_position), C(model), C(nics) (C(name), C(mac), C(switch),
        C(port)), C(bmc) (C(address), C(driver), C(credentials) with C(username), C(password)),
        C(static_ips) (C(interface), C(address), C(prefix), C(gateway)), C(tags).
    type: list
    elements: dict
    required: true
extends_documentation_fragment:
  - metalfleet.metalfleet.api
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
'''

EXAMPLES = r'''
- name: Expect two servers in rack 12
  metalfleet.metalfleet.inventory_import:
    records:
      - serial: SN-0001
        site: ams1
        rack: ams1-r12
        u_position: 10
        nics: [{name: eno1, mac: "52:54:00:00:00:01"}]
        bmc: {address: 10.1.0.11, driver: ipmi, credentials: {username: admin, password: "{{ bmc_password }}"}}
        tags: [gpu]
      - serial: SN-0002
        site: ams1
        rack: ams1-r12
    api_url: https://10.0.0.1:7443
    api_token: "{{ metalfleet_token }}"
    ca_cert: /etc/metalfleet/ca.crt
'''

RETURN = r'''
created:
  description: Serials created (or that would be).
  returned: success
  type: list
  elements: str
updated:
  description: Serials updated (or that would be), each with the names of the changed fields.
  returned: success
  type: list
  elements: list
unchanged:
  description: Serials already identical.
  returned: success
  type: list
  elements: str
'''

import copy

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.metalfleet.metalfleet.plugins.module_utils.api import (
    API_ARGUMENT_SPEC, Client, MetalfleetError, seg)


def masked(record):
    """A record for the diff: the BMC password replaced by a marker."""
    r = copy.deepcopy(record)
    creds = (r.get('bmc') or {}).get('credentials')
    if isinstance(creds, dict) and 'password' in creds:
        creds['password'] = '********'
    return r


def main():
    spec = dict(records=dict(type='list', elements='dict', required=True))
    spec.update(API_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    client = Client.from_module(module)
    records = module.params['records']
    if not records:
        module.fail_json(msg='records: nothing to import')
    for i, r in enumerate(records):
        for k in ('serial', 'site', 'rack'):
            if not r.get(k):
                module.fail_json(msg='records[%d].%s is required' % (i, k))
    try:
        plan = client.request('POST', '/v1/inventory/import', body=records, query={'dry_run': 'true'})
        changed_serials = set(plan.get('created', [])) | set(u[0] for u in plan.get('updated', []))
        report = plan
        if changed_serials and not module.check_mode:
            report = client.request('POST', '/v1/inventory/import', body=records)
        diff = dict(before={}, after={})
        if module._diff and changed_serials:
            for s in sorted(changed_serials):
                cur = client.get_or_none('/v1/inventory/%s' % seg(s))
                if cur is not None:
                    diff['before'][s] = cur
            for r in records:
                if r['serial'] in changed_serials:
                    diff['after'][r['serial']] = masked(r)
    except MetalfleetError as e:
        module.fail_json(msg=e.message, error=e.as_dict())
    module.exit_json(changed=bool(changed_serials), created=report.get('created', []),
                     updated=report.get('updated', []), unchanged=report.get('unchanged', []),
                     diff=diff)


if __name__ == '__main__':
    main()
