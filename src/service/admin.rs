//! The admin service: HTTP/1.1 on its own port, served by the same loop: what the server knows
//! of itself.

pub mod history;
pub mod metrics;
