//! Procedural macros for hsipc.
//!
//! **Not implemented yet.** This crate will provide `#[service]` (a trait turned into a typed
//! client and server dispatch for every adapter). Until it lands, call methods by name with
//! `ProcessHub::call` and register handlers with `ProcessHub::serve`.
