//! nginx's own configuration language, read without IO: the tokenizer every reader of an
//! nginx config in ripcord goes through (the upstream block the nginx router owns, the
//! `log_format` the access-log signal compiles).
//!
//! A leaf: it imports nothing from the rest of ripcord, so `config`, `signals` and
//! `execute` may all use it.

pub mod log_format;
pub mod tokens;
