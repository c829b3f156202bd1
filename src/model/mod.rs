//! The pure node-local model: Services and EndpointSlices in, service ports out.

pub mod build;
pub mod categorize;
pub mod ownership;
pub mod types;
pub mod validate;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;

pub use build::{build_service, BuildOutput, Built};
pub use categorize::{categorize, Categorized};
pub use types::*;
