//! Policy: what a sandbox connection may do, decided from what is known about it.

pub mod route;

pub use route::{Refusal, Route, RoutePolicy};
