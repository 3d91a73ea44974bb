//! The soak report as markdown tables.

use std::fmt::Write as _;

use super::kinds::Kind;
use super::report::{Point, Report};

pub fn render(r: &Report) -> String {
    let m = &r.mixed;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Soak\n\nMixed load through Envoy {} for {:.0} s, {} workers; {}.\n\
         Start = first sample after a {:.0} s warm-up, end = last sample; p99 and req/s over windows of at least {:.0} s \
         (from the start point, up to the end point; samples every {:.1} s); p99 interpolated within `steer_decision_duration_seconds` buckets.\n",
        m.envoy_version,
        m.duration_s,
        m.workers,
        m.engines,
        r.warmup_s,
        r.window_s,
        m.sample_every_s
    );
    md.push_str("| kind | sent | unexpected |\n|---|---:|---:|\n");
    for kind in Kind::ALL {
        let t = m.requests.get(&kind).cloned().unwrap_or_default();
        let _ = writeln!(md, "| {} | {} | {} |", kind.name(), t.sent, t.unexpected);
    }
    let _ = writeln!(
        md,
        "| **total** | {} | {} |\n\nOverall {:.0} req/s.\n",
        r.total_requests, r.unexpected, r.req_per_s
    );
    for (kind, t) in m.requests.iter().filter(|(_, t)| !t.examples.is_empty()) {
        let _ = writeln!(md, "Unexpected {} examples:", kind.name());
        for e in &t.examples {
            let _ = writeln!(md, "- `{}`", e.replace('`', "'"));
        }
        md.push('\n');
    }
    md.push_str("| | start | end |\n|---|---:|---:|\n");
    let row = |md: &mut String, name: &str, f: &dyn Fn(&Point) -> String| {
        let _ = writeln!(md, "| {name} | {} | {} |", f(&r.start), f(&r.end));
    };
    row(&mut md, "at (s)", &|p| format!("{:.0}", p.at_s));
    row(&mut md, "agent VmRSS (MiB)", &|p| {
        format!("{:.1}", p.agent.rss_mib())
    });
    row(&mut md, "agent fds", &|p| p.agent.fds.to_string());
    row(&mut md, "Envoy VmRSS (MiB)", &|p| {
        format!("{:.1}", p.envoy.rss_mib())
    });
    row(&mut md, "Envoy fds", &|p| p.envoy.fds.to_string());
    row(&mut md, "decision p99 (µs)", &|p| {
        p.decision_p99_us.map_or("-".into(), |v| format!("{v:.1}"))
    });
    row(&mut md, "window (s)", &|p| format!("{:.1}", p.window_s));
    row(&mut md, "decisions in window", &|p| {
        format!("{:.0}", p.decisions)
    });
    row(&mut md, "req/s in window", &|p| {
        format!("{:.0}", p.req_per_s)
    });
    let deltas: Vec<String> = m
        .agent_errors_delta
        .iter()
        .filter(|(_, v)| **v != 0.0)
        .map(|(k, v)| format!("{k} +{v}"))
        .collect();
    let _ = writeln!(
        md,
        "\nAgent `steer_errors_total` delta over the load: {}.\nIn flight after the load: {} of {} pods not at 0.\n",
        if deltas.is_empty() {
            "none".into()
        } else {
            deltas.join(", ")
        },
        m.in_flight_after.len(),
        m.pods
    );
    let mem = &r.memory;
    let _ = writeln!(
        md,
        "## Memory: {} pods, {} prefix blocks\n\n\
         {} ready pods (listeners in the soak process, scraped every {} ms: {} scrapes answered, {} failed); \
         {} unique prompts of {} × {} bytes sent to ext_proc, {} prefix-cache decisions × {} blocks = {} blocks recorded \
         (index capacity {}); {} of {} early prompts resent went back to their pod.\n",
        mem.pods,
        mem.blocks_recorded,
        mem.pods_ready,
        mem.scrape_interval_ms,
        mem.scrapes_answered,
        mem.scrape_failures,
        mem.requests,
        mem.max_blocks_per_request,
        mem.block_bytes,
        mem.decisions,
        mem.max_blocks_per_request,
        mem.blocks_recorded,
        mem.index_capacity_blocks,
        mem.resent_same_pod,
        mem.resent
    );
    md.push_str("| agent | VmRSS (MiB) | VmHWM (MiB) | fds |\n|---|---:|---:|---:|\n");
    for (name, s) in [
        ("pods ready, no blocks", mem.before),
        ("after 1M blocks", mem.after),
    ] {
        let _ = writeln!(
            md,
            "| {name} | {:.1} | {:.1} | {} |",
            s.rss_mib(),
            s.hwm_mib(),
            s.fds
        );
    }
    md.push_str("\n## Checks\n\n| check | | detail |\n|---|---|---|\n");
    for c in &r.checks {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            c.name,
            if c.ok { "ok" } else { "**FAIL**" },
            c.detail
        );
    }
    md
}
