# -*- coding: utf-8 -*-
# Copyright: Metalfleet developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Unit tests of the modules' pure logic: the PATCH the node module computes, boot target
shapes, when the node module asks for power (and how a failed power job fails it), password
masking in the import diff, group names of the inventory plugin, token reading. Plain unittest (tests/ansible/sanity.sh runs them with PYTHONPATH at the
ansible_collections root)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import tempfile
import unittest

from ansible_collections.metalfleet.metalfleet.plugins.module_utils import api
from ansible_collections.metalfleet.metalfleet.plugins.modules import inventory_import, node, node_nic


class Failed(Exception):
    pass


class FakeModule(object):
    """Just enough of AnsibleModule: params and fail_json."""

    def __init__(self, **params):
        base = dict(state=None, boot_target=None, project=None, tags=None, facts=None)
        base.update(params)
        self.params = base

    def fail_json(self, msg, **kwargs):
        raise Failed(msg)


NODE = {
    'id': '0f5c5d8e-2b9b-4c3e-9a43-6a2f0c1e9d10',
    'serial': 'SN-1',
    'state': 'discovered',
    'boot_target': {'kind': 'none'},
    'project': None,
    'tags': ['b', 'a'],
    'facts': {'cpu': 'x', 'ram': 8},
}


class NodePatchTest(unittest.TestCase):
    def test_nothing_requested_is_no_patch(self):
        self.assertEqual(node.compute_patch(FakeModule(), NODE), {})

    def test_only_differing_fields_are_sent(self):
        m = FakeModule(state='discovered', tags=['a', 'b', 'a'], project='web',
                       facts={'cpu': 'x', 'disk': 2}, boot_target={'kind': 'none'})
        self.assertEqual(node.compute_patch(m, NODE), {'project': 'web', 'facts': {'disk': 2}})

    def test_empty_project_frees(self):
        have = dict(NODE, project='web')
        self.assertEqual(node.compute_patch(FakeModule(project=''), have), {'project': None})
        self.assertEqual(node.compute_patch(FakeModule(project=''), NODE), {})

    def test_install_target_gets_defaults_and_compares_whole(self):
        bt = {'kind': 'install', 'kernel': 'k', 'initrd': 'i', 'cmdline': None,
              'autoinstall': None, 'target': None}
        patch = node.compute_patch(FakeModule(boot_target=bt), NODE)
        self.assertEqual(patch['boot_target'],
                         {'kind': 'install', 'kernel': 'k', 'initrd': 'i', 'cmdline': '', 'autoinstall': None})
        have = dict(NODE, boot_target=patch['boot_target'])
        self.assertEqual(node.compute_patch(FakeModule(boot_target=bt), have), {})

    def test_boot_target_fields_must_fit_the_kind(self):
        with self.assertRaises(Failed):
            node.boot_target_body(FakeModule(), {'kind': 'local', 'kernel': 'k'})
        with self.assertRaises(Failed):
            node.boot_target_body(FakeModule(), {'kind': 'install', 'kernel': 'k'})
        with self.assertRaises(Failed):
            node.boot_target_body(FakeModule(), {'kind': 'sanboot'})
        self.assertEqual(node.boot_target_body(FakeModule(), {'kind': 'sanboot', 'target': 'iscsi:x'}),
                         {'kind': 'sanboot', 'target': 'iscsi:x'})


class FakeClient(object):
    """Answers GETs from a dict of path -> list of answers (the last one repeats) and
    records every request."""

    def __init__(self, answers, post=None):
        self.answers = answers
        self.post = post
        self.requests = []

    def get(self, path, query=None):
        self.requests.append(('GET', path, query))
        queue = self.answers[path]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    def request(self, method, path, body=None, query=None):
        self.requests.append((method, path, body))
        return self.post


def power_module(want, check_mode=False):
    m = FakeModule(node='SN-1', power_on=want, wait_timeout=5, poll_interval=0.01)
    m.check_mode = check_mode
    return m


POWERED = dict(NODE, power_on=True)
JOBS = '/v1/jobs'
JOB = {'id': 7, 'node': NODE['id'], 'kind': {'power': {'on': False}}, 'state': 'running',
       'power': {'on': False, 'state': 'pending', 'message': ''}, 'error': None}


class NodePowerTest(unittest.TestCase):
    def test_observed_power_matching_sends_nothing(self):
        c = FakeClient({JOBS: [[]]})
        self.assertEqual(node.converge_power(power_module(True), c, POWERED), (False, None, POWERED))
        self.assertEqual([r[0] for r in c.requests], ['GET'])

    def test_check_mode_reports_the_change_without_a_request(self):
        c = FakeClient({JOBS: [[]]})
        changed, job, after = node.converge_power(power_module(False, check_mode=True), c, POWERED)
        self.assertTrue(changed)
        self.assertIsNone(job)
        self.assertIs(after['power_on'], False)
        self.assertEqual([r[0] for r in c.requests], ['GET'])

    def test_unknown_power_is_a_change_and_the_job_is_waited_for(self):
        done = dict(JOB, state='done', power=dict(JOB['power'], state='done'))
        off = dict(NODE, power_on=False)
        c = FakeClient({JOBS: [[]], '/v1/jobs/7': [done], '/v1/nodes/%s' % NODE['id']: [dict(NODE), off]},
                       post=JOB)
        changed, job, after = node.converge_power(power_module(False), c, dict(NODE, power_on=None))
        self.assertEqual((changed, job['state'], after['power_on']), (True, 'done', False))
        self.assertIn(('POST', '/v1/nodes/%s/power' % NODE['id'], {'on': False}), c.requests)

    def test_a_failed_job_fails_with_the_agents_message(self):
        failed = dict(JOB, state='failed', error='power off: the node has no BMC access')
        c = FakeClient({JOBS: [[]], '/v1/jobs/7': [failed]}, post=JOB)
        with self.assertRaises(Failed) as e:
            node.converge_power(power_module(False), c, POWERED)
        self.assertIn('the node has no BMC access', str(e.exception))

    def test_a_job_under_way_to_the_same_state_is_waited_for_not_repeated(self):
        done = dict(JOB, state='done')
        c = FakeClient({JOBS: [[JOB]], '/v1/jobs/7': [done],
                        '/v1/nodes/%s' % NODE['id']: [dict(NODE, power_on=False)]})
        changed, job, _ = node.converge_power(power_module(False), c, POWERED)
        self.assertEqual((changed, job['state']), (False, 'done'))
        self.assertNotIn('POST', [r[0] for r in c.requests])
        with self.assertRaises(Failed):
            node.converge_power(power_module(True), FakeClient({JOBS: [[JOB]]}), POWERED)


class NodeNicTest(unittest.TestCase):
    PORTS = [{'nic': 'eno2', 'attachments': {}}, {'nic': 'eno1', 'attachments': {'a': 'access'}}]

    def test_the_nics_port_is_found_by_name(self):
        self.assertEqual(node_nic.nic_port(self.PORTS, 'eno1')['attachments'], {'a': 'access'})
        self.assertIsNone(node_nic.nic_port(self.PORTS, 'eno9'))
        self.assertIsNone(node_nic.nic_port(None, 'eno1'))

    def test_wanted_attachments(self):
        have = {'a': 'access'}
        self.assertEqual(node_nic.wanted(have, 'a', 'access', 'present'), have)
        self.assertEqual(node_nic.wanted(have, 'a', 'trunk', 'present'), {'a': 'trunk'})
        self.assertEqual(node_nic.wanted(have, 'b', 'trunk', 'present'), {'a': 'access', 'b': 'trunk'})
        self.assertEqual(node_nic.wanted(have, 'a', 'access', 'absent'), {})
        self.assertEqual(node_nic.wanted(have, 'b', 'access', 'absent'), have)
        self.assertEqual(have, {'a': 'access'})


class ImportDiffTest(unittest.TestCase):
    def test_password_is_masked_and_input_untouched(self):
        r = {'serial': 'S', 'bmc': {'address': 'a', 'credentials': {'username': 'u', 'password': 'p'}}}
        m = inventory_import.masked(r)
        self.assertEqual(m['bmc']['credentials']['password'], '********')
        self.assertEqual(r['bmc']['credentials']['password'], 'p')
        self.assertEqual(inventory_import.masked({'serial': 'S'}), {'serial': 'S'})


class ApiTest(unittest.TestCase):
    def test_token_sources(self):
        self.assertEqual(api.read_token(' t1\n'), 't1')
        with tempfile.NamedTemporaryFile('w', delete=False) as f:
            f.write('mf_secret\nignored\n')
        try:
            self.assertEqual(api.read_token(None, f.name), 'mf_secret')
        finally:
            os.unlink(f.name)
        with self.assertRaises(api.MetalfleetError):
            api.read_token(None, '/nonexistent/token')

    def test_urls_must_be_https(self):
        with self.assertRaises(api.MetalfleetError):
            api.Client(['http://a:1'], 't', '/ca')
        with self.assertRaises(api.MetalfleetError):
            api.Client([], 't', '/ca')
        c = api.Client('https://a:1/', 't', '/ca')
        self.assertEqual(c.urls, ['https://a:1'])

    def test_unreachable_coordinators_fail_over_and_report_each(self):
        # Nothing listens on these ports (port 1 and 2 on loopback refuse at once).
        c = api.Client(['https://127.0.0.1:1', 'https://127.0.0.1:2'], 't', '/nonexistent-ca', timeout=2)
        with self.assertRaises(api.MetalfleetError) as e:
            c.get('/v1/cluster')
        self.assertIn('no coordinator answered', e.exception.message)
        self.assertIn('127.0.0.1:1', e.exception.message)
        self.assertIn('127.0.0.1:2', e.exception.message)
        self.assertIsNone(e.exception.status)

    def test_path_segments_are_encoded(self):
        self.assertEqual(api.seg('a/b c'), 'a%2Fb%20c')


if __name__ == '__main__':
    unittest.main()
