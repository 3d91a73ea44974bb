//! The response side of a request, off Envoy's critical path.
//!
//! The shipped configs skip the response phases on the routing filter (Envoy
//! never waits on them). `envoy.yaml` carries a second ext_proc filter in
//! `observability_mode`, off unless turned on: Envoy then sends it the
//! response headers and body and waits for nothing. Its messages carry the
//! routing reply's `steer` metadata (forwarded by Envoy), which names the pod
//! and model the tokens belong to. The agent never answers an observer; it
//! ends the stream itself once the response has ended, so Envoy holds no
//! observer stream open. Failed responses reach the agent either way, through
//! the access log ([`super::failures`]).
//!
//! The same accounting serves configs that send response phases to the
//! routing filter ([`upstream_status`], [`count_usage`]).

use std::sync::atomic::Ordering::Relaxed;

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::google::protobuf::value::Kind;

use super::Shared;
use super::headers::{content_type, status_of};
use super::reply::STEER_NAMESPACE;
use crate::openai::UsageScanner;
use crate::pool::Member;
use crate::telemetry::ErrorKind;

/// One observer stream: the response of one routed request.
#[derive(Debug, Default)]
pub struct Observer {
    member: Option<Member>,
    usage: Option<UsageScanner>,
    done: bool,
}

impl Observer {
    pub fn on_message(&mut self, shared: &Shared, message: ProcessingRequest) {
        match message.request {
            Some(Request::ResponseHeaders(h)) => {
                self.member = routed_member(shared, message.metadata_context.as_ref());
                if let Some(member) = &self.member {
                    upstream_status(shared, member, status_of(h.headers.as_ref()));
                }
                self.usage = Some(UsageScanner::new(
                    content_type(h.headers.as_ref()).as_deref(),
                ));
                if h.end_of_stream {
                    self.finish();
                }
            }
            Some(Request::ResponseBody(b)) => {
                if let Some(scanner) = &mut self.usage {
                    scanner.feed(&b.body);
                }
                if b.end_of_stream {
                    self.finish();
                }
            }
            Some(Request::ResponseTrailers(_)) => self.finish(),
            // Request phases, if a config sends them, carry nothing to count.
            Some(_) => {}
            None => shared.metrics.error(ErrorKind::Protocol),
        }
    }

    /// The response has ended: nothing more will be counted.
    pub fn done(&self) -> bool {
        self.done
    }

    fn finish(&mut self) {
        if let (Some(scanner), Some(member)) = (self.usage.take(), &self.member) {
            count_usage(member, scanner);
        }
        self.done = true;
    }
}

/// The pod the routing reply chose, from its forwarded `steer` metadata
/// (`pod`, `model`), looked up in the current snapshot. `None` for requests
/// the agent did not route or a pod that has left its pool since.
pub(crate) fn routed_member(shared: &Shared, metadata: Option<&Metadata>) -> Option<Member> {
    let fields = &metadata?.filter_metadata.get(STEER_NAMESPACE)?.fields;
    let text = |key: &str| match fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.as_str()),
        _ => None,
    };
    let (pod, model) = (text("pod")?, text("model")?);
    let snapshot = shared.router.pools().load();
    snapshot
        .model(model)?
        .members
        .iter()
        .find(|m| &*m.endpoint.addr_text == pod)
        .cloned()
}

/// A routed response's status: a 502–504 (the pod's, or Envoy's own when it
/// could not reach the pod) takes the pod out of rotation until a scrape
/// succeeds.
pub(crate) fn upstream_status(shared: &Shared, member: &Member, status: Option<u16>) {
    if let Some(502..=504) = status {
        shared.metrics.error(ErrorKind::UpstreamFailed);
        if member.endpoint.report_upstream_failure() {
            tracing::warn!(pod = %member.endpoint.addr, "pod out of rotation after a failed response, until a scrape succeeds");
        }
    }
}

/// Adds the response's token usage, if it reported any, to the pod's counters.
pub fn count_usage(member: &Member, mut scanner: UsageScanner) {
    if let Some(usage) = scanner.finish() {
        let counters = &member.counters;
        counters
            .prompt_tokens
            .fetch_add(usage.prompt_tokens, Relaxed);
        counters
            .completion_tokens
            .fetch_add(usage.completion_tokens, Relaxed);
    }
}
