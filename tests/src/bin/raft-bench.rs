//! Raft/API benchmark on 3 coordinator processes over loopback. Prints figures; asserts
//! nothing (speed is measured, not tested). Run via `tests/bench/raft.sh`.
//!
//! Measures: single-mutation throughput and latency (concurrent PUTs spread over all
//! members, so followers forward), batched throughput (bulk imports, one Raft entry per
//! batch), linearizable read latency on the leader and on a follower, and leader failover
//! time after SIGKILL (until a surviving member reports a new leader, and until a write
//! succeeds again).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use metalfleet_tests::Cluster;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Single-mutation requests.
    #[arg(long, default_value_t = 4000)]
    single: usize,
    /// Concurrent clients for single mutations.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Total records written in batches.
    #[arg(long, default_value_t = 100_000)]
    batched: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Linearizable reads per member measured.
    #[arg(long, default_value_t = 2000)]
    reads: usize,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let cluster = Arc::new(Cluster::start(3).await.context("start 3 coordinators")?);
    let leader = cluster.leader().await?;
    let follower = cluster
        .ids()
        .into_iter()
        .find(|i| *i != leader)
        .context("no follower")?;
    let admin = cluster.api(leader);
    admin
        .put("/v1/sites/s1", &json!({"name": "s1"}))
        .await?
        .ok()?;
    admin
        .put("/v1/racks/r1", &json!({"name": "r1", "site": "s1"}))
        .await?
        .ok()?;
    println!("cluster: 3 coordinators on loopback, leader {leader}");

    // Single mutations, spread round-robin over all members.
    let ids = cluster.ids();
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut tasks = Vec::with_capacity(args.single);
    for n in 0..args.single {
        let api = cluster.api(ids[n % ids.len()]);
        let permit = sem.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let t = Instant::now();
            let serial = format!("SINGLE-{n:06}");
            let r = api
                .put(
                    &format!("/v1/inventory/{serial}"),
                    &json!({"serial": serial, "site": "s1", "rack": "r1"}),
                )
                .await
                .and_then(|r| r.ok());
            r.map(|_| t.elapsed())
        }));
    }
    let mut lat = Vec::with_capacity(args.single);
    for t in tasks {
        lat.push(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "single mutations: {} in {:.2}s = {:.0}/s (concurrency {}), latency p50 {:.2} ms p99 {:.2} ms",
        args.single,
        secs,
        args.single as f64 / secs,
        args.concurrency,
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );

    // Batched mutations: bulk imports, 4 in flight.
    let batches = args.batched / args.batch_size;
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = Vec::new();
    for b in 0..batches {
        let api = cluster.api(ids[b % ids.len()]);
        let permit = sem.clone().acquire_owned().await?;
        let body: Vec<_> = (0..args.batch_size)
            .map(|i| json!({"serial": format!("BATCH-{b:05}-{i:05}"), "site": "s1", "rack": "r1", "model": "bench"}))
            .collect();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            api.post("/v1/inventory/import", &json!(body))
                .await
                .and_then(|r| r.ok())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "batched mutations: {} records in {} imports of {} in {:.2}s = {:.0}/s",
        batches * args.batch_size,
        batches,
        args.batch_size,
        secs,
        (batches * args.batch_size) as f64 / secs
    );

    // Linearizable reads (small object list), sequential, on the leader and a follower.
    for (who, id) in [("leader", leader), ("follower", follower)] {
        let api = cluster.api(id);
        let mut lat = Vec::with_capacity(args.reads);
        for _ in 0..args.reads {
            let t = Instant::now();
            api.get("/v1/racks").await?.ok()?;
            lat.push(t.elapsed());
        }
        lat.sort();
        println!(
            "linearizable read on {who}: p50 {:.2} ms p99 {:.2} ms ({} reads)",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            args.reads
        );
    }

    // Failover: SIGKILL the leader, time until a survivor reports another leader and until a
    // write through a survivor succeeds.
    let killed = cluster.leader().await?;
    let survivor = cluster
        .ids()
        .into_iter()
        .find(|i| *i != killed)
        .context("no survivor")?;
    let t = Instant::now();
    cluster.kill(killed)?;
    let mut elected = None;
    while t.elapsed() < Duration::from_secs(30) {
        if let Ok(s) = cluster.status(survivor).await {
            if s.leader.is_some_and(|l| l != killed) {
                elected = Some(t.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let api = cluster.api(survivor);
    api.put(
        "/v1/sites/after-failover",
        &json!({"name": "after-failover"}),
    )
    .await?
    .ok()?;
    let writable = t.elapsed();
    match elected {
        Some(e) => println!(
            "failover after SIGKILL of leader {killed}: new leader after {:.0} ms, first write acknowledged after {:.0} ms",
            e.as_secs_f64() * 1000.0,
            writable.as_secs_f64() * 1000.0
        ),
        None => println!("failover after SIGKILL of leader {killed}: no new leader within 30 s"),
    }
    println!("targets: >= 20000 mutations/s batched, linearizable read p99 < 5 ms, failover < 2 s");
    Ok(())
}
