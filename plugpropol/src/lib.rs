//! PlugProPol: probes, filters, scheduling policies and the configfs-style
//! tree that wires them at run time (`mkdir`, `echo`, `cat`, `ln -s`).
//!
//! - [`tree`]: the tree as a data model with configfs semantics (no FUSE).
//! - [`engine`]: the tree plus the sampling threads of the loaded probes.
//! - [`fs`]: the FUSE file system (fuser) that serves an [`engine::Engine`].
//! - [`probes`], [`filters`], [`policies`]: the built-in parts;
//!   [`balance`]: what `balance_policy` decides.
//! - [`plugin`]: external probes and policies named in a registry file.

pub mod balance;
pub mod engine;
pub mod error;
pub mod filters;
pub mod fs;
pub mod mount;
pub mod plugin;
pub mod policies;
pub mod probes;
pub mod tree;
pub mod value;

pub use engine::Engine;
pub use error::{Error, Result};
pub use tree::SharedValue;
pub use value::{NodeId, Reading, Unit};
