//! The body parses of [`super`].

use super::*;

fn text(req: &ParsedRequest<'_>) -> String {
    req.prompt.iter().collect()
}

#[test]
fn chat_with_string_and_parts_content() {
    let body = br#"{"model":"qwen","stream":true,"stream_options":{"include_usage":true},
        "user":"u1","messages":[{"role":"system","content":"You are \"helpful\"."},
        {"role":"user","content":[{"type":"text","text":"Hi"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":" there"}]}]}"#;
    let req = ParsedRequest::parse(body).unwrap();
    assert_eq!(req.model, "qwen");
    assert_eq!(req.user.as_deref(), Some("u1"));
    assert_eq!(text(&req), "system\nYou are \"helpful\".\nuser\nHi there\n");
}

#[test]
fn completions_prompt_string_and_array() {
    let req = ParsedRequest::parse(br#"{"model":"m","prompt":"abc"}"#).unwrap();
    assert_eq!(text(&req), "abc");
    let req = ParsedRequest::parse(br#"{"model":"m","prompt":["ab","cd"]}"#).unwrap();
    assert_eq!(text(&req), "abcd");
    let req = ParsedRequest::parse(br#"{"model":"m","prompt":[1,2,3]}"#).unwrap();
    assert_eq!(text(&req), "");
}

#[test]
fn embeddings_and_responses_input() {
    let req = ParsedRequest::parse(br#"{"model":"e","input":["x","y"]}"#).unwrap();
    assert_eq!(text(&req), "xy");
    let body = br#"{"model":"r","instructions":"be brief","input":[{"role":"user","content":[{"type":"input_text","text":"hello"}]}]}"#;
    let req = ParsedRequest::parse(body).unwrap();
    assert_eq!(text(&req), "be briefhello");
    let req = ParsedRequest::parse(br#"{"model":"m","prompt":null,"input":[true,1.5]}"#).unwrap();
    assert_eq!(text(&req), "");
}

#[test]
fn anthropic_messages_system_then_messages() {
    let body = br#"{"model":"claude","max_tokens":8,"system":[{"type":"text","text":"Be brief.","cache_control":{"type":"ephemeral"}}],
        "messages":[{"role":"user","content":[{"type":"text","text":"Hi"},{"type":"image","source":{"type":"base64","data":"QUJD"}}]},
        {"role":"assistant","content":"Hello"}],"stream":true}"#;
    let req = ParsedRequest::parse(body).unwrap();
    assert_eq!(req.model, "claude");
    assert_eq!(text(&req), "Be brief.user\nHi\nassistant\nHello\n");
    let req = ParsedRequest::parse(br#"{"model":"c","system":"sys","messages":[]}"#).unwrap();
    assert_eq!(text(&req), "sys");
}

#[test]
fn completion_bounds_are_read_leniently_in_both_parses() {
    let cases: [(&[u8], Option<u64>); 6] = [
        (br#"{"model":"m","max_tokens":64}"#, Some(64)),
        (
            br#"{"model":"m","max_tokens":9,"max_completion_tokens":32}"#,
            Some(32),
        ),
        (br#"{"model":"m","max_output_tokens":100.0}"#, Some(100)),
        (br#"{"model":"m","max_tokens":null}"#, None),
        (
            br#"{"model":"m","max_tokens":"lots","max_completion_tokens":-1}"#,
            None,
        ),
        (br#"{"model":"m","max_tokens":{"a":[1]}}"#, None),
    ];
    for (body, want) in cases {
        let shown = String::from_utf8_lossy(body);
        assert_eq!(
            ParsedRequest::parse(body).unwrap().max_tokens,
            want,
            "{shown}"
        );
        let head = ParsedRequest::parse_without_prompt(body).unwrap();
        assert_eq!(head.max_tokens, want, "{shown}");
    }
    assert_eq!(expected_tokens(400, Some(50)), 150);
    assert_eq!(expected_tokens(0, None), DEFAULT_COMPLETION_TOKENS);
}

#[test]
fn errors_are_typed() {
    assert!(matches!(
        ParsedRequest::parse(b"{not json"),
        Err(ParseError::InvalidJson(_))
    ));
    assert_eq!(
        ParsedRequest::parse(br#"{"messages":[]}"#).unwrap_err(),
        ParseError::MissingModel
    );
    assert_eq!(
        ParsedRequest::parse(br#"{"model":"  "}"#).unwrap_err(),
        ParseError::MissingModel
    );
    assert!(ParsedRequest::parse(br#"[1,2]"#).is_err());
    assert!(ParsedRequest::parse(br#"{"model":7}"#).is_err());
}

#[test]
fn hostile_nesting_does_not_recurse_forever() {
    let mut body = String::from(r#"{"model":"m","input":"#);
    for _ in 0..40 {
        body.push_str(r#"[{"content":"#);
    }
    body.push_str("\"x\"");
    for _ in 0..40 {
        body.push_str("}]");
    }
    body.push('}');
    // serde_json's recursion limit (128) bounds the depth: no stack overflow.
    let req = ParsedRequest::parse(body.as_bytes()).unwrap();
    assert_eq!(text(&req), "x");
    let too_deep = format!(
        r#"{{"model":"m","input":{}"x"{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    assert!(matches!(
        ParsedRequest::parse(too_deep.as_bytes()),
        Err(ParseError::InvalidJson(_))
    ));
}

#[test]
fn json_errors_never_echo_the_body() {
    let secret = br#"{"model":"m","messages":"my secret prompt"}"#;
    let Err(ParseError::InvalidJson(message)) = ParsedRequest::parse(secret) else {
        panic!("a type error");
    };
    assert!(!message.contains("secret"), "{message}");
    assert!(
        message.contains("wrong type") && message.contains("column"),
        "{message}"
    );
}

#[test]
fn without_prompt_accepts_what_the_full_parse_does_and_rejects_the_same_shapes() {
    let bodies: &[&[u8]] = &[
        br#"{"model":"qwen","user":"u\"1","messages":[{"role":"user","content":"a\nb"},{"content":[{"type":"text","text":"x"}]}]}"#,
        br#"{"messages":[{"role":"user","content":"hi"}],"model":"m","stream":true}"#,
        br#"{"model":"m","prompt":[1,2,3],"input":{"content":"x"},"instructions":null}"#,
        br#"{"model":"m","messages":[[]]}"#,
        br#"{"model":"m","messages":"my secret prompt"}"#,
        br#"{"model":"m","messages":[{"role":5}]}"#,
        br#"{"model":"m","messages":[{"role":"user","content":"\x"}]}"#,
        br#"{"model":"m","messages":[{"role":"user","content":"unterminated}]}"#,
        br#"{"model":"  ","messages":[]}"#,
        br#"{"messages":[]}"#,
        br#"{"model":7}"#,
        b"[1,2]",
        b"{not json",
    ];
    for body in bodies {
        let full = ParsedRequest::parse(body);
        let head = ParsedRequest::parse_without_prompt(body);
        let shown = String::from_utf8_lossy(body);
        match (full, head) {
            (Ok(full), Ok(head)) => {
                assert_eq!(
                    (&full.model, &full.user),
                    (&head.model, &head.user),
                    "{shown}"
                );
                assert_eq!(head.prompt.byte_len(), 0, "{shown}");
            }
            (Err(full), Err(head)) => assert_eq!(full, head, "{shown}"),
            (full, head) => panic!(
                "{shown}: full {:?}, without prompt {:?}",
                full.err(),
                head.err()
            ),
        }
    }
    // Prompt text the agent does not read is not checked.
    let lone_surrogate = br#"{"model":"m","messages":[{"role":"user","content":"\ud800"}]}"#;
    let invalid_utf8 = b"{\"model\":\"m\",\"prompt\":\"\xff\"}";
    for body in [&lone_surrogate[..], &invalid_utf8[..]] {
        assert!(ParsedRequest::parse(body).is_err());
        assert_eq!(
            ParsedRequest::parse_without_prompt(body).unwrap().model,
            "m"
        );
    }
}

#[test]
fn escape_free_strings_are_borrowed_escaped_ones_unescaped_once() {
    let body = br#"{"model":"m","messages":[{"role":"user","content":"plain"},{"role":"user","content":"line\nbreak"}]}"#;
    let req = ParsedRequest::parse(body).unwrap();
    let pieces: Vec<&Cow<'_, str>> = req.prompt.pieces.iter().collect();
    let plain = pieces.iter().find(|p| p.as_ref() == "plain").unwrap();
    assert!(matches!(plain, Cow::Borrowed(_)));
    let escaped = pieces.iter().find(|p| p.starts_with("line")).unwrap();
    assert!(matches!(escaped, Cow::Owned(_)));
    assert_eq!(escaped.as_ref(), "line\nbreak");
}
