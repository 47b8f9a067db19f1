//! How the figures are printed and summarised, and the monitors they are taken on.

use super::*;

pub(crate) fn result(key: &str, value: f64) {
    println!("RESULT vram {key} {value:.3}");
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

pub(crate) fn monitor(pacing: Pacing) -> Monitor {
    Monitor::new(MonitorOptions { interval: Duration::from_secs(3600), pacing }).expect("monitor")
}
