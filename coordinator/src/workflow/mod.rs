//! Workflow templates (YAML, versioned, validated), their expansion into runs, and rollouts
//! (issue 6). Filled in by the workflow work.
