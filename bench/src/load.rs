//! A closed-loop load generator: `connections` workers each send a request
//! as soon as the previous one is answered, for a fixed time; latencies go
//! into an HDR histogram.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Mutex;

pub struct Measured {
    pub completed: u64,
    pub failed: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
}

impl Measured {
    pub fn rate(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }

    /// `p50 / p99` in milliseconds.
    pub fn percentiles(&self) -> String {
        let ms = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        format!("p50 {:.2} ms, p99 {:.2} ms", ms(0.5), ms(0.99))
    }
}

/// Runs `request(worker, n)` in `connections` loops for `duration`.
pub async fn closed_loop<F, Fut>(connections: usize, duration: Duration, request: F) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let request = Arc::new(request);
    let histogram = Arc::new(Mutex::new(new_histogram()));
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..connections)
        .map(|worker| {
            let (request, histogram) = (request.clone(), histogram.clone());
            tokio::spawn(async move {
                let (mut local, mut completed, mut failed) = (new_histogram(), 0_u64, 0_u64);
                let mut n = 0;
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    if request(worker, n).await {
                        completed += 1;
                        local.saturating_record(sent.elapsed().as_micros() as u64);
                    } else {
                        failed += 1;
                    }
                    n += 1;
                }
                histogram.lock().await.add(&local).ok();
                (completed, failed)
            })
        })
        .collect();
    let (mut completed, mut failed) = (0, 0);
    for worker in workers {
        if let Ok((c, f)) = worker.await {
            completed += c;
            failed += f;
        }
    }
    let elapsed = started.elapsed();
    let latency = Arc::try_unwrap(histogram)
        .map(Mutex::into_inner)
        .unwrap_or_else(|_| new_histogram());
    Measured {
        completed,
        failed,
        elapsed,
        latency,
    }
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits: cannot fail for these bounds.
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| unreachable!("valid histogram bounds"))
}
