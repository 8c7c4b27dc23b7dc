//! hsipc: typed inter-process services, streams and publish/subscribe on one machine.
pub use proto;
