//! Exports what the kernel measured (sock_ops, TC, program counters) from the
//! datapath's latest stats snapshot.

use std::sync::Arc;

use prometheus::core::Collector;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

use super::collector::{Families, ScrapeCollector};
use crate::datapath::KernelDatapath;

pub type KernelCollector = ScrapeCollector<Arc<KernelDatapath>, KernelFamilies>;

pub struct KernelFamilies {
    srtt: IntGaugeVec,
    samples: IntCounterVec,
    connects: IntCounterVec,
    failed: IntCounterVec,
    tx_bytes: IntCounterVec,
    rx_bytes: IntCounterVec,
    tx_packets: IntCounterVec,
    rx_packets: IntCounterVec,
    events: IntCounterVec,
}

impl Families<Arc<KernelDatapath>> for KernelFamilies {
    fn new() -> Self {
        let counter = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label]).expect("static options are valid")
        };
        Self {
            srtt: IntGaugeVec::new(
                Opts::new(
                    "steer_kernel_pod_srtt_microseconds",
                    "Kernel (sock_ops) smoothed RTT to the pod.",
                ),
                &["pod"],
            )
            .expect("static options are valid"),
            samples: counter(
                "steer_kernel_pod_rtt_samples_total",
                "RTT samples taken by sock_ops.",
                "pod",
            ),
            connects: counter(
                "steer_kernel_pod_connects_total",
                "TCP connections established to the pod.",
                "pod",
            ),
            failed: counter(
                "steer_kernel_pod_failed_connects_total",
                "TCP connects to the pod that failed.",
                "pod",
            ),
            tx_bytes: counter(
                "steer_kernel_pod_tx_bytes_total",
                "Bytes node -> the pod's IP counted by TC (per IP: pods sharing an IP show the same total).",
                "pod",
            ),
            rx_bytes: counter(
                "steer_kernel_pod_rx_bytes_total",
                "Bytes the pod's IP -> node counted by TC (per IP: pods sharing an IP show the same total).",
                "pod",
            ),
            tx_packets: counter(
                "steer_kernel_pod_tx_packets_total",
                "Packets node -> the pod's IP counted by TC (per IP).",
                "pod",
            ),
            rx_packets: counter(
                "steer_kernel_pod_rx_packets_total",
                "Packets the pod's IP -> node counted by TC (per IP).",
                "pod",
            ),
            events: counter(
                "steer_kernel_events_total",
                "eBPF program events (connect rewrites, refusals, ...).",
                "event",
            ),
        }
    }

    fn collectors(&self) -> Vec<&dyn Collector> {
        vec![
            &self.srtt,
            &self.samples,
            &self.connects,
            &self.failed,
            &self.tx_bytes,
            &self.rx_bytes,
            &self.tx_packets,
            &self.rx_packets,
            &self.events,
        ]
    }

    fn fill(&self, kernel: &Arc<KernelDatapath>) {
        let f = self;
        let stats = kernel.stats();
        for (addr, pod) in &stats.pods {
            let label = addr.to_string();
            let l = [label.as_str()];
            f.srtt.with_label_values(&l).set(i64::from(pod.srtt_us));
            f.samples.with_label_values(&l).inc_by(pod.rtt_samples);
            f.connects.with_label_values(&l).inc_by(pod.connects);
            f.failed.with_label_values(&l).inc_by(pod.failed_connects);
            f.tx_bytes.with_label_values(&l).inc_by(pod.tx_bytes);
            f.rx_bytes.with_label_values(&l).inc_by(pod.rx_bytes);
            f.tx_packets.with_label_values(&l).inc_by(pod.tx_packets);
            f.rx_packets.with_label_values(&l).inc_by(pod.rx_packets);
        }
        for (name, value) in &stats.counters {
            f.events.with_label_values(&[name]).inc_by(*value);
        }
    }
}
