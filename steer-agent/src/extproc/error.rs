//! Request errors, answered to the client via an ImmediateResponse as an
//! OpenAI-style error JSON (an Anthropic-style one on the Messages API), and
//! counted by reason.

use crate::openai::ParseError;
use crate::router::RouteError;
use crate::telemetry::ErrorKind;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("{0}")]
    Parse(#[from] ParseError),
    #[error("{0}")]
    Route(#[from] RouteError),
    #[error("request body of {size} bytes exceeds the limit of {limit} bytes")]
    BodyTooLarge { size: usize, limit: usize },
    #[error("the router holds too many request bodies right now; retry shortly")]
    Overloaded,
    #[error(
        "request has {count} headers; with the {added} routing headers Steer adds it would exceed the gateway's limit of {limit}"
    )]
    TooManyHeaders {
        count: usize,
        added: usize,
        limit: usize,
    },
    #[error(
        "request has no body and no `model` header: Steer routes OpenAI requests by the `model` in their JSON body"
    )]
    NoBody,
}

impl RequestError {
    pub fn status(&self) -> u16 {
        match self {
            Self::Parse(_)
            | Self::Route(RouteError::UnknownStrategy(_) | RouteError::BadWeights(_))
            | Self::NoBody => 400,
            Self::Route(RouteError::UnknownModel(_)) => 404,
            Self::BodyTooLarge { .. } => 413,
            Self::TooManyHeaders { .. } => 431,
            Self::Route(RouteError::NoReadyEndpoint(_)) | Self::Overloaded => 503,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Parse(ParseError::InvalidJson(_)) => ErrorKind::InvalidJson,
            Self::Parse(ParseError::MissingModel) => ErrorKind::MissingModel,
            Self::Route(RouteError::UnknownStrategy(_) | RouteError::BadWeights(_)) => {
                ErrorKind::UnknownStrategy
            }
            Self::Route(RouteError::UnknownModel(_)) => ErrorKind::UnknownModel,
            Self::BodyTooLarge { .. } => ErrorKind::BodyTooLarge,
            Self::TooManyHeaders { .. } => ErrorKind::TooManyHeaders,
            Self::Route(RouteError::NoReadyEndpoint(_)) => ErrorKind::NoReadyEndpoint,
            Self::Overloaded => ErrorKind::Overloaded,
            Self::NoBody => ErrorKind::NoBody,
        }
    }

    /// AIBrix-style `x-error-<reason>` header name, for clients and dashboards
    /// that key on it.
    pub fn error_header(&self) -> &'static str {
        match self.kind() {
            ErrorKind::InvalidJson => "x-error-invalid-request-body",
            ErrorKind::MissingModel | ErrorKind::NoBody => "x-error-no-model-in-request",
            ErrorKind::UnknownStrategy => "x-error-invalid-routing-strategy",
            ErrorKind::UnknownModel => "x-error-model-not-found",
            ErrorKind::BodyTooLarge => "x-error-request-too-large",
            ErrorKind::TooManyHeaders => "x-error-too-many-headers",
            ErrorKind::Overloaded => "x-error-overloaded",
            _ => "x-error-no-model-backends",
        }
    }

    /// OpenAI's `error.type` and `error.code`.
    fn type_and_code(&self) -> (&'static str, &'static str) {
        match self.kind() {
            ErrorKind::UnknownModel => ("invalid_request_error", "model_not_found"),
            ErrorKind::BodyTooLarge => ("invalid_request_error", "request_too_large"),
            ErrorKind::TooManyHeaders => ("invalid_request_error", "too_many_headers"),
            ErrorKind::UnknownStrategy => ("invalid_request_error", "invalid_routing_strategy"),
            ErrorKind::NoReadyEndpoint => ("service_unavailable_error", "no_ready_endpoint"),
            ErrorKind::Overloaded => ("service_unavailable_error", "overloaded"),
            ErrorKind::InvalidJson => ("invalid_request_error", "invalid_json"),
            _ => ("invalid_request_error", "missing_model"),
        }
    }

    /// The stable `error.code` (also sent as `x-steer-error`).
    pub fn code(&self) -> &'static str {
        self.type_and_code().1
    }

    /// The error body for a request to `path`: Anthropic's shape on the
    /// Messages API (`/v1/messages`), OpenAI's everywhere else.
    pub fn json_for(&self, path: &str) -> Vec<u8> {
        let api = path.split('?').next().unwrap_or_default();
        if api.trim_end_matches('/').ends_with("/v1/messages") {
            self.anthropic_json()
        } else {
            self.openai_json()
        }
    }

    /// `{"type":"error","error":{"type","message"}}` as Anthropic returns it.
    pub fn anthropic_json(&self) -> Vec<u8> {
        let kind = match self.kind() {
            ErrorKind::UnknownModel => "not_found_error",
            ErrorKind::BodyTooLarge => "request_too_large",
            ErrorKind::Overloaded => "overloaded_error",
            ErrorKind::NoReadyEndpoint => "api_error",
            _ => "invalid_request_error",
        };
        let body = serde_json::json!({
            "type": "error",
            "error": {"type": kind, "message": self.to_string()},
        });
        body.to_string().into_bytes()
    }

    /// `{"error":{"message","type","param","code"}}` as OpenAI returns it.
    pub fn openai_json(&self) -> Vec<u8> {
        let (kind, code) = self.type_and_code();
        let body = serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": kind,
                "param": null,
                "code": code,
            }
        });
        body.to_string().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::UnknownStrategy;

    #[test]
    fn statuses_and_json_shape() {
        let cases = [
            (
                RequestError::Parse(ParseError::InvalidJson("x".into())),
                400,
            ),
            (RequestError::Parse(ParseError::MissingModel), 400),
            (
                RouteError::UnknownStrategy(UnknownStrategy("z".into())).into(),
                400,
            ),
            (
                RouteError::BadWeights(crate::routing::ProfileError::Duplicate("q".into())).into(),
                400,
            ),
            (RouteError::UnknownModel("m".into()).into(), 404),
            (RequestError::BodyTooLarge { size: 2, limit: 1 }, 413),
            (
                RequestError::TooManyHeaders {
                    count: 99,
                    added: 3,
                    limit: 100,
                },
                431,
            ),
            (RouteError::NoReadyEndpoint("m".into()).into(), 503),
            (RequestError::Overloaded, 503),
            (RequestError::NoBody, 400),
        ];
        for (err, status) in cases {
            assert_eq!(err.status(), status);
            let v: serde_json::Value = serde_json::from_slice(&err.openai_json()).unwrap();
            assert!(v["error"]["message"].as_str().unwrap().len() > 3);
            assert!(v["error"]["type"].is_string() && v["error"]["code"].is_string());
            assert!(err.error_header().starts_with("x-error-"));
            let v: serde_json::Value =
                serde_json::from_slice(&err.json_for("/v1/messages?beta=true")).unwrap();
            assert_eq!(v["type"], "error");
            assert!(v["error"]["type"].as_str().unwrap().ends_with("_error") || status == 413);
            assert_eq!(v["error"]["message"], err.to_string());
            assert_eq!(err.json_for("/v1/chat/completions"), err.openai_json());
        }
    }
}
