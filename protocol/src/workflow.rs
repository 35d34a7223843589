//! Workflow templates, steps and runs: the data both the coordinator (planning, rollouts) and
//! the rack agent (the durable executor) share (issue 6). Filled in by the workflow work.
