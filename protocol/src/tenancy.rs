//! Tenancy: networks, network jobs and elastic leases as the API and the state machine see
//! them (issue 7). Filled in by the tenancy work.
