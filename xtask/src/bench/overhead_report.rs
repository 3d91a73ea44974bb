//! Markdown tables and the latency-vs-concurrency chart (SVG) of the
//! overhead bench.

use std::fmt::Write as _;

use super::overhead::CaseResult;

const PATHS: [&str; 11] = [
    "direct",
    "envoy",
    "floor-headers",
    "floor-one-wait",
    "steer",
    "steer-prefix",
    "steer-uds",
    "steer-observer",
    "steer-duplex",
    "vllm-router",
    "sglang-router",
];

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
         ext_proc, round-robin cluster); **floor-headers** = `envoy.yaml` sending no body ⇄ a \
         no-op ext_proc server that routes in its headers reply; **floor-one-wait** = shipped \
         `envoy.yaml` ⇄ the no-op server holding its headers reply until the body ends (the floor \
         Steer is judged against); **steer** = shipped `envoy.yaml` ⇄ steer-agent, least-request (the prompt is not read); \
         **steer-prefix** = the same, requests asking for `prefix-cache` (the prompt is read and hashed); \
         **steer-uds** = a second stack (own engines, agent, Envoy, shipped config) reaching the agent over a Unix socket; \
         **steer-observer** = `envoy.yaml` with its usage observer turned on ⇄ steer-agent; \
         **steer-duplex** = shipped \
         `envoy-full-duplex.yaml` ⇄ steer-agent; **vllm-router**, **sglang-router** = the peer \
         routers (PyPI, pinned) in place of Envoy, round_robin (their CPU is in the Envoy column). \
         Each figure is the median over interleaved \
         rounds; CPU from `/proc/PID/task/*/schedstat` divided by completed requests.\n\n",
    );
    let _ = writeln!(
        md,
        "| case | p50 µs: {0} | p99 µs: {0} | req/s: {0} |\n|---|---|---|---|",
        PATHS.join(" / ")
    );
    for c in cases.iter().filter(|c| c.stream_tokens == 0) {
        let row = |get: fn(&super::overhead::PathResult) -> f64| {
            PATHS
                .iter()
                .map(|n| c.path(n).map_or("–".into(), |p| format!("{:.0}", get(p))))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            c.case,
            row(|p| p.p50_us),
            row(|p| p.p99_us),
            row(|p| p.req_per_s),
        );
    }
    md.push_str("\n| case | **steer / floor-one-wait**: p50, req/s | steer-prefix / floor-one-wait | steer-uds / steer | steer-observer / floor-one-wait: p50, req/s | floor-one-wait / floor-headers: p50, req/s | steer / plain envoy: p50, req/s | steer-duplex / floor-one-wait: p50, req/s | steer / vllm-router: p50, req/s | Envoy CPU µs/req: envoy / floor-one-wait / steer / steer-uds / steer-observer | ext_proc CPU µs/req: floor-one-wait / steer / steer-prefix / steer-uds / steer-observer |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for c in cases.iter().filter(|c| c.stream_tokens == 0) {
        // A partial run (`--path`) lacks some paths: their cells read "–".
        let pair = |a: &str, b: &str| match (c.path(a), c.path(b)) {
            (Some(a), Some(b)) => format!(
                "{}, {}",
                ratio(a.p50_us, b.p50_us),
                ratio(a.req_per_s, b.req_per_s)
            ),
            _ => "–".into(),
        };
        let cpu = |names: &[&str], get: fn(&super::overhead::PathResult) -> f64| {
            names
                .iter()
                .map(|n| c.path(n).map_or("–".into(), |p| format!("{:.0}", get(p))))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let _ = writeln!(
            md,
            "| {} | **{}** | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.case,
            pair("steer", "floor-one-wait"),
            pair("steer-prefix", "floor-one-wait"),
            pair("steer-uds", "steer"),
            pair("steer-observer", "floor-one-wait"),
            pair("floor-one-wait", "floor-headers"),
            pair("steer", "envoy"),
            pair("steer-duplex", "floor-one-wait"),
            pair("steer", "vllm-router"),
            cpu(
                &[
                    "envoy",
                    "floor-one-wait",
                    "steer",
                    "steer-uds",
                    "steer-observer"
                ],
                |p| p.envoy_cpu_us_per_request
            ),
            cpu(
                &[
                    "floor-one-wait",
                    "steer",
                    "steer-prefix",
                    "steer-uds",
                    "steer-observer",
                ],
                |p| p.ext_proc_cpu_us_per_request
            ),
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
    let colours = [
        "#555", "#1f77b4", "#8c564b", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#17becf",
        "#bcbd22",
    ];
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
