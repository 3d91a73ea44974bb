//! Steer agent: picks the pod for each OpenAI-style request Envoy sends
//! through the ext_proc filter.

pub mod openai;
pub mod routing;
