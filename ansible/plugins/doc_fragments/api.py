# -*- coding: utf-8 -*-
# Copyright: Metalfleet developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Options shared by the modules that talk to the Metalfleet REST API."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r'''
options:
  api_url:
    description:
      - Base URLs of the coordinators' REST APIs (C(https://host:port)), tried in order until one answers.
    type: list
    elements: str
    required: true
  api_token:
    description:
      - Bearer token. Takes precedence over O(api_token_file) and the E(METALFLEET_TOKEN) environment variable.
    type: str
  api_token_file:
    description:
      - File on the host the module runs on whose first line is the bearer token (a coordinator's C(admin.token)).
    type: path
  ca_cert:
    description:
      - The cluster CA certificate (PEM), the only trust root for the coordinators' certificates.
    type: path
    required: true
  timeout:
    description:
      - Seconds per request.
    type: int
    default: 30
'''
