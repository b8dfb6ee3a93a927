//! Network plumbing: typed addresses and the per-sandbox listener.

pub mod addr;
pub mod listener;

pub use addr::{ClientAddr, OrigDst};
