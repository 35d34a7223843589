//! Boot service: tftp (being built).
