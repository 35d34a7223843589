#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Metalfleet developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: a Metalfleet rollout (create, pause, resume, abort, wait with progress)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: rollout
short_description: Create, pause, resume or abort a Metalfleet rollout and wait for it
description:
  - Without O(id), creates a rollout (C(POST /v1/rollouts)) - a workflow applied to the nodes
    a selector picks, at most O(max_in_flight) runs at once (O(max_per_rack) per rack), with a
    failure budget past which the rollout pauses. Creating always changes something.
  - With O(id), converges an existing rollout (C(GET /v1/rollouts/{id})) to O(state) -
    C(paused) (C(POST .../pause)), C(running) (C(POST .../resume), optionally with a new
    failure budget), C(aborted) (C(POST .../abort)). A rollout already there, or already
    over, is left alone (changed=false).
  - With O(wait=true) the rollout is polled until it is over or paused (by the failure budget
    or an operator); the task fails unless it succeeded, naming the state, the reason and the
    failed nodes. RV(progress) carries the per-state counts, per rack and per node.
version_added: 0.2.0
author: Metalfleet developers
options:
  id:
    description: An existing rollout's id (a number, as returned in RV(rollout.id)).
    type: int
  state:
    description:
      - C(present) creates a rollout (without O(id)); C(running), C(paused) and C(aborted)
        need O(id).
    type: str
    choices: [present, running, paused, aborted]
    default: present
  workflow:
    description: Template name (to create).
    type: str
  version:
    description: Template version (default the newest).
    type: int
  params:
    description: Parameter values of the template.
    type: dict
    default: {}
  selector:
    description: Which nodes (every given criterion must hold).
    type: dict
    default: {}
    suboptions:
      site:
        description: Nodes in racks of this site.
        type: str
      rack:
        description: Nodes in this rack.
        type: str
      tags:
        description: Nodes carrying every one of these tags.
        type: list
        elements: str
        default: []
      state:
        description: Nodes in this lifecycle state.
        type: str
        choices: [discovered, commissioning, ready, deploying, deployed, failed, retired]
      nodes:
        description: Only these nodes (ids or serials).
        type: list
        elements: str
        default: []
  max_in_flight:
    description: Runs in flight at most, overall (to create).
    type: int
    default: 1
  max_per_rack:
    description: Runs in flight at most per rack (default O(max_in_flight)).
    type: int
  failure_budget:
    description:
      - Failed runs tolerated; one more pauses the rollout. When resuming (O(state=running)),
        a new budget.
    type: int
  wait:
    description: Wait until the rollout is over or paused.
    type: bool
    default: false
  wait_timeout:
    description: Seconds to wait with O(wait=true) before failing (the rollout goes on).
    type: int
    default: 1800
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
    support: full
'''

EXAMPLES = r'''
- name: Build out rack ams1-r12, four nodes at a time, tolerating two failures
  metalfleet.metalfleet.rollout:
    workflow: buildout
    selector: {rack: ams1-r12, state: discovered}
    max_in_flight: 4
    failure_budget: 2
    wait: true
    wait_timeout: 86400
    api_url: https://10.0.0.1:7443
    api_token: "{{ metalfleet_token }}"
    ca_cert: /etc/metalfleet/ca.crt
  register: buildout

- name: Resume it with a larger budget
  metalfleet.metalfleet.rollout:
    id: "{{ buildout.rollout.id }}"
    state: running
    failure_budget: 5
    api_url: https://10.0.0.1:7443
    api_token: "{{ metalfleet_token }}"
    ca_cert: /etc/metalfleet/ca.crt
'''

RETURN = r'''
rollout:
  description:
    - The rollout afterwards (C(id), C(workflow), C(version), C(selector), C(max_in_flight),
      C(max_per_rack), C(failure_budget), C(state), C(reason), C(failed), C(nodes)); null
      when a check-mode run would create one.
  returned: success
  type: dict
progress:
  description:
    - C(total) nodes, C(counts) per state (C(waiting), C(pending), C(running), C(paused),
      C(succeeded), C(failed), C(cancelled), C(skipped)), the same per rack in C(racks),
      and every node in C(nodes) (C(node), C(rack), C(run), C(state), C(step), C(message)).
  returned: success
  type: dict
  sample: {"total": 2, "counts": {"succeeded": 2}, "racks": {"ams1-r12": {"succeeded": 2}}, "nodes": []}
'''

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.metalfleet.metalfleet.plugins.module_utils.api import (
    API_ARGUMENT_SPEC, Client, MetalfleetError)

FINAL = ('succeeded', 'failed', 'aborted')
# state asked -> (API action, rollout states in which it is needed)
ACTIONS = {
    'paused': ('pause', ('running',)),
    'running': ('resume', ('paused',)),
    'aborted': ('abort', ('running', 'paused')),
}


def selector_body(sel):
    body = {}
    for k in ('site', 'rack', 'state'):
        if sel.get(k) is not None:
            body[k] = sel[k]
    for k in ('tags', 'nodes'):
        if sel.get(k):
            body[k] = sel[k]
    return body


def split(view):
    """(rollout, progress) of a RolloutView."""
    view = dict(view or {})
    progress = view.pop('progress', None)
    return view, progress


def failed_nodes(progress):
    return ['%s: %s%s' % (n.get('node'), n.get('state'),
                          ' (%s)' % n['message'] if n.get('message') else '')
            for n in (progress or {}).get('nodes') or [] if n.get('state') in ('failed', 'cancelled')]


def main():
    spec = dict(
        id=dict(type='int'),
        state=dict(type='str', choices=['present', 'running', 'paused', 'aborted'], default='present'),
        workflow=dict(type='str'),
        version=dict(type='int'),
        params=dict(type='dict', default={}),
        selector=dict(type='dict', default={}, options=dict(
            site=dict(type='str'),
            rack=dict(type='str'),
            tags=dict(type='list', elements='str', default=[]),
            state=dict(type='str', choices=['discovered', 'commissioning', 'ready', 'deploying',
                                            'deployed', 'failed', 'retired']),
            nodes=dict(type='list', elements='str', default=[]),
        )),
        max_in_flight=dict(type='int', default=1),
        max_per_rack=dict(type='int'),
        failure_budget=dict(type='int'),
        wait=dict(type='bool', default=False),
        wait_timeout=dict(type='int', default=1800),
        poll_interval=dict(type='float', default=1.0),
    )
    spec.update(API_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True,
                           required_if=[('state', 'running', ('id',)), ('state', 'paused', ('id',)),
                                        ('state', 'aborted', ('id',))])
    p = module.params
    if p['id'] is None and not p['workflow']:
        module.fail_json(msg='workflow: required to create a rollout (or give id)')
    client = Client.from_module(module)
    changed = False
    try:
        if p['id'] is None:
            body = dict(workflow=p['workflow'], params=p['params'], selector=selector_body(p['selector'] or {}),
                        max_in_flight=p['max_in_flight'], failure_budget=p['failure_budget'] or 0)
            if p['version'] is not None:
                body['version'] = p['version']
            if p['max_per_rack'] is not None:
                body['max_per_rack'] = p['max_per_rack']
            if module.check_mode:
                module.exit_json(changed=True, rollout=None, progress=None, request=body,
                                 diff=dict(before={}, after=body))
            view = client.request('POST', '/v1/rollouts', body=body)
            before = {}
            changed = True
        else:
            path = '/v1/rollouts/%d' % p['id']
            view = client.get(path)
            before = dict(state=view.get('state'), failure_budget=view.get('failure_budget'))
            if p['state'] != 'present':
                action, needed_in = ACTIONS[p['state']]
                need = view.get('state') in needed_in
                if p['state'] == 'running' and p['failure_budget'] is not None \
                        and view.get('state') == 'paused':
                    need = True
                if need:
                    changed = True
                    if module.check_mode:
                        view = dict(view, state=p['state'])
                    else:
                        body = None
                        if action == 'resume' and p['failure_budget'] is not None:
                            body = dict(failure_budget=p['failure_budget'])
                        view = client.request('POST', '%s/%s' % (path, action), body=body)
        if p['wait'] and not module.check_mode and p['state'] in ('present', 'running'):
            deadline = time.time() + p['wait_timeout']
            path = '/v1/rollouts/%d' % view['id']
            while view.get('state') not in FINAL + ('paused',):
                if time.time() >= deadline:
                    rollout, progress = split(view)
                    module.fail_json(msg='rollout %s still %s after %ds: %s' % (
                        view['id'], view.get('state'), p['wait_timeout'], (progress or {}).get('counts')),
                        changed=changed, rollout=rollout, progress=progress)
                time.sleep(p['poll_interval'])
                view = client.get(path)
    except MetalfleetError as e:
        module.fail_json(msg=e.message, error=e.as_dict())
    rollout, progress = split(view)
    after = dict(state=rollout.get('state'), failure_budget=rollout.get('failure_budget'))
    if p['wait'] and p['state'] in ('present', 'running') and not module.check_mode \
            and rollout.get('state') != 'succeeded':
        module.fail_json(msg='rollout %s %s%s; failed nodes: %s' % (
            rollout.get('id'), rollout.get('state'),
            ' (%s)' % rollout['reason'] if rollout.get('reason') else '',
            ', '.join(failed_nodes(progress)) or 'none'),
            changed=changed, rollout=rollout, progress=progress)
    module.exit_json(changed=changed, rollout=rollout, progress=progress, diff=dict(before=before, after=after))


if __name__ == '__main__':
    main()
