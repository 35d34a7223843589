#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Metalfleet developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: start a Metalfleet workflow on nodes and optionally wait for the runs."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: workflow_run
short_description: Start a Metalfleet workflow on nodes and wait for the runs to end
description:
  - Starts one run of a stored workflow template per node (C(POST /v1/runs)); the rack agent
    of each node's rack executes it.
  - Starting runs always changes something. In check mode the nodes and the template are
    looked up (C(GET /v1/nodes/{id}), C(GET /v1/workflows/{name})) and what would start is
    returned in RV(would_start); nothing starts.
  - With O(wait=true) the runs are polled (C(GET /v1/runs/{id})) until every one has ended;
    a run that failed or was cancelled fails the task with its node, the failed step's name
    and its message.
version_added: 0.2.0
author: Metalfleet developers
options:
  workflow:
    description: Template name.
    type: str
    required: true
  version:
    description: Template version (default the newest).
    type: int
  params:
    description: Parameter values of the template.
    type: dict
    default: {}
  nodes:
    description: Node ids (UUIDs) or chassis serials; one run each.
    type: list
    elements: str
    required: true
  wait:
    description: Wait until every run has ended.
    type: bool
    default: false
  wait_timeout:
    description: Seconds to wait with O(wait=true) before failing (the runs go on).
    type: int
    default: 600
  poll_interval:
    description: Seconds between polls with O(wait=true).
    type: float
    default: 1.0
extends_documentation_fragment:
  - metalfleet.metalfleet.api
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
'''

EXAMPLES = r'''
- name: Discover two nodes and wait for it
  metalfleet.metalfleet.workflow_run:
    workflow: discovery
    nodes: [SN-0001, SN-0002]
    params: {checkin_timeout: 5m}
    wait: true
    wait_timeout: 1800
    api_url: https://10.0.0.1:7443
    api_token: "{{ metalfleet_token }}"
    ca_cert: /etc/metalfleet/ca.crt
'''

RETURN = r'''
runs:
  description:
    - The runs started (as C(GET /v1/runs/{id}) returns them; after O(wait=true), their final
      state). Each has C(id), C(node), C(rack), C(workflow), C(version), C(control) and
      C(status) (C(state), C(current), C(steps), C(message)).
  returned: success
  type: list
  elements: dict
states:
  description: Run id to its state (C(pending), C(running), C(paused), C(succeeded), C(failed), C(cancelled)).
  returned: success
  type: dict
  sample: {"812-0": "succeeded"}
would_start:
  description: In check mode, the runs that would start (C(node), C(serial), C(workflow), C(version)).
  returned: check mode
  type: list
  elements: dict
'''

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.metalfleet.metalfleet.plugins.module_utils.api import (
    API_ARGUMENT_SPEC, Client, MetalfleetError, seg)

FINAL = ('succeeded', 'failed', 'cancelled')


def run_failure(run):
    """A line naming a failed or cancelled run's node, step and message."""
    status = run.get('status') or {}
    steps = status.get('steps') or []
    failed = [s for s in steps if s.get('state') in ('failed', 'cancelled')]
    step = failed[-1] if failed else None
    if step is None and status.get('current') is not None and status['current'] < len(steps):
        step = steps[status['current']]
    where = ''
    if step is not None:
        where = ' at step %s' % step.get('name')
        if step.get('message'):
            where += ' (%s)' % step['message']
    return 'run %s on node %s %s%s: %s' % (run.get('id'), run.get('node'), status.get('state'), where,
                                           status.get('message') or (step or {}).get('message') or 'no message')


def main():
    spec = dict(
        workflow=dict(type='str', required=True),
        version=dict(type='int'),
        params=dict(type='dict', default={}),
        nodes=dict(type='list', elements='str', required=True),
        wait=dict(type='bool', default=False),
        wait_timeout=dict(type='int', default=600),
        poll_interval=dict(type='float', default=1.0),
    )
    spec.update(API_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    if not p['nodes']:
        module.fail_json(msg='nodes: at least one node is required')
    client = Client.from_module(module)
    try:
        if module.check_mode:
            query = {'version': p['version']} if p['version'] is not None else None
            wf = client.get_or_none('/v1/workflows/%s' % seg(p['workflow']), query=query)
            if wf is None:
                module.fail_json(msg='workflow %s%s is not stored' % (
                    p['workflow'], '' if query is None else ' version %d' % p['version']),
                    error=dict(status=404, code='not_found', field='workflow', message='not stored'))
            would = []
            for i, ref in enumerate(p['nodes']):
                node = client.get_or_none('/v1/nodes/%s' % seg(ref))
                if node is None:
                    module.fail_json(msg='nodes[%d]: node %s not found' % (i, ref),
                                     error=dict(status=404, code='not_found', field='nodes[%d]' % i,
                                                message='node %s not found' % ref))
                would.append(dict(node=node.get('id'), serial=node.get('serial'),
                                  workflow=wf.get('name'), version=wf.get('version')))
            module.exit_json(changed=True, runs=[], states={}, would_start=would)
        body = dict(workflow=p['workflow'], params=p['params'], nodes=p['nodes'])
        if p['version'] is not None:
            body['version'] = p['version']
        runs = client.request('POST', '/v1/runs', body=body) or []
        if p['wait']:
            deadline = time.time() + p['wait_timeout']
            while True:
                runs = [client.get('/v1/runs/%s' % seg(r['id'])) for r in runs]
                if all((r.get('status') or {}).get('state') in FINAL for r in runs):
                    break
                if time.time() >= deadline:
                    module.fail_json(msg='runs not ended after %ds: %s' % (p['wait_timeout'], ', '.join(
                        '%s %s' % (r['id'], (r.get('status') or {}).get('state')) for r in runs)),
                        runs=runs, states=dict((r['id'], (r.get('status') or {}).get('state')) for r in runs))
                time.sleep(p['poll_interval'])
    except MetalfleetError as e:
        module.fail_json(msg=e.message, error=e.as_dict())
    states = dict((r['id'], (r.get('status') or {}).get('state')) for r in runs)
    bad = [r for r in runs if (r.get('status') or {}).get('state') in ('failed', 'cancelled')]
    if p['wait'] and bad:
        module.fail_json(msg='; '.join(run_failure(r) for r in bad), changed=True, runs=runs, states=states)
    module.exit_json(changed=True, runs=runs, states=states)


if __name__ == '__main__':
    main()
