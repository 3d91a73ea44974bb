//! Any body: parse never panics; a parsed request has a non-blank model; the
//! parse that skips the prompt accepts every body the full parse accepts,
//! with the same model, user and completion bound, and rejects only bodies it
//! rejects.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steer_agent::openai::ParsedRequest;

fuzz_target!(|data: &[u8]| {
    let full = ParsedRequest::parse(data);
    let head = ParsedRequest::parse_without_prompt(data);
    match (full, head) {
        (Ok(full), Ok(head)) => {
            assert!(!full.model.trim().is_empty());
            let _: usize = full.prompt.iter().map(str::len).sum();
            assert_eq!(full.max_tokens, head.max_tokens);
            assert_eq!((full.model, full.user), (head.model, head.user));
            assert_eq!(head.prompt.byte_len(), 0);
        }
        (Ok(full), Err(head)) => panic!("model {:?}, without prompt: {head}", full.model),
        // Unreadable prompt text (invalid UTF-8, a lone surrogate escape)
        // fails only the full parse.
        (Err(_), _) => {}
    }
});
