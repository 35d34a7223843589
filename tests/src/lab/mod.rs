//! The virtual datacenter lab (issue 5): network namespaces, Open vSwitch top-of-rack
//! switches, coordinators, rack agents, QEMU VMs and their virtual BMCs. Filled in by the lab
//! work.
