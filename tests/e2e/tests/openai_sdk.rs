//! The official `openai` Python SDK against stand-in + agent + engines.

mod common;

use std::path::PathBuf;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_works_through_steer() {
    let python = std::env::var_os("STEER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/steer-venv/bin/python")
        });
    if !python.exists() {
        let msg = format!(
            "openai SDK venv missing at {} (run `cargo xtask setup`)",
            python.display()
        );
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("skipping: {msg}");
        return;
    }
    let stack = common::stack(&["qwen", "llama"], "least-request").await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../python/openai_sdk_check.py");
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(format!("http://{}", stack.gateway()))
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "SDK check failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    common::assert_idle(&stack).await;
}
