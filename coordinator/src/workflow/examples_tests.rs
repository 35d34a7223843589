//! Loads the shipped buildout in examples/workflows/ and checks its expansion.
