//! Markdown tables and the latency-vs-concurrency chart (SVG) of the
//! overhead bench.

use std::fmt::Write as _;

use super::overhead::CaseResult;

const PATHS: [&str; 5] = ["direct", "envoy", "noop", "steer", "steer-duplex"];

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

pub fn markdown(cases: &[CaseResult], envoy_version: &str, md: &mut String) {
    let _ = writeln!(
        md,
        "## Overhead through real Envoy {envoy_version} (`--concurrency 1`, 4 mock engines)\n"
    );
    md.push_str(
        "Paths: **direct** = client → engine; **envoy** = plain Envoy (shipped `envoy.yaml` without \
         ext_proc, round-robin cluster); **noop** = shipped `envoy.yaml` ⇄ a no-op ext_proc server \
         (the protocol floor); **steer** = shipped `envoy.yaml` ⇄ steer-agent; **steer-duplex** = \
         shipped `envoy-full-duplex.yaml` ⇄ steer-agent. Each figure is the median over interleaved \
         rounds; CPU from `/proc/PID/task/*/schedstat` divided by completed requests.\n\n",
    );
    md.push_str("| case | p50 µs: direct / envoy / noop / steer / steer-duplex | p99 µs: envoy / noop / steer | req/s: direct / envoy / noop / steer / steer-duplex |\n|---|---|---|---|\n");
    for c in cases.iter().filter(|c| c.stream_tokens == 0) {
        let f = |name: &str, get: fn(&super::overhead::PathResult) -> f64| {
            c.path(name)
                .map_or("–".into(), |p| format!("{:.0}", get(p)))
        };
        let row = |names: &[&str], get: fn(&super::overhead::PathResult) -> f64| {
            names
                .iter()
                .map(|n| f(n, get))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            c.case,
            row(&PATHS, |p| p.p50_us),
            row(&["envoy", "noop", "steer"], |p| p.p99_us),
            row(&PATHS, |p| p.req_per_s),
        );
    }
    md.push_str("\n| case | Envoy+Steer − plain Envoy, p50 µs | Envoy+Steer / plain Envoy: p50, req/s | Envoy+Steer / no-op floor: p50, req/s | full duplex / no-op: p50, req/s | Envoy CPU µs/req: envoy / noop / steer / steer-duplex | ext_proc CPU µs/req: noop / steer / steer-duplex |\n|---|---|---|---|---|---|---|\n");
    for c in cases.iter().filter(|c| c.stream_tokens == 0) {
        let (Some(envoy), Some(noop), Some(steer), Some(duplex)) = (
            c.path("envoy"),
            c.path("noop"),
            c.path("steer"),
            c.path("steer-duplex"),
        ) else {
            continue;
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {}, {} | {}, {} | {}, {} | {:.0} / {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} |",
            c.case,
            steer.p50_us - envoy.p50_us,
            ratio(steer.p50_us, envoy.p50_us),
            ratio(steer.req_per_s, envoy.req_per_s),
            ratio(steer.p50_us, noop.p50_us),
            ratio(steer.req_per_s, noop.req_per_s),
            ratio(duplex.p50_us, noop.p50_us),
            ratio(duplex.req_per_s, noop.req_per_s),
            envoy.envoy_cpu_us_per_request,
            noop.envoy_cpu_us_per_request,
            steer.envoy_cpu_us_per_request,
            duplex.envoy_cpu_us_per_request,
            noop.ext_proc_cpu_us_per_request,
            steer.ext_proc_cpu_us_per_request,
            duplex.ext_proc_cpu_us_per_request,
        );
    }
    for c in cases.iter().filter(|c| c.stream_tokens > 0) {
        let _ = writeln!(
            md,
            "\n### {} (engines decode 2 ms/token)\n\n| path | TTFT p50 ms | chunk gap µs | chunks/response | total p50 ms | Envoy CPU µs/request | ext_proc CPU µs/chunk |\n|---|---|---|---|---|---|---|",
            c.case
        );
        for p in &c.paths {
            let _ = writeln!(
                md,
                "| {} | {:.2} | {:.0} | {:.0} | {:.1} | {:.0} | {:.1} |",
                p.path,
                p.ttft_p50_us / 1e3,
                p.chunk_gap_us,
                p.chunks_per_response,
                p.p50_us / 1e3,
                p.envoy_cpu_us_per_request,
                p.ext_proc_cpu_us_per_chunk,
            );
        }
    }
    md.push_str(
        "\nChart: `target/bench/latency-vs-concurrency.svg` (4 KiB chats, p50 per path).\n",
    );
}

/// p50 latency against concurrency for the 4 KiB cases, one line per path.
pub fn chart_svg(cases: &[CaseResult]) -> String {
    let points: Vec<&CaseResult> = cases
        .iter()
        .filter(|c| c.stream_tokens == 0 && c.body_bytes < 8 << 10)
        .collect();
    let (w, h, left, bottom) = (720.0, 420.0, 70.0, 50.0);
    let max_ms = points
        .iter()
        .flat_map(|c| c.paths.iter().map(|p| p.p50_us / 1e3))
        .fold(0.1_f64, f64::max)
        * 1.1;
    let n = points.len().max(2) as f64;
    let x = |i: usize| left + (w - left - 150.0) * i as f64 / (n - 1.0);
    let y = |ms: f64| (h - bottom) - (h - bottom - 20.0) * ms / max_ms;
    let colours = ["#555", "#1f77b4", "#2ca02c", "#d62728", "#9467bd"];
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(
        svg,
        "<line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"black\"/><line x1=\"{left}\" y1=\"20\" x2=\"{left}\" y2=\"{0}\" stroke=\"black\"/>",
        h - bottom,
        w - 150.0
    );
    for t in 0..=4 {
        let ms = max_ms * f64::from(t) / 4.0;
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{ms:.2}</text>",
            left - 6.0,
            y(ms) + 4.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\">p50 latency, ms</text>",
        h / 2.0,
        h / 2.0
    );
    for (i, c) in points.iter().enumerate() {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">c{}</text>",
            x(i),
            h - bottom + 18.0,
            c.concurrency
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">concurrency (4 KiB chat)</text>",
        (left + w - 150.0) / 2.0,
        h - 10.0
    );
    for (k, name) in PATHS.iter().enumerate() {
        let coords: Vec<String> = points
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                c.path(name)
                    .map(|p| format!("{:.1},{:.1}", x(i), y(p.p50_us / 1e3)))
            })
            .collect();
        let colour = colours[k % colours.len()];
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            coords.join(" ")
        );
        let ly = 30.0 + 18.0 * k as f64;
        let _ = writeln!(
            svg,
            "<line x1=\"{0}\" y1=\"{ly}\" x2=\"{1}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"/><text x=\"{2}\" y=\"{3}\">{name}</text>",
            w - 140.0,
            w - 115.0,
            w - 110.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}
