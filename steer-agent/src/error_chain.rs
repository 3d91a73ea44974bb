//! Rendering an error with its sources on one line: the typed errors keep
//! their cause in `source()` (aya's syscall errors hold the errno there,
//! hyper's the connect failure), their `Display` says only their own part.

/// `a: b: c` for an error `a` caused by `b` caused by `c`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn joins_every_source() {
        let io = std::io::Error::other("inner");
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(super::chain(&Outer(io)), "outer: inner");
    }
}
