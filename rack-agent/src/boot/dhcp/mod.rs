//! Boot service: dhcp (being built).
