//! The parts of the `kura` package other crates use: the client side of the wire protocol
//! (`remote`), shared by the `kura` CLI and the netbooted agent (`bootenv`). The engine itself
//! (HTTP API, netboot services) lives in the `kura` binary.

pub mod remote;
