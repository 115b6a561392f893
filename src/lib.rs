//! ripcord: automatic, fast, verified rollbacks for services on one host.
//!
//! The binary (`src/main.rs`) is a thin shell over [`cli::run`]. See ARCHITECTURE.md
//! for the code map and the invariants each module keeps.
#![forbid(unsafe_code)]

pub mod clock;
pub mod config;
pub mod ledger;
pub mod proxy;
