#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Metalfleet developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: a Metalfleet node's NIC attached to or detached from a network (a job the
rack agent carries out on the NIC's switch port)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: node_nic
short_description: Attach a Metalfleet node's NIC to a network, or detach it
description:
  - Reads the switch ports of the node's NICs (C(GET /v1/nodes/{id}/ports)) and compares the
    NIC's attachments with the request. Only when they differ, C(POST /v1/nodes/{id}/attach)
    (or C(.../detach)) starts a job; the rack agent of the node's rack configures the switch
    port the NIC is cabled to (from the expected inventory or LLDP) and reads it back, and the
    job is polled (C(GET /v1/jobs/{id})) until it ends. A failed job fails the task with the
    agent's (the switch's) message.
  - The coordinator checks ownership - the node must belong to a project the network admits
    (tenant and public networks), or the caller be an admin or operator (provisioning and BMC
    networks) - and refuses a second change of a NIC while a job on it is under way; its
    errors fail the task with their C(code), C(field) and C(message).
version_added: 0.3.0
author: Metalfleet developers
options:
  node:
    description: The node's id (UUID) or chassis serial.
    type: str
    required: true
    aliases: [serial]
  nic:
    description: The NIC's name (as the expected inventory names it, e.g. C(eno1)).
    type: str
    required: true
  network:
    description: The network's name.
    type: str
    required: true
  mode:
    description:
      - How the NIC joins the network - C(access) (untagged; at most one per NIC) or
        C(trunk) (802.1Q-tagged). An attachment in the other mode is changed.
    type: str
    choices: [access, trunk]
    default: access
  state:
    description: C(present) attaches, C(absent) detaches.
    type: str
    choices: [present, absent]
    default: present
  wait_timeout:
    description: Seconds to wait for the job before failing (the job goes on).
    type: int
    default: 300
  poll_interval:
    description: Seconds between polls of the job.
    type: float
    default: 1.0
extends_documentation_fragment:
  - metalfleet.metalfleet.api
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
'''

EXAMPLES = r'''
- name: Put the web node's first NIC on the project's backend network
  metalfleet.metalfleet.node_nic:
    node: SN-0001
    nic: eno1
    network: web-backend
    api_url: https://10.0.0.1:7443
    api_token: "{{ metalfleet_token }}"
    ca_cert: /etc/metalfleet/ca.crt

- name: Take it off again
  metalfleet.metalfleet.node_nic:
    node: SN-0001
    nic: eno1
    network: web-backend
    state: absent
    api_url: https://10.0.0.1:7443
    api_token: "{{ metalfleet_token }}"
    ca_cert: /etc/metalfleet/ca.crt
'''

RETURN = r'''
attachments:
  description: The NIC's networks afterwards (network name to mode; in check mode, as they would be).
  returned: success
  type: dict
  sample: {"web-backend": "access"}
port:
  description:
    - The NIC's switch port afterwards as C(GET /v1/nodes/{id}/ports) shows it (C(rack),
      C(switch), C(port), C(nic), C(attachments), C(config), C(observed), C(applied_ok),
      C(message)); null when the NIC has no port record yet.
  returned: success
  type: dict
job:
  description:
    - The attach or detach job as last polled (C(id), C(kind), C(state) C(done)/C(failed),
      C(ports) with each port's C(state) and C(message), C(error)); null when nothing changed
      or in check mode.
  returned: success
  type: dict
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.metalfleet.metalfleet.plugins.module_utils.api import (
    API_ARGUMENT_SPEC, Client, MetalfleetError, job_failure, seg, wait_job)


def nic_port(ports, nic):
    """The port record of NIC `nic` among a node's ports, or None."""
    for port in ports or []:
        if port.get('nic') == nic:
            return port
    return None


def wanted(attachments, network, mode, state):
    """The attachments the NIC should have (a new dict)."""
    after = dict(attachments)
    if state == 'absent':
        after.pop(network, None)
    else:
        after[network] = mode
    return after


def main():
    spec = dict(
        node=dict(type='str', required=True, aliases=['serial']),
        nic=dict(type='str', required=True),
        network=dict(type='str', required=True),
        mode=dict(type='str', choices=['access', 'trunk'], default='access'),
        state=dict(type='str', choices=['present', 'absent'], default='present'),
        wait_timeout=dict(type='int', default=300),
        poll_interval=dict(type='float', default=1.0),
    )
    spec.update(API_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    client = Client.from_module(module)
    p = module.params
    job = None
    changed = False
    try:
        node = client.get('/v1/nodes/%s' % seg(p['node']))
        ports_path = '/v1/nodes/%s/ports' % seg(node['id'])
        port = nic_port(client.get(ports_path), p['nic'])
        before = dict((port or {}).get('attachments') or {})
        after = wanted(before, p['network'], p['mode'], p['state'])
        changed = after != before
        if changed and not module.check_mode:
            if p['state'] == 'absent':
                body = dict(nic=p['nic'], network=p['network'])
                job = client.request('POST', '/v1/nodes/%s/detach' % seg(node['id']), body=body)
            else:
                body = dict(nic=p['nic'], network=p['network'], mode=p['mode'])
                job = client.request('POST', '/v1/nodes/%s/attach' % seg(node['id']), body=body)
            job = wait_job(client, job, p['wait_timeout'], p['poll_interval'])
            if job.get('state') == 'failed':
                module.fail_json(msg='%s of NIC %s of node %s %s network %s failed: %s' % (
                    'detach' if p['state'] == 'absent' else 'attach', p['nic'], p['node'],
                    'from' if p['state'] == 'absent' else 'to', p['network'], job.get('error')),
                    error=job_failure(job), job=job, changed=True)
            if job.get('state') != 'done':
                module.fail_json(msg='job %s of node %s still %s after %ds; follow it with GET /v1/jobs/%s' % (
                    job['id'], p['node'], job.get('state'), p['wait_timeout'], job['id']), job=job, changed=True)
            port = nic_port(client.get(ports_path), p['nic'])
            after = dict((port or {}).get('attachments') or {})
    except MetalfleetError as e:
        module.fail_json(msg=e.message, error=e.as_dict(), changed=changed)
    module.exit_json(changed=changed, attachments=after, port=port, job=job,
                     diff=dict(before=dict(attachments=before), after=dict(attachments=after)))


if __name__ == '__main__':
    main()
