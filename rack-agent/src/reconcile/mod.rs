//! Reconcilers that make the rack match its desired state: node power through the BMCs and
//! switch ports through the switch drivers (issue 7). Filled in by the tenancy work.
