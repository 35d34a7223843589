#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Metalfleet developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: a Metalfleet node's lifecycle state, boot target, project, tags, facts
and power."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: node
short_description: Set a Metalfleet node's state, boot target, project, tags, facts and power
description:
  - Reads the node (C(GET /v1/nodes/{id}), by id or serial), compares it with the requested
    values and sends one C(PATCH /v1/nodes/{id}) with only the fields that differ.
  - With O(create=true) a node that does not exist is registered first (C(POST /v1/nodes));
    normally rack agents register nodes when they first network-boot.
  - With O(power_on), the node's power is compared with what its rack agent last observed
    (RV(node.power_on); V(null) before the first observation counts as different). When it
    differs, C(POST /v1/nodes/{id}/power) starts a power job that the agent carries out
    through the node's BMC, and the job is polled (C(GET /v1/jobs/{id})) until it ends; a
    failed job fails the task with the agent's (the BMC's) message. A power job of this node
    already under way towards the same state is waited for instead of asking again (not a
    change); one towards the other state makes the API refuse the request (C(409)).
version_added: 0.1.0
author: Metalfleet developers
options:
  node:
    description: The node's id (UUID) or chassis serial.
    type: str
    required: true
    aliases: [serial]
  state:
    description:
      - Lifecycle state. The coordinator refuses moves the lifecycle does not allow
        (for example C(retired) to anything).
    type: str
    choices: [discovered, commissioning, ready, deploying, deployed, failed, retired]
  boot_target:
    description: What the node network-boots next.
    type: dict
    suboptions:
      kind:
        description: Boot target kind.
        type: str
        required: true
        choices: [none, discovery, local, install, sanboot]
      kernel:
        description: Installer kernel asset name or URL (O(boot_target.kind=install)).
        type: str
      initrd:
        description: Installer initrd asset name or URL (O(boot_target.kind=install)).
        type: str
      cmdline:
        description: Kernel command line (O(boot_target.kind=install)).
        type: str
      autoinstall:
        description: Autoinstall template name (O(boot_target.kind=install)).
        type: str
      target:
        description: iPXE SAN URI (O(boot_target.kind=sanboot)).
        type: str
  project:
    description: Owning project; an empty string frees the node.
    type: str
  tags:
    description: The complete tag set (replaces the node's tags).
    type: list
    elements: str
  facts:
    description: Facts merged into the node's facts (top-level keys replaced).
    type: dict
  create:
    description: Register the node (by serial) when it does not exist.
    type: bool
    default: false
  rack:
    description: Rack of a node registered with O(create=true).
    type: str
  macs:
    description: MACs of a node registered with O(create=true).
    type: list
    elements: str
  power_on:
    description:
      - V(true) powers the node on, V(false) off, through its BMC (the node needs a rack
        and BMC access in the expected inventory). Unset leaves the power alone.
    type: bool
    version_added: 0.3.0
  wait_timeout:
    description:
      - Seconds to wait for a power job before failing (the job goes on). The agent retries
        an unresponsive BMC a few times before it gives up, so allow for that.
    type: int
    default: 300
    version_added: 0.3.0
  poll_interval:
    description: Seconds between polls of a power job.
    type: float
    default: 1.0
    version_added: 0.3.0
extends_documentation_fragment:
  - metalfleet.metalfleet.api
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
'''

EXAMPLES = r'''
- name: Install Debian on a node and give it to the web project
  metalfleet.metalfleet.node:
    node: SN-0001
    state: deploying
    project: web
    boot_target:
      kind: install
      kernel: debian-12/linux
      initrd: debian-12/initrd.gz
      cmdline: auto=true priority=critical
    api_url: https://10.0.0.1:7443
    api_token: "{{ metalfleet_token }}"
    ca_cert: /etc/metalfleet/ca.crt

- name: Power it on through its BMC and wait until the rack agent reports it on
  metalfleet.metalfleet.node:
    node: SN-0001
    power_on: true
    wait_timeout: 600
    api_url: https://10.0.0.1:7443
    api_token: "{{ metalfleet_token }}"
    ca_cert: /etc/metalfleet/ca.crt
'''

RETURN = r'''
node:
  description: The node afterwards (as the API returns it; in check mode, as it would be).
  returned: success
  type: dict
  sample:
    id: 0f5c5d8e-2b9b-4c3e-9a43-6a2f0c1e9d10
    serial: SN-0001
    rack: ams1-r12
    macs: ["52:54:00:12:34:56"]
    state: deploying
    boot_target: {kind: local}
    project: web
    power_on: null
    tags: [gpu]
    facts: {}
patch:
  description: The fields sent (or that would be sent) in the PATCH.
  returned: success
  type: dict
job:
  description:
    - "The power job as last polled: C(id), C(node), C(kind) (C(power) with C(on)), C(state)
      (C(pending), C(running), C(done) or C(failed)), C(power) (the step's C(state) and the
      agent's C(message)) and C(error); null when the power was left alone or, in check
      mode, would change."
  returned: when O(power_on) is set
  type: dict
  version_added: 0.3.0
  sample:
    id: 412
    kind: {power: {"on": true}}
    state: done
    power: {"on": true, generation: 412, state: done, message: ""}
    error: null
'''

from ansible.module_utils.basic import AnsibleModule
import time

from ansible_collections.metalfleet.metalfleet.plugins.module_utils.api import (
    API_ARGUMENT_SPEC, JOB_FINAL, Client, MetalfleetError, job_failure, seg, wait_job)

BOOT_FIELDS = {
    'none': [],
    'discovery': [],
    'local': [],
    'install': ['kernel', 'initrd', 'cmdline', 'autoinstall'],
    'sanboot': ['target'],
}


def boot_target_body(module, bt):
    """The API's JSON shape of a boot target, refusing fields the kind does not take."""
    kind = bt['kind']
    allowed = BOOT_FIELDS[kind]
    body = {'kind': kind}
    for k in ('kernel', 'initrd', 'cmdline', 'autoinstall', 'target'):
        v = bt.get(k)
        if v is None:
            continue
        if k not in allowed:
            module.fail_json(msg='boot_target.%s does not apply to kind %s' % (k, kind))
        body[k] = v
    if kind == 'install':
        for k in ('kernel', 'initrd'):
            if not body.get(k):
                module.fail_json(msg='boot_target.%s is required for kind install' % k)
        body.setdefault('cmdline', '')
        body.setdefault('autoinstall', None)
    if kind == 'sanboot' and not body.get('target'):
        module.fail_json(msg='boot_target.target is required for kind sanboot')
    return body


def compute_patch(module, node):
    """Fields whose requested value differs from the node's."""
    p = module.params
    patch = {}
    if p['state'] is not None and node.get('state') != p['state']:
        patch['state'] = p['state']
    if p['boot_target'] is not None:
        want = boot_target_body(module, p['boot_target'])
        if node.get('boot_target') != want:
            patch['boot_target'] = want
    if p['project'] is not None:
        want = p['project'] or None
        if node.get('project') != want:
            patch['project'] = want
    if p['tags'] is not None:
        want = sorted(set(p['tags']))
        if sorted(node.get('tags') or []) != want:
            patch['tags'] = want
    if p['facts'] is not None:
        have = node.get('facts') or {}
        diff = dict((k, v) for k, v in p['facts'].items() if have.get(k) != v)
        if diff:
            patch['facts'] = diff
    return patch


def open_power_job(client, node_id):
    """The power job of the node that is still under way, if any (the API allows one)."""
    for job in client.get('/v1/jobs', query={'node': node_id, 'limit': 50}) or []:
        if job.get('state') not in JOB_FINAL and 'power' in (job.get('kind') or {}):
            return job
    return None


def converge_power(module, client, node, patched=False):
    """(changed, job, node afterwards) for O(power_on): a power job only when the observed
    power differs, waited for; fails with the agent's message when the job fails (saying
    changed when the node was O(patched) before)."""
    p = module.params
    want = p['power_on']
    node_id = node.get('id')
    job = None if node_id is None else open_power_job(client, node_id)
    changed = False
    if job is not None and job['kind']['power'].get('on') != want:
        # The API refuses a second power job; say which one is in the way.
        module.fail_json(msg='node %s has power job %s (power %s) in progress' % (
            p['node'], job['id'], 'on' if job['kind']['power'].get('on') else 'off'),
            error=dict(status=409, code='conflict', field='power_on',
                       message='power job %s in progress' % job['id']), job=job, changed=patched)
    if job is None:
        if node.get('power_on') == want:
            return False, None, node
        changed = True
        if module.check_mode:
            return True, None, dict(node, power_on=want)
        job = client.request('POST', '/v1/nodes/%s/power' % seg(node_id), body={'on': want})
    elif module.check_mode:
        return False, job, node
    deadline = time.time() + p['wait_timeout']
    job = wait_job(client, job, p['wait_timeout'], p['poll_interval'])
    if job.get('state') == 'failed':
        module.fail_json(msg='power %s of node %s failed: %s' % (
            'on' if want else 'off', p['node'], job.get('error')),
            error=job_failure(job), job=job, changed=changed or patched)
    if job.get('state') != 'done':
        module.fail_json(msg='power job %s of node %s still %s after %ds; follow it with GET /v1/jobs/%s' % (
            job['id'], p['node'], job.get('state'), p['wait_timeout'], job['id']), job=job, changed=changed or patched)
    # The agent reports the observed power with the job's outcome; the node shows it once
    # that event is applied too.
    node = client.get('/v1/nodes/%s' % seg(node_id))
    while node.get('power_on') != want and time.time() < deadline:
        time.sleep(p['poll_interval'])
        node = client.get('/v1/nodes/%s' % seg(node_id))
    return changed, job, node


def main():
    spec = dict(
        node=dict(type='str', required=True, aliases=['serial']),
        state=dict(type='str', choices=['discovered', 'commissioning', 'ready', 'deploying',
                                        'deployed', 'failed', 'retired']),
        boot_target=dict(type='dict', options=dict(
            kind=dict(type='str', required=True, choices=list(BOOT_FIELDS)),
            kernel=dict(type='str'),
            initrd=dict(type='str'),
            cmdline=dict(type='str'),
            autoinstall=dict(type='str'),
            target=dict(type='str'),
        )),
        project=dict(type='str'),
        tags=dict(type='list', elements='str'),
        facts=dict(type='dict'),
        create=dict(type='bool', default=False),
        rack=dict(type='str'),
        macs=dict(type='list', elements='str'),
        power_on=dict(type='bool'),
        wait_timeout=dict(type='int', default=300),
        poll_interval=dict(type='float', default=1.0),
    )
    spec.update(API_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    client = Client.from_module(module)
    p = module.params
    changed = False
    job = None
    try:
        node = client.get_or_none('/v1/nodes/%s' % seg(p['node']))
        before = node or {}
        if node is None:
            if not p['create']:
                module.fail_json(msg='node %s not found (set create=true to register it)' % p['node'])
            changed = True
            new = dict(serial=p['node'], macs=p['macs'] or [])
            if p['rack']:
                new['rack'] = p['rack']
            if module.check_mode:
                node = dict(new, state='discovered', boot_target={'kind': 'none'}, project=None,
                            tags=[], facts={}, power_on=None)
            else:
                node = client.request('POST', '/v1/nodes', body=new)
        patch = compute_patch(module, node)
        after = dict(node)
        if patch:
            changed = True
            if module.check_mode:
                after.update(patch)
                if 'facts' in patch:
                    after['facts'] = dict(node.get('facts') or {}, **patch['facts'])
            else:
                after = client.request('PATCH', '/v1/nodes/%s' % seg(node.get('id', p['node'])), body=patch)
        if p['power_on'] is not None:
            powered, job, after = converge_power(module, client, after, patched=changed)
            changed = changed or powered
    except MetalfleetError as e:
        module.fail_json(msg=e.message, error=e.as_dict(), changed=changed)
    result = dict(changed=changed, node=after, patch=patch, diff=dict(before=before, after=after))
    if p['power_on'] is not None:
        result['job'] = job
    module.exit_json(**result)


if __name__ == '__main__':
    main()
