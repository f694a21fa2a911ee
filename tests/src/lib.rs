//! Shared helpers for the cluster integration tests.
