//! Envoy's External Processing (ext_proc) server: one bidirectional gRPC
//! stream per HTTP request, answered by [`StreamState`].

mod error;
mod headers;
mod reply;
mod server;
mod stream;
#[cfg(test)]
mod tests;

pub use error::RequestError;
pub use server::{ExtProcService, Shared};
pub use stream::StreamState;
