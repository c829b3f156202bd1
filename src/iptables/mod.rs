//! The iptables backend: model -> iptables-restore payloads -> kernel.

pub mod backend;
mod feed;
pub mod fixed;
pub mod large;
pub mod names;
pub mod payload;
pub mod render;
pub mod state;
pub mod written;

pub use backend::IptablesBackend;
pub use render::RenderConfig;

#[cfg(test)]
mod tests;
