//! Checkpoint/restart of real Linux processes.
