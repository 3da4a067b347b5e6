//! Router Advertisements: wire format, timing and the socket shell.

pub mod advert;
pub mod packet;
pub mod schedule;
pub mod socket;
