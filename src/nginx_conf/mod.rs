//! nginx's own configuration language, read without IO: `tokens.rs` is the tokenizer every
//! reader of an nginx config in ripcord goes through (the upstream block the nginx router
//! owns, the `log_format` the access-log signal compiles); `log_format/` is what a
//! `log_format` means: its declaration, its compiled format and the access-log lines it
//! reads.
//!
//! A leaf: it imports nothing from the rest of ripcord, so `config`, `signals` and
//! `execute` may all use it.

pub mod log_format;
pub mod tokens;
