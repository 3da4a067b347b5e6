//! The hypervisor guard: per-instance IPv6 security groups in nftables.

pub mod apply;
pub mod daemon;
pub mod document;
pub mod libnft;
pub mod render;
