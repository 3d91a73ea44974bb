//! Any body: parse never panics; a parsed request has a non-blank model.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steer_agent::openai::ParsedRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = ParsedRequest::parse(data) {
        assert!(!parsed.model.trim().is_empty());
        let _: usize = parsed.prompt.iter().map(str::len).sum();
    }
});
