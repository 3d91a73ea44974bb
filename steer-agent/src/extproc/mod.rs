//! Envoy's External Processing (ext_proc) server: one bidirectional gRPC
//! stream per HTTP request, answered by [`StreamState`].

mod budget;
mod error;
mod failures;
mod headers;
mod observe;
mod reply;
mod server;
mod stream;
#[cfg(test)]
mod tests;

pub use budget::BodyBudget;
pub use error::RequestError;
pub use failures::FailureLog;
pub use server::{ExtProcService, Shared};
pub use stream::StreamState;
