//! The DHCPv6 server (RFC 8415): answers only from reservations, keyed by the client's MAC.

pub mod reply;
pub mod reservations;
pub mod server;
pub mod socket;
pub mod state;
