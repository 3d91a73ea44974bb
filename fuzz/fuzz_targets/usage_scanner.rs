//! Any response body, cut into any chunks, as JSON or SSE: the scanner
//! never panics, and the result does not depend on where the cuts fall.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steer_agent::openai::UsageScanner;

fuzz_target!(|input: (bool, Vec<u16>, &[u8])| {
    let (sse, cuts, body) = input;
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/json"
    };
    let mut whole = UsageScanner::new(Some(content_type));
    whole.feed(body);
    let expected = whole.finish();
    let mut chunked = UsageScanner::new(Some(content_type));
    let mut at = 0;
    for cut in cuts {
        let end = (at + usize::from(cut)).min(body.len());
        chunked.feed(&body[at..end]);
        at = end;
    }
    chunked.feed(&body[at..]);
    assert_eq!(chunked.finish(), expected);
});
