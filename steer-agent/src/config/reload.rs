//! Hot reload by polling the file's contents: works on every filesystem
//! (including Kubernetes ConfigMap symlink swaps) without inotify quirks.

use std::path::PathBuf;
use std::time::Duration;

use super::{FileConfig, PoolFlag, Settings};

/// Calls `apply` with new settings each time the file's contents differ from
/// `loaded` (what the running settings came from) or the last change, and
/// parse; a broken edit is reported and the last good settings stay. The
/// file is checked every `period` and whenever `now` is notified (SIGHUP).
/// `had_models`: the running settings (from `loaded`) route at least one model.
///
/// A file that routes no model while the last good one did (emptied,
/// truncated, only comments) is refused like a broken edit, unless it says
/// `models: {}`: removing every model must be on purpose.
pub async fn watch_file(
    path: PathBuf,
    loaded: Vec<u8>,
    flags: Vec<PoolFlag>,
    period: Duration,
    now: std::sync::Arc<tokio::sync::Notify>,
    mut had_models: bool,
    mut apply: impl FnMut(Result<Settings, super::ConfigError>) + Send,
) {
    let mut last = Some(loaded);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = now.notified() => {}
        }
        let Ok(bytes) = tokio::fs::read(&path).await else {
            // Mid-swap or deleted: keep serving; a later tick sees the new file.
            continue;
        };
        if last.as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        last = Some(bytes.clone());
        let text = String::from_utf8_lossy(&bytes);
        let result = FileConfig::parse(&path, &text).and_then(|file| {
            let on_purpose = file.says_no_models();
            let settings = Settings::resolve(Some(file), &flags)?;
            if settings.models.is_empty() && had_models && !on_purpose {
                return Err(super::ConfigError::Invalid {
                    field: "models".into(),
                    message: "the file routes no model (empty, truncated or only comments?); \
                              write `models: {}` to remove every model on purpose"
                        .into(),
                });
            }
            Ok(settings)
        });
        if let Ok(settings) = &result {
            had_models = !settings.models.is_empty();
        }
        apply(result);
    }
}
