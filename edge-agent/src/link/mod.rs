//! The connections between sites' edge agents: one HTTP/2-over-mTLS link per peer site and
//! data-plane thread ([`peers`]), its calling side ([`client`]), and raw TCP carried over it
//! as `CONNECT` streams ([`tunnel`]). The serving side of a link is `inbound`.

pub mod client;
pub mod peers;
pub mod tunnel;
