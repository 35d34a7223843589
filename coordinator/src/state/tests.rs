//! Unit tests of `State::apply`, one or more per command, without Raft.
