//! hsipc for smol applications.
//!
//! **Not implemented yet.** This crate will hold only what is specific to smol: spawning
//! handlers, waiting with `async-io` timers, and the `async` surface of `ProcessHub`,
//! `Subscription` and response streams (as `futures_core::Stream`). All protocol logic lives in
//! `hsipc-proto` and the shared engine in `hsipc-transport`. Until it lands, use
//! `hsipc-blocking`.
