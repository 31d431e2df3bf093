//! lanparty-lite: a headless mesh VPN that makes friends across the internet one LAN.
//!
//! Layout: `wire` (codecs), `control` (control plane: registry, IPAM, backends),
//! `dataplane` (tun + UDP + WireGuard loop), `daemon` (threads of a running member),
//! `server` (control server), `relay` (relay server, tickets, a member's relay client),
//! `cli` (commands).

pub mod atomic_file;
pub mod cli;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod failure;
#[doc(hidden)]
pub mod fuzz_entry;
pub mod identity;
pub mod logging;
pub mod random;
pub mod relay;
pub mod server;
pub mod state_dir;
pub mod status;
pub mod wire;
