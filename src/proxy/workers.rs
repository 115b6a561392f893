//! The proxy's worker threads: one single-threaded tokio runtime per core, shared by
//! every proxy in the process, as nginx runs one event loop per worker process.
//!
//! A client connection lives on the worker that accepted it, with its upstream
//! connections, its timers and its upgraded splice: nothing it does wakes another
//! thread or is stolen by one. On the 2-core reference machine this is what brings the
//! proxy from about 0.65x nginx's throughput (one shared multi-thread runtime, upstream
//! connections shared by all) to nginx's (`cargo bench --bench proxy_nginx`).

use std::sync::OnceLock;

use tokio::runtime::Handle;

/// `RIPCORD_PROXY_WORKERS=N`: how many worker threads the proxies share (default: one
/// per available core, at most [`MAX_WORKERS`]).
pub const WORKERS_ENV: &str = "RIPCORD_PROXY_WORKERS";

/// The most worker threads started when the count is not given.
pub const MAX_WORKERS: usize = 16;

static WORKERS: OnceLock<Vec<Handle>> = OnceLock::new();

/// The workers' runtimes, started on first use.
pub(crate) fn handles() -> &'static [Handle] {
    WORKERS.get_or_init(|| (0..count()).map(start).collect())
}

/// How many workers to start: [`WORKERS_ENV`] when set to a positive number, else one
/// per available core, at most [`MAX_WORKERS`].
fn count() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    parse_count(std::env::var(WORKERS_ENV).ok().as_deref(), cores)
}

fn parse_count(var: Option<&str>, cores: usize) -> usize {
    match var.map(str::trim).and_then(|v| v.parse::<usize>().ok()) {
        Some(n) if n > 0 => n.min(1024),
        _ => cores.clamp(1, MAX_WORKERS),
    }
}

/// Starts worker `i`: a thread that drives its own current-thread runtime forever.
fn start(i: usize) -> Handle {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("ripcord-proxy-{i}"))
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the proxy worker's runtime starts");
            let _ = tx.send(runtime.handle().clone());
            runtime.block_on(std::future::pending::<()>());
        })
        .expect("the proxy worker thread starts");
    rx.recv().expect("the proxy worker sends its runtime")
}

#[cfg(test)]
mod tests {
    use super::parse_count;

    #[test]
    fn the_worker_count_is_the_cores_unless_given() {
        assert_eq!(parse_count(None, 2), 2);
        assert_eq!(parse_count(None, 64), super::MAX_WORKERS);
        assert_eq!(parse_count(None, 0), 1);
        assert_eq!(parse_count(Some("3"), 2), 3);
        assert_eq!(parse_count(Some(" 1 "), 8), 1);
        assert_eq!(parse_count(Some("0"), 2), 2);
        assert_eq!(parse_count(Some("many"), 4), 4);
    }
}
