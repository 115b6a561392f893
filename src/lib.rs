//! ripcord: automatic, fast, verified rollbacks for services on one host.
//!
//! The binary (`src/main.rs`) is a thin shell over [`cli::run`]. See ARCHITECTURE.md
//! for the code map and the invariants each module keeps.
#![forbid(unsafe_code)]

pub mod cli;
pub mod clock;
pub mod config;
pub mod db;
pub mod decide;
pub use ripcord_demo_app as demo_app;
pub mod docker;
pub mod execute;
pub mod failpoint;
pub mod guard;
pub mod http;
pub mod k8s;
pub mod ledger;
pub mod migrate;
pub mod nginx_conf;
pub mod notify;
pub mod os;
pub mod prometheus;
pub mod proxy;
pub mod report;
pub mod signals;
pub mod sockets;
pub mod verify;
pub mod watch;
