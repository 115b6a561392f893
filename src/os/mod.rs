//! Facts the operating system keeps about processes: when one started, how much CPU
//! time and memory it has used (from /proc), when the host booted, and how an exit is
//! described to people.
//!
//! Observation (`signals/`), storage (`ledger/`) and action (`execute/`) all read these
//! facts, so they live below all three. This module only reads: it never starts,
//! signals or stops a process.

pub mod cgroup;
pub mod process;

pub use process::{
    boot_time_ms, cpu_ticks, describe_exit, environ_var, rss_mb, start_ticks, ticks_per_sec,
};
