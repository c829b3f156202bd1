//! The iptables backend: model -> iptables-restore payloads -> kernel.

pub mod backend;
pub mod fixed;
pub mod large;
pub mod names;
pub mod payload;
pub mod render;
mod restore_stream;
pub mod rule_counts;
pub mod state;

pub use backend::IptablesBackend;
pub use render::RenderConfig;

#[cfg(test)]
mod tests;
