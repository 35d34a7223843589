#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Metalfleet developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: start a Metalfleet workflow on nodes and optionally wait for the runs;
pause, resume or cancel an existing run."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: workflow_run
short_description: Start a Metalfleet workflow on nodes and wait for the runs, or pause, resume or cancel a run
description:
  - With O(state=started) (the default), starts one run of a stored workflow template per
    node (C(POST /v1/runs)); the rack agent of each node's rack executes it.
  - Starting runs always changes something. In check mode the nodes and the template are
    looked up (C(GET /v1/nodes/{id}), C(GET /v1/workflows/{name})) and what would start is
    returned in RV(would_start); nothing starts.
  - With O(id) and O(state=paused), O(state=running) or O(state=cancelled), converges an
    existing run (C(GET /v1/runs/{id})) by its C(control) - C(POST /v1/runs/{id}/pause),
    C(.../resume), C(.../cancel) only when the run is not already asked to be so. A run that
    has ended is left alone (changed=false); a run being cancelled cannot be paused or resumed
    (the task fails, as the API does). Pausing takes effect before the run's next step.
  - With O(wait=true) the runs are polled (C(GET /v1/runs/{id})) until every one has ended
    (for O(state=paused), until the run has stopped - paused or ended); a run that failed or
    was cancelled fails the task with its node, the failed step's name and its message
    (except with O(state=cancelled), where cancelled is the aim).
version_added: 0.2.0
author: Metalfleet developers
options:
  state:
    description:
      - C(started) starts runs of O(workflow) on O(nodes); C(paused), C(running) and
        C(cancelled) need O(id).
    type: str
    choices: [started, running, paused, cancelled]
    default: started
    version_added: 0.3.0
  id:
    description: An existing run's id (as returned in RV(runs), e.g. C(812-0)).
    type: str
    version_added: 0.3.0
  workflow:
    description: Template name (to start runs).
    type: str
  version:
    description: Template version (default the newest).
    type: int
  params:
    description: Parameter values of the template.
    type: dict
    default: {}
  nodes:
    description: Node ids (UUIDs) or chassis serials; one run each (to start runs).
    type: list
    elements: str
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
    support: partial
    details: With O(id), the run's C(control) and C(state) before and after; none when starting runs.
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
  register: discovery

- name: Hold the first run before its next step
  metalfleet.metalfleet.workflow_run:
    id: "{{ discovery.runs[0].id }}"
    state: paused
    api_url: https://10.0.0.1:7443
    api_token: "{{ metalfleet_token }}"
    ca_cert: /etc/metalfleet/ca.crt
'''

RETURN = r'''
runs:
  description:
    - The runs started, or the run O(id) (as C(GET /v1/runs/{id}) returns them; after
      O(wait=true), their final state). Each has C(id), C(node), C(rack), C(workflow),
      C(version), C(control) (C(run), C(pause), C(cancel)) and C(status) (C(state),
      C(current), C(steps), C(message)).
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


# state asked -> (API action, the run's control it is asked in)
ACTIONS = {
    'paused': ('pause', 'pause'),
    'running': ('resume', 'run'),
    'cancelled': ('cancel', 'cancel'),
}


def run_state(run):
    return (run.get('status') or {}).get('state')


def control_run(module, client):
    """Converges run O(id) to O(state); exits."""
    p = module.params
    path = '/v1/runs/%s' % seg(p['id'])
    run = client.get(path)
    before = dict(control=run.get('control'), state=run_state(run))
    action, control = ACTIONS[p['state']]
    changed = run_state(run) not in FINAL and run.get('control') != control
    if changed:
        if run.get('control') == 'cancel':
            module.fail_json(msg='run %s is being cancelled: it cannot be %s' % (p['id'], p['state']),
                             error=dict(status=409, code='invalid_transition', field=None,
                                        message='run %s is being cancelled' % p['id']), run=run)
        if module.check_mode:
            run = dict(run, control=control)
        else:
            run = client.request('POST', '%s/%s' % (path, action))
    if p['wait'] and not module.check_mode:
        stopped = FINAL + (('paused',) if p['state'] == 'paused' else ())
        deadline = time.time() + p['wait_timeout']
        while run_state(run) not in stopped:
            if time.time() >= deadline:
                module.fail_json(msg='run %s still %s after %ds' % (p['id'], run_state(run), p['wait_timeout']),
                                 changed=changed, runs=[run], states={run['id']: run_state(run)})
            time.sleep(p['poll_interval'])
            run = client.get(path)
    after = dict(control=run.get('control'), state=run_state(run))
    states = {run['id']: run_state(run)}
    bad = ('failed',) if p['state'] == 'cancelled' else ('failed', 'cancelled')
    if p['wait'] and not module.check_mode and run_state(run) in bad:
        module.fail_json(msg=run_failure(run), changed=changed, runs=[run], states=states)
    module.exit_json(changed=changed, runs=[run], states=states, diff=dict(before=before, after=after))


def main():
    spec = dict(
        state=dict(type='str', choices=['started', 'running', 'paused', 'cancelled'], default='started'),
        id=dict(type='str'),
        workflow=dict(type='str'),
        version=dict(type='int'),
        params=dict(type='dict', default={}),
        nodes=dict(type='list', elements='str'),
        wait=dict(type='bool', default=False),
        wait_timeout=dict(type='int', default=600),
        poll_interval=dict(type='float', default=1.0),
    )
    spec.update(API_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True,
                           required_if=[('state', 'started', ('workflow', 'nodes')),
                                        ('state', 'running', ('id',)), ('state', 'paused', ('id',)),
                                        ('state', 'cancelled', ('id',))])
    p = module.params
    if p['state'] == 'started':
        if p['id'] is not None:
            module.fail_json(msg='id: only with state running, paused or cancelled (state started starts new runs)')
        if not p['nodes']:
            module.fail_json(msg='nodes: at least one node is required')
    client = Client.from_module(module)
    try:
        if p['state'] != 'started':
            control_run(module, client)
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
