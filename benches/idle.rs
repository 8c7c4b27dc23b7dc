//! What an idle hub costs: CPU time used by this process while a hub of each kind sits on its
//! own bus doing nothing, beside a second, idle hub on the same bus (so heartbeats flow both
//! ways and a direct lane is open between them).
//!
//! ```sh
//! cargo bench --bench idle --all-features            # 5 s per hub kind
//! cargo bench --bench idle --all-features -- --quick  # 1 s per hub kind
//! ```
//!
//! The figure is CPU milliseconds per second of wall time (`getrusage`, user + system, for the
//! whole process: both hubs, their engine, ipmb and lane threads), next to the baseline of the
//! same process with no hub. Each hub wakes for its heartbeat (every 250 ms: its clock and writer
//! send it, its peer's bus reader and lane reader take it) and once a second for its bus
//! reader's fallback timeout; nothing spins. `tests/idle.rs` counts the wake-ups.

use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "support/cpus.rs"]
mod cpus;

use cpus::cpu_time;

/// CPU milliseconds per wall second spent while `hold` waits `window`.
fn cpu_per_second(window: Duration) -> f64 {
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    std::thread::sleep(window);
    let (cpu, wall) = (cpu_time() - cpu0, wall0.elapsed());
    cpu.as_secs_f64() * 1000.0 / wall.as_secs_f64()
}

fn bus(kind: &str) -> String {
    format!("idle-bench-{kind}-{}", std::process::id())
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let window = if quick {
        Duration::from_secs(1)
    } else if std::env::var("IDLE_LONG").is_ok() {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(5)
    };
    // Let the hubs finish discovery and open their lane before measuring.
    let settle = Duration::from_millis(700);
    println!("# idle hubs: CPU ms per second of wall time ({} s window)\n", window.as_secs());
    println!("| what | CPU ms/s |\n|---|---:|");
    println!("| no hub (baseline) | {:.2} |", cpu_per_second(window));

    {
        let bus = bus("blocking");
        let a = hsipc::blocking::ProcessHub::builder("idle-a").bus(&bus).build().expect("hub a");
        let b = hsipc::blocking::ProcessHub::builder("idle-b").bus(&bus).build().expect("hub b");
        b.serve("idle.ping", |()| Ok::<_, String>(())).expect("serve");
        a.wait_for_service("idle", Duration::from_secs(5)).expect("service");
        a.call::<_, ()>("idle.ping", &()).expect("call"); // opens the lanes both ways
        std::thread::sleep(settle);
        println!("| two blocking hubs | {:.2} |", cpu_per_second(window));
        a.close();
        b.close();
    }
    {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        rt.block_on(async {
            let bus = bus("tokio");
            let a = hsipc::ProcessHub::builder("idle-a").bus(&bus).build().expect("hub a");
            let b = hsipc::ProcessHub::builder("idle-b").bus(&bus).build().expect("hub b");
            b.serve("idle.ping", |()| async { Ok::<_, String>(()) }).await.expect("serve");
            a.wait_for_service("idle", Duration::from_secs(5)).await.expect("service");
            a.call::<_, ()>("idle.ping", &()).await.expect("call");
            tokio::time::sleep(settle).await;
            let cost = tokio::task::spawn_blocking(move || cpu_per_second(window)).await.expect("measure");
            println!("| two tokio hubs (runtime idle too) | {cost:.2} |");
            a.close().await;
            b.close().await;
        });
    }
    {
        smol::block_on(async {
            let bus = bus("smol");
            let a = hsipc::smol::ProcessHub::builder("idle-a").bus(&bus).build().expect("hub a");
            let b = hsipc::smol::ProcessHub::builder("idle-b").bus(&bus).build().expect("hub b");
            b.serve("idle.ping", |()| async { Ok::<_, String>(()) }).await.expect("serve");
            a.wait_for_service("idle", Duration::from_secs(5)).await.expect("service");
            a.call::<_, ()>("idle.ping", &()).await.expect("call");
            smol::Timer::after(settle).await;
            let cost = smol::unblock(move || cpu_per_second(window)).await;
            println!("| two smol hubs | {cost:.2} |");
            a.close().await;
            b.close().await;
        });
    }
}
