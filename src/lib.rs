//! flat6: IPv6 for flat, security-group isolated cloud networks.
//!
//! One crate, three roles: the controller allocates addresses and security groups, the virtual router
//! (`vr`) advertises Managed + Other RAs and serves DHCPv6 from reservations, and the guard programs
//! per-instance nftables rules on each hypervisor. See `docs/architecture.md`.

pub mod config;
pub mod controller;
pub mod guard;
pub mod memory;
pub mod model;
pub mod source;
pub mod telemetry;
pub mod vr;
