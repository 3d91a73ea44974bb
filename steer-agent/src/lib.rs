//! Steer agent: picks the pod for each OpenAI-style request Envoy sends
//! through the ext_proc filter, and tells Envoy where to send it.

pub mod apply;
pub mod batched_io;
pub mod cli;
pub mod config;
pub mod control;
pub mod datapath;
pub mod discovery;
pub mod error_chain;
pub mod excerpt;
pub mod extproc;
pub mod lifecycle;
pub mod listen;
pub mod openai;
pub mod overrides;
pub mod pool;
pub mod router;
pub mod routing;
pub mod run;
pub mod serve;
pub mod telemetry;
