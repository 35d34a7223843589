#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Metalfleet developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: a Metalfleet workflow template version (store, compare, delete)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: workflow
short_description: Store or delete a Metalfleet workflow template
description:
  - Stores a workflow template's YAML (C(PUT /v1/workflows/{name})). The template names its
    own C(version); a version is immutable once stored.
  - Idempotent - the text is compared with the stored version it names
    (C(GET /v1/workflows/{name}?version=N)) - the same text changes nothing; different text
    under a stored version fails (publish a new version). The coordinator validates the
    template and its includes; its errors come back with the field they concern.
  - O(state=absent) deletes every version of O(name), or only O(version)
    (C(DELETE /v1/workflows/{name})).
version_added: 0.2.0
author: Metalfleet developers
options:
  name:
    description:
      - Template name. With O(state=present) it defaults to the template's own C(name), and
        must match it when given.
    type: str
  src:
    description: Path of the template's YAML file on the managed host.
    type: path
  content:
    description: The template's YAML text.
    type: str
  version:
    description: With O(state=absent), the one version to delete (default every version).
    type: int
  state:
    description: Whether the template version should be stored.
    type: str
    choices: [present, absent]
    default: present
notes:
  - The managed host needs PyYAML (Ansible's own dependency) to read the template's name
    and version.
extends_documentation_fragment:
  - metalfleet.metalfleet.api
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
'''

EXAMPLES = r'''
- name: Store the discovery template
  metalfleet.metalfleet.workflow:
    src: examples/workflows/discovery.yaml
    api_url: https://10.0.0.1:7443
    api_token: "{{ metalfleet_token }}"
    ca_cert: /etc/metalfleet/ca.crt

- name: Store a small template given inline
  metalfleet.metalfleet.workflow:
    content: |
      apiVersion: metalfleet/v1
      kind: Workflow
      name: boot-local
      version: 1
      steps:
        - name: local
          kind: boot.set
          with: {target: {kind: local}}
    api_url: https://10.0.0.1:7443
    api_token: "{{ metalfleet_token }}"
    ca_cert: /etc/metalfleet/ca.crt
'''

RETURN = r'''
workflow:
  description:
    - The stored version (C(name), C(version), C(description), C(source), C(actor),
      C(created_at), C(revision)) with C(versions), every stored version of the name.
      Null when absent; in check mode, what would be stored.
  returned: success
  type: dict
name:
  description: The template name.
  returned: success
  type: str
  sample: discovery
version:
  description: The template version stored (null for O(state=absent)).
  returned: success
  type: int
  sample: 1
'''

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_text
from ansible_collections.metalfleet.metalfleet.plugins.module_utils.api import (
    API_ARGUMENT_SPEC, Client, MetalfleetError, seg)

try:
    import yaml
    HAS_YAML = True
except ImportError:
    HAS_YAML = False


def read_template(module):
    """The template's text and its (name, version), read from src or content."""
    p = module.params
    if p['src'] is not None:
        try:
            with open(p['src'], 'rb') as f:
                text = to_text(f.read(), errors='surrogate_or_strict')
        except (IOError, OSError) as e:
            module.fail_json(msg='src: cannot read %s: %s' % (p['src'], e))
        where = 'src %s' % p['src']
    else:
        text = p['content']
        where = 'content'
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        module.fail_json(msg='%s: not YAML: %s' % (where, e))
    if not isinstance(doc, dict):
        module.fail_json(msg='%s: a workflow template is a YAML mapping' % where)
    name, version = doc.get('name'), doc.get('version')
    if not isinstance(name, str) or not name:
        module.fail_json(msg='%s: the template has no name' % where)
    if not isinstance(version, int) or isinstance(version, bool):
        module.fail_json(msg='%s: the template has no integer version' % where)
    if p['name'] is not None and p['name'] != name:
        module.fail_json(msg='%s: the template is named %s, name says %s' % (where, name, p['name']))
    return text, name, version


def main():
    spec = dict(
        name=dict(type='str'),
        src=dict(type='path'),
        content=dict(type='str'),
        version=dict(type='int'),
        state=dict(type='str', choices=['present', 'absent'], default='present'),
    )
    spec.update(API_ARGUMENT_SPEC)
    module = AnsibleModule(
        argument_spec=spec, supports_check_mode=True,
        mutually_exclusive=[('src', 'content')],
        required_if=[('state', 'present', ('src', 'content'), True), ('state', 'absent', ('name',))],
    )
    p = module.params
    if p['state'] == 'present' and p['version'] is not None:
        module.fail_json(msg='version: only for state=absent (a template names its own version)')
    if p['state'] == 'present' and not HAS_YAML:
        module.fail_json(msg='PyYAML is required on the managed host to read the template')
    client = Client.from_module(module)
    try:
        if p['state'] == 'absent':
            path = '/v1/workflows/%s' % seg(p['name'])
            query = {'version': p['version']} if p['version'] is not None else None
            current = client.get_or_none(path, query=query)
            changed = current is not None
            if changed and not module.check_mode:
                client.request('DELETE', path + ('?version=%d' % p['version'] if query else ''))
            module.exit_json(changed=changed, workflow=None, name=p['name'], version=None,
                             diff=dict(before=(current or {}).get('source', ''), after=''))
        text, name, version = read_template(module)
        path = '/v1/workflows/%s' % seg(name)
        stored = client.get_or_none(path, query={'version': version})
        if stored is not None and stored.get('source') == text:
            module.exit_json(changed=False, workflow=stored, name=name, version=version,
                             diff=dict(before=text, after=text))
        if stored is not None:
            module.fail_json(msg='workflow %s version %d is stored with other text; versions are '
                                 'immutable: bump version in the template' % (name, version),
                             workflow=stored, error=dict(status=None, code='conflict', field='version',
                                                         message='version %d is stored' % version))
        latest = client.get_or_none(path)
        before = (latest or {}).get('source', '')
        if module.check_mode:
            versions = sorted(set((latest or {}).get('versions') or []) | set([version]))
            result = dict(name=name, version=version, source=text, versions=versions)
        else:
            result = client.request('PUT', path, body=text.encode('utf-8'),
                                    content_type='application/yaml')
    except MetalfleetError as e:
        module.fail_json(msg=e.message, error=e.as_dict())
    module.exit_json(changed=True, workflow=result, name=name, version=version,
                     diff=dict(before=before, after=text))


if __name__ == '__main__':
    main()
