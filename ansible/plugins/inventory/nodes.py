# -*- coding: utf-8 -*-
# Copyright: Metalfleet developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Dynamic inventory: the nodes the Metalfleet coordinators know."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
name: nodes
short_description: The nodes the Metalfleet coordinators know
description:
  - Lists the nodes (C(GET /v1/nodes)) of a Metalfleet cluster as hosts, grouped by site,
    rack, project, lifecycle state and tag, with their addresses, serial, MACs, BMC address and
    facts as host variables - the hand-off from provisioning to post-install playbooks.
  - The site of a node comes from its rack (C(GET /v1/racks)); static addresses, model, rack
    unit and BMC address from its expected-inventory record (C(GET /v1/inventory)) when one
    exists for its serial.
  - The inventory source is a YAML file whose name ends in C(metalfleet.yml) or C(metalfleet.yaml).
version_added: 0.1.0
author: Metalfleet developers
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: Marks the file as this plugin's.
    type: str
    required: true
    choices: [metalfleet.metalfleet.nodes]
  api_url:
    description: Base URLs of the coordinators' REST APIs, tried in order.
    type: list
    elements: str
    required: true
    env:
      - name: METALFLEET_API_URL
  api_token:
    description: Bearer token (a read-only token is enough).
    type: str
    env:
      - name: METALFLEET_TOKEN
  api_token_file:
    description: File on the controller whose first line is the bearer token.
    type: path
  ca_cert:
    description: The cluster CA certificate (PEM).
    type: path
    required: true
    env:
      - name: METALFLEET_CA_CERT
  hostname:
    description: Which node field names the host.
    type: str
    choices: [serial, id]
    default: serial
  timeout:
    description: Seconds per request.
    type: int
    default: 30
'''

EXAMPLES = r'''
# fleet.metalfleet.yml
plugin: metalfleet.metalfleet.nodes
api_url: [https://10.0.0.1:7443, https://10.0.0.2:7443]
api_token_file: ~/.config/metalctl/token
ca_cert: /etc/metalfleet/ca.crt
# Deployed nodes of the web project: groups state_deployed and project_web.
keyed_groups:
  - key: metalfleet_facts.cpu_model | default('unknown')
    prefix: cpu
'''

import re

from ansible.errors import AnsibleError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable
from ansible_collections.metalfleet.metalfleet.plugins.module_utils.api import (
    Client, MetalfleetError, read_token)


def group_name(prefix, value):
    """A valid group name: prefix_value with everything but letters, digits and _ as _."""
    return '%s_%s' % (prefix, re.sub(r'[^A-Za-z0-9_]', '_', str(value)))


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = 'metalfleet.metalfleet.nodes'

    def verify_file(self, path):
        return super(InventoryModule, self).verify_file(path) and path.endswith(
            ('metalfleet.yml', 'metalfleet.yaml'))

    def parse(self, inventory, loader, path, cache=True):
        super(InventoryModule, self).parse(inventory, loader, path, cache)
        self._read_config_data(path)
        try:
            token = read_token(self.get_option('api_token'), self.get_option('api_token_file'))
            client = Client(self.get_option('api_url'), token, self.get_option('ca_cert'),
                            self.get_option('timeout'))
            nodes = client.get('/v1/nodes') or []
            racks = dict((r['name'], r) for r in client.get('/v1/racks') or [])
            try:
                expected = dict((r['serial'], r) for r in client.get('/v1/inventory') or [])
            except MetalfleetError as e:
                # Project members may list their nodes but not the whole expected inventory.
                if e.status != 403:
                    raise
                expected = {}
        except MetalfleetError as e:
            raise AnsibleError('metalfleet inventory %s: %s' % (path, e.message))
        self.inventory.add_group('metalfleet')
        strict = self.get_option('strict')
        for node in nodes:
            self._add_node(node, racks, expected, strict)

    def _add_node(self, node, racks, expected, strict):
        host = str(node[self.get_option('hostname')])
        self.inventory.add_host(host, group='metalfleet')
        record = expected.get(node['serial']) or {}
        rack = node.get('rack') or record.get('rack')
        site = (racks.get(rack) or {}).get('site') or record.get('site')
        addresses = [ip['address'] for ip in record.get('static_ips') or []]
        hostvars = {
            'metalfleet_id': node.get('id'),
            'metalfleet_serial': node.get('serial'),
            'metalfleet_site': site,
            'metalfleet_rack': rack,
            'metalfleet_project': node.get('project'),
            'metalfleet_state': node.get('state'),
            'metalfleet_tags': sorted(node.get('tags') or []),
            'metalfleet_macs': node.get('macs') or [],
            'metalfleet_boot_target': node.get('boot_target'),
            'metalfleet_power_on': node.get('power_on'),
            'metalfleet_facts': node.get('facts') or {},
            'metalfleet_addresses': addresses,
            'metalfleet_static_ips': record.get('static_ips') or [],
            'metalfleet_model': record.get('model'),
            'metalfleet_u_position': record.get('u_position'),
            'metalfleet_bmc_address': (record.get('bmc') or {}).get('address'),
        }
        if addresses:
            hostvars['ansible_host'] = addresses[0]
        for k, v in hostvars.items():
            self.inventory.set_variable(host, k, v)
        groups = []
        if site:
            groups.append(group_name('site', site))
        if rack:
            groups.append(group_name('rack', rack))
        if node.get('project'):
            groups.append(group_name('project', node['project']))
        if node.get('state'):
            groups.append(group_name('state', node['state']))
        for tag in node.get('tags') or []:
            groups.append(group_name('tag', tag))
        for g in groups:
            self.inventory.add_group(g)
            self.inventory.add_child(g, host)
        self._set_composite_vars(self.get_option('compose'), hostvars, host, strict=strict)
        self._add_host_to_composed_groups(self.get_option('groups'), hostvars, host, strict=strict)
        self._add_host_to_keyed_groups(self.get_option('keyed_groups'), hostvars, host, strict=strict)
