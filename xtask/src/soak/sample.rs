//! What the soak samples: a process's memory and open fds from `/proc`, and
//! the agent's Prometheus text (decision histogram, error counters, per-pod
//! in-flight), with the histogram's p99 over a window of two samples.

use std::collections::BTreeMap;

use serde::Serialize;

/// A process's resident memory (now and peak) and open file descriptors.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcStats {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub fds: u64,
}

impl ProcStats {
    /// `VmRSS` and `VmHWM` from `/proc/PID/status`, entries of
    /// `/proc/PID/fd`; zeros when the process is gone or `pid` is `None`.
    pub fn of(pid: Option<u32>) -> Self {
        let Some(pid) = pid else {
            return Self::default();
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
        Self {
            rss_kib: kib("VmRSS:"),
            hwm_kib: kib("VmHWM:"),
            fds,
        }
    }

    pub fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }

    pub fn hwm_mib(&self) -> f64 {
        self.hwm_kib as f64 / 1024.0
    }
}

/// Every sample of metric `name` in Prometheus text: (label text between
/// the braces, value).
pub fn series<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

/// The value of label `key` in a label text (`a="1",b="2"`).
pub fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let len = labels[start..].find('"')?;
    Some(&labels[start..start + len])
}

/// Series `name` keyed by the value of label `key`.
pub fn by_label(text: &str, name: &str, key: &str) -> BTreeMap<String, f64> {
    series(text, name)
        .into_iter()
        .filter_map(|(labels, v)| Some((label(labels, key)?.to_owned(), v)))
        .collect()
}

/// Cumulative histogram buckets: (upper bound in seconds, count), ascending,
/// `+Inf` last.
pub type Buckets = Vec<(f64, f64)>;

pub fn buckets(text: &str, histogram: &str) -> Buckets {
    let mut out: Buckets = series(text, &format!("{histogram}_bucket"))
        .into_iter()
        .filter_map(|(labels, v)| {
            let le = label(labels, "le")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, v))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile of the observations between two bucket readings, the
/// way Prometheus' `histogram_quantile` does it: linear within the bucket
/// that holds it, the largest finite bound when it falls in `+Inf`. `None`
/// with no observations in between.
pub fn quantile(before: &Buckets, after: &Buckets, q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(bound, count)| {
            let old = before
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0.0, |(_, c)| *c);
            (bound, count - old)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in &delta {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let within = (rank - lower.1) / (count - lower.1).max(f64::MIN_POSITIVE);
            return Some(lower.0 + (bound - lower.0) * within);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_series_and_quantiles() {
        let text = "# TYPE h histogram\nh_bucket{le=\"0.001\"} 90\nh_bucket{le=\"0.002\"} 100\nh_bucket{le=\"+Inf\"} 100\nh_count 100\nerr{reason=\"x\"} 3\n";
        let b = buckets(text, "h");
        assert_eq!(b.len(), 3);
        assert_eq!(by_label(text, "err", "reason")["x"], 3.0);
        let p99 = quantile(&Vec::new(), &b, 0.99).unwrap();
        assert!((p99 - 0.0019).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(&b, &b, 0.99), None);
    }
}
