# -*- coding: utf-8 -*-
"""Test-harness callback: prints the slowest tasks of a playbook run (time per task, all
hosts together) after the recap, so a slow role shows up in the test output."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = '''
name: task_timing
type: aggregate
short_description: slowest tasks of a run
description: Prints the 12 slowest tasks after the play recap.
requirements: [enable in callbacks_enabled]
'''


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'task_timing'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super(CallbackModule, self).__init__()
        self.current = None
        self.times = {}
        self.started = time.time()

    def _close(self):
        if self.current is not None:
            name, t0 = self.current
            self.times[name] = self.times.get(name, 0.0) + time.time() - t0
            self.current = None

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._close()
        self.current = (task.get_name(), time.time())

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def v2_playbook_on_stats(self, stats):
        self._close()
        total = time.time() - self.started
        self._display.display('slowest tasks (run took %.1fs):' % total)
        for name, secs in sorted(self.times.items(), key=lambda kv: -kv[1])[:12]:
            self._display.display('  %6.1fs  %s' % (secs, name))
