//! Boot service: http (being built).
