# -*- coding: utf-8 -*-
# Copyright: Metalfleet developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The Metalfleet REST API client shared by the collection's modules and inventory plugin.

HTTPS with the cluster CA as the only trust root, a bearer token, JSON bodies, and failover
across the coordinators in the given order (like metalctl): a coordinator that cannot be
reached is skipped; an HTTP answer, even an error, ends the attempt. Errors from the API are
``{code, message, field?}`` and are raised as MetalfleetError carrying all three.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import time
import uuid

from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError
from ansible.module_utils.six.moves.urllib.parse import quote, urlencode
from ansible.module_utils.urls import open_url

# Options every module takes (merged into its argument_spec).
API_ARGUMENT_SPEC = dict(
    api_url=dict(type='list', elements='str', required=True),
    api_token=dict(type='str', no_log=True),
    api_token_file=dict(type='path'),
    ca_cert=dict(type='path', required=True),
    timeout=dict(type='int', default=30),
)


class MetalfleetError(Exception):
    """An API error (status, code, message, field) or a transport failure (status None)."""

    def __init__(self, message, status=None, code=None, field=None):
        super(MetalfleetError, self).__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field

    def as_dict(self):
        return dict(status=self.status, code=self.code, field=self.field, message=self.message)


def read_token(token=None, token_file=None):
    """The bearer token: given directly, or the first line of token_file."""
    if token:
        return token.strip()
    if token_file:
        try:
            with open(token_file) as f:
                return f.readline().strip()
        except (IOError, OSError) as e:
            raise MetalfleetError('cannot read api_token_file %s: %s' % (token_file, e))
    env = os.environ.get('METALFLEET_TOKEN')
    if env:
        return env.strip()
    raise MetalfleetError('no API token: set api_token, api_token_file or METALFLEET_TOKEN')


class Client(object):
    """A client for the coordinators at urls (tried in order)."""

    def __init__(self, urls, token, ca_cert, timeout=30):
        if isinstance(urls, str):
            urls = [urls]
        self.urls = [u.rstrip('/') for u in urls if u]
        if not self.urls:
            raise MetalfleetError('api_url: at least one coordinator URL is required')
        for u in self.urls:
            if not u.startswith('https://'):
                raise MetalfleetError('api_url: %r must start with https://' % u)
        self.token = token
        self.ca_cert = ca_cert
        self.timeout = timeout

    @classmethod
    def from_module(cls, module):
        p = module.params
        try:
            token = read_token(p.get('api_token'), p.get('api_token_file'))
            return cls(p['api_url'], token, p['ca_cert'], p.get('timeout') or 30)
        except MetalfleetError as e:
            module.fail_json(msg=e.message, error=e.as_dict())

    def request(self, method, path, body=None, query=None, content_type='application/json'):
        """One request; returns the decoded JSON answer (None for an empty body)."""
        if query:
            path = '%s?%s' % (path, urlencode(query))
        headers = {
            'Authorization': 'Bearer %s' % self.token,
            'Accept': 'application/json',
        }
        data = None
        if body is not None:
            headers['Content-Type'] = content_type
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        if method in ('POST', 'PUT', 'PATCH', 'DELETE'):
            # One key per logical request: a retry on the next coordinator is deduplicated.
            headers['Idempotency-Key'] = str(uuid.uuid4())
        errors = []
        for base in self.urls:
            try:
                resp = open_url(base + path, method=method, data=data, headers=headers,
                                ca_path=self.ca_cert, timeout=self.timeout, validate_certs=True,
                                follow_redirects='none')
                text = resp.read()
                return json.loads(text) if text else None
            except HTTPError as e:
                raise self._api_error(method, path, e)
            except (URLError, IOError, OSError) as e:
                errors.append('%s: %s' % (base, getattr(e, 'reason', e)))
        raise MetalfleetError('%s %s: no coordinator answered (%s)' % (method, path, '; '.join(errors)))

    @staticmethod
    def _api_error(method, path, e):
        status = e.code
        try:
            body = json.loads(e.read())
        except Exception:
            body = {}
        if not isinstance(body, dict):
            body = {}
        message = body.get('message') or str(e.reason)
        return MetalfleetError('%s %s: HTTP %s %s: %s' % (method, path, status, body.get('code', ''), message),
                               status=status, code=body.get('code'), field=body.get('field'))

    def get(self, path, query=None):
        return self.request('GET', path, query=query)

    def get_or_none(self, path, query=None):
        """GET, mapping 404 to None."""
        try:
            return self.get(path, query=query)
        except MetalfleetError as e:
            if e.status == 404:
                return None
            raise


JOB_FINAL = ('done', 'failed')


def wait_job(client, job, timeout, poll_interval=1.0):
    """Polls ``GET /v1/jobs/{id}`` until the tenancy job (a port or power change, answered
    ``202`` with the job) is done or failed; returns its last view, which is still open when
    ``timeout`` seconds passed first (the job goes on: the caller says so)."""
    deadline = time.time() + timeout
    while job.get('state') not in JOB_FINAL and time.time() < deadline:
        time.sleep(poll_interval)
        job = client.get('/v1/jobs/%s' % seg(job['id']))
    return job


def job_failure(job):
    """A job's error as the API error shape (``code`` ``job_failed``): the agent's words."""
    return dict(status=None, code='job_failed', field=None,
                message=job.get('error') or 'job %s failed' % job.get('id'))


def seg(value):
    """A path segment, percent-encoded."""
    return quote(str(value), safe='')


def ensure_named(module, client, collection, desired, state):
    """present/absent for objects stored whole under /v1/<collection>/<name> (sites, racks,
    projects): compares the listed object with desired, PUTs or DELETEs only on a
    difference, honours check mode, and exits with changed, diff and the object."""
    name = desired['name']
    try:
        current = None
        for obj in client.get('/v1/%s' % collection) or []:
            if obj.get('name') == name:
                current = obj
                break
        before = current or {}
        if state == 'absent':
            after = {}
            changed = current is not None
            if changed and not module.check_mode:
                client.request('DELETE', '/v1/%s/%s' % (collection, seg(name)))
            result = None
        else:
            merged = dict(current or {})
            merged.update(desired)
            after = merged
            changed = current != merged
            result = merged
            if changed and not module.check_mode:
                result = client.request('PUT', '/v1/%s/%s' % (collection, seg(name)), body=merged)
    except MetalfleetError as e:
        module.fail_json(msg=e.message, error=e.as_dict())
    module.exit_json(changed=changed, diff=dict(before=before, after=after), **{collection[:-1]: result})
