//! The rack agent (being built: enrollment, fleet link, local store, outbox).
