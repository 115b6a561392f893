//! The demo application that ripcord's demo, tests and benchmarks deploy and roll back.
//!
//! It is a small HTTP/1.1 server that reports its version on `/health` and `/api`, and that
//! can be told to misbehave on purpose (injected 5xx responses, added latency, a memory leak,
//! CPU burn, a failing health check, a crash or a slow start) so that ripcord's health gates
//! have something real to detect.
//!
//! Which requests fail, which are slow and how much jitter each gets is random by default
//! (`--fault-mode random`): every request draws independently, as real failures come, because
//! an even spread hides statistical bugs in the rollback guard (a rule that only works when
//! failures never bunch up). The draws come from a small counter-based generator (splitmix64
//! of the seed and the request's index), so with the same `--seed` the outcome of the request
//! at a given index is the same on every run. `--fault-mode even` spreads the faults
//! deterministically instead; it exists only for tests that must assert exact counts.
//!
//! It is not a production server and must never become one: it has no authentication, no
//! limits worth the name and no hardening. It never talks to anything but its own listener:
//! it opens no outbound connections, reads no files and runs no commands.
//!
//! Endpoints:
//!
//! - `GET /health`: `200 {"status":"ok","version":V}`, or `503 {"status":"failing",...}` when
//!   `--fail-health` is active.
//! - any method on `/api` or `/api/...`: `200 {"version":V,"path":P,"method":M,"request":N}`,
//!   where `N` counts every request this server has answered, starting at 1.
//! - `GET /api/stream?chunks=N&delay_ms=M`: a chunked body of `N` lines `chunk i\n` (`i` from 0),
//!   `M` milliseconds apart (defaults 5 and 10, `N` capped at 10000, `M` at 60000).
//! - `POST /api/echo`: streams the request body back unchanged.
//! - anything else: `404` with a short text body.
//!
//! Every response carries `x-demo-version: V`.
//!
//! `args.rs` is the command line, `server.rs` the process and the listener, `routes.rs`
//! the endpoints, `faults.rs` which requests fail or are slow, `misbehaviour.rs` the leak,
//! the CPU burn and the crash.

mod args;
mod faults;
mod misbehaviour;
mod routes;
mod server;

pub use args::{DemoAppArgs, FaultMode};
pub use server::{run, serve};

/// The name the app uses in its start line and in its messages on stderr.
const APP_NAME: &str = "ripcord-demo-app";

#[cfg(test)]
mod tests;
