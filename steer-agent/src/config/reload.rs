//! Hot reload by polling the file's contents: works on every filesystem
//! (including Kubernetes ConfigMap symlink swaps) without inotify quirks.

use std::path::PathBuf;
use std::time::Duration;

use super::{FileConfig, PoolFlag, Settings};

/// Calls `apply` with new settings each time the file's contents differ from
/// `loaded` (what the running settings came from) or the last change, and
/// parse; a broken edit is reported and the last good settings stay.
pub async fn watch_file(
    path: PathBuf,
    loaded: Vec<u8>,
    flags: Vec<PoolFlag>,
    period: Duration,
    mut apply: impl FnMut(Result<Settings, super::ConfigError>) + Send,
) {
    let mut last = Some(loaded);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Ok(bytes) = tokio::fs::read(&path).await else {
            // Mid-swap or deleted: keep serving; a later tick sees the new file.
            continue;
        };
        if last.as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        last = Some(bytes.clone());
        let text = String::from_utf8_lossy(&bytes);
        let result =
            FileConfig::parse(&path, &text).and_then(|file| Settings::resolve(Some(file), &flags));
        apply(result);
    }
}
