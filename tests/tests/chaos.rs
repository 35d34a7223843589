//! Acknowledged writes survive leader kills: thousands of idempotent inventory writes sent to
//! random coordinators while the leader is SIGKILLed and restarted, then every replica is
//! checked for every acknowledged write — present once, applied once.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use metalfleet_tests::{poll, Cluster, StatusCode};
use rand::seq::SliceRandom as _;
use serde_json::{json, Value};

/// Writes in the run.
const WRITES: usize = 2_000;
/// Writes in flight at once.
const CONCURRENCY: usize = 16;
/// How long one write may be retried before it counts as not acknowledged.
const WRITE_DEADLINE: Duration = Duration::from_secs(60);
/// Bound of one attempt (the server's own write deadline is 15 s).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between attempts of one write.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Bound of the wait for the survivors to elect a new leader.
const ELECTION_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a killed leader stays down when it is restarted before any election.
const QUICK_RESTART: Duration = Duration::from_secs(1);
/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Leader kills in the run, each triggered when this share of the writes is acknowledged.
const KILL_AT: [f64; 2] = [0.2, 0.55];

#[derive(Debug, Default)]
struct Stats {
    acked: AtomicUsize,
    /// Writes that needed more than one attempt.
    retried_writes: AtomicUsize,
    /// Attempts beyond the first, over all writes.
    retries: AtomicUsize,
}

#[derive(Debug)]
enum Outcome {
    Acked {
        serial: String,
        model: String,
        /// What the (possibly replayed) answer reported.
        report: Value,
    },
    NotAcked {
        serial: String,
        last_error: String,
    },
    Refused {
        serial: String,
        status: StatusCode,
        body: String,
    },
}

fn serial(n: usize) -> String {
    format!("SN-{n:05}")
}

async fn write_one(c: &Cluster, n: usize, stats: &Stats) -> Outcome {
    let serial = serial(n);
    let model = format!("m-{n}");
    let body = json!({"serial": serial, "site": "s1", "rack": "r1", "model": model});
    let key = uuid::Uuid::new_v4().to_string();
    let deadline = Instant::now() + WRITE_DEADLINE;
    let ids = c.ids();
    let mut last: Option<u64> = None;
    let mut attempts = 0usize;
    loop {
        let candidates: Vec<u64> = ids.iter().copied().filter(|i| Some(*i) != last).collect();
        let id = *candidates.choose(&mut rand::thread_rng()).unwrap();
        last = Some(id);
        attempts += 1;
        if attempts == 2 {
            stats.retried_writes.fetch_add(1, Ordering::Relaxed);
        }
        if attempts > 1 {
            stats.retries.fetch_add(1, Ordering::Relaxed);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let sent = c
            .client()
            .put(format!("{}/v1/inventory/{serial}", c.url(id)))
            .bearer_auth(c.admin_token())
            .header("Idempotency-Key", &key)
            .json(&body)
            .timeout(ATTEMPT_TIMEOUT.min(left))
            .send()
            .await;
        let last_error = match sent {
            Ok(r) if r.status().is_success() => {
                let report = r.json().await.unwrap_or(Value::Null);
                stats.acked.fetch_add(1, Ordering::Relaxed);
                return Outcome::Acked {
                    serial,
                    model,
                    report,
                };
            }
            Ok(r) if r.status().is_server_error() => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                format!("member {id}: HTTP {status}: {text}")
            }
            Ok(r) => {
                return Outcome::Refused {
                    serial,
                    status: r.status(),
                    body: r.text().await.unwrap_or_default(),
                }
            }
            Err(e) => format!("member {id}: {e:#}"),
        };
        if Instant::now() + RETRY_PAUSE >= deadline {
            return Outcome::NotAcked { serial, last_error };
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Kills the leader each time the acknowledged count passes a threshold and restarts it:
/// the first time once the survivors have elected a new leader (a real failover: with
/// openraft's leader lease an election takes about 2 s here), the second time after
/// [`QUICK_RESTART`], before anyone noticed (openraft restores a leader whose own vote is
/// committed as leader, so the old leader simply resumes). Returns the killed ids.
async fn chaos(c: &Cluster, stats: &Stats, finished: &AtomicUsize) -> Vec<u64> {
    let started = Instant::now();
    let mut killed = Vec::new();
    for (round, share) in KILL_AT.into_iter().enumerate() {
        let threshold = (WRITES as f64 * share) as usize;
        let reached = poll(WRITE_DEADLINE * 2, "writes to progress", || async {
            let acked = stats.acked.load(Ordering::Relaxed);
            if acked >= threshold {
                Some(true)
            } else if finished.load(Ordering::Relaxed) == WRITES {
                Some(false)
            } else {
                None
            }
        })
        .await
        .unwrap();
        if !reached {
            break;
        }
        let leader = c.leader().await.unwrap();
        eprintln!(
            "chaos: {:.1?}: killing leader {leader} at {} acknowledged",
            started.elapsed(),
            stats.acked.load(Ordering::Relaxed)
        );
        c.kill(leader).unwrap();
        killed.push(leader);
        if round == 0 {
            // Only running members are asked, so the answer is never the killed one.
            let new = poll(ELECTION_TIMEOUT, "survivors to elect a leader", || {
                c.leader_now()
            })
            .await
            .unwrap();
            eprintln!(
                "chaos: {:.1?}: {new} leads, {} acknowledged",
                started.elapsed(),
                stats.acked.load(Ordering::Relaxed)
            );
        } else {
            tokio::time::sleep(QUICK_RESTART).await;
        }
        c.restart(leader).await.unwrap();
        eprintln!(
            "chaos: {:.1?}: restarted {leader} at {} acknowledged",
            started.elapsed(),
            stats.acked.load(Ordering::Relaxed)
        );
    }
    killed
}

/// All audit entries of member `id`, from its own copy, newest first (pages of 10,000).
async fn audit_of(c: &Cluster, id: u64) -> Vec<Value> {
    let mut all = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let path = match before {
            Some(b) => format!("/v1/audit?limit=10000&stale=true&before={b}"),
            None => "/v1/audit?limit=10000&stale=true".to_owned(),
        };
        let page = c.api(id).get(&path).await.unwrap().ok().unwrap();
        let page = page.as_array().cloned().unwrap();
        let n = page.len();
        before = page
            .iter()
            .filter_map(|e| e["revision"].as_u64())
            .min()
            .or(before);
        all.extend(page);
        if n < 10_000 {
            return all;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_leader_kills() {
    let test_started = Instant::now();
    let c = Cluster::start(3).await.unwrap();
    println!("chaos: cluster of 3 up in {:.1?}", test_started.elapsed());
    let api = c.api(1);
    api.put("/v1/sites/s1", &json!({"name": "s1"}))
        .await
        .unwrap()
        .ok()
        .unwrap();
    api.put("/v1/racks/r1", &json!({"name": "r1", "site": "s1"}))
        .await
        .unwrap()
        .ok()
        .unwrap();

    let stats = Stats::default();
    let finished = AtomicUsize::new(0);
    let started = Instant::now();
    let writes = futures::stream::iter(0..WRITES)
        .map(|n| {
            let (c, stats, finished) = (&c, &stats, &finished);
            async move {
                let o = write_one(c, n, stats).await;
                finished.fetch_add(1, Ordering::Relaxed);
                o
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<Outcome>>();
    let progress = async {
        while finished.load(Ordering::Relaxed) < WRITES {
            tokio::time::sleep(PROGRESS_EVERY).await;
            eprintln!(
                "chaos: {:.1?}: {} acknowledged, {} retries",
                started.elapsed(),
                stats.acked.load(Ordering::Relaxed),
                stats.retries.load(Ordering::Relaxed)
            );
        }
    };
    let (outcomes, killed, ()) = tokio::join!(writes, chaos(&c, &stats, &finished), progress);
    let elapsed = started.elapsed();

    let mut acked = BTreeMap::new();
    let mut not_acked = Vec::new();
    let mut refused = Vec::new();
    let mut not_created = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Acked {
                serial,
                model,
                report,
            } => {
                // A replayed answer is the first one: it must report the record as created.
                let created = report["created"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|s| s.as_str() == Some(serial.as_str())));
                if !created {
                    not_created.push(format!("{serial}: {report}"));
                }
                acked.insert(serial, model);
            }
            Outcome::NotAcked { serial, last_error } => {
                not_acked.push(format!("{serial}: {last_error}"))
            }
            Outcome::Refused {
                serial,
                status,
                body,
            } => refused.push(format!("{serial}: {status}: {body}")),
        }
    }
    println!(
        "chaos: {} writes, {} acknowledged, {} not acknowledged within {WRITE_DEADLINE:?}, \
         {} refused; {} writes retried ({} retries in all); {} leader kills {killed:?}; \
         elapsed {elapsed:.1?} ({:.0} acknowledged writes/s)",
        WRITES,
        acked.len(),
        not_acked.len(),
        refused.len(),
        stats.retried_writes.load(Ordering::Relaxed),
        stats.retries.load(Ordering::Relaxed),
        killed.len(),
        acked.len() as f64 / elapsed.as_secs_f64(),
    );
    assert!(refused.is_empty(), "writes refused with 4xx: {refused:#?}");
    assert!(
        not_acked.is_empty(),
        "{} writes never acknowledged, e.g. {:#?}",
        not_acked.len(),
        &not_acked[..not_acked.len().min(10)]
    );
    assert_eq!(acked.len(), WRITES);
    assert_eq!(
        killed.len(),
        KILL_AT.len(),
        "the run ended before every kill"
    );
    assert!(
        not_created.is_empty(),
        "acknowledged answers that did not report the record as created (applied twice?): {:#?}",
        &not_created[..not_created.len().min(10)]
    );

    // Every member is up again (chaos restarts what it kills); let them converge.
    assert_eq!(c.running(), c.ids());
    let applied = c.wait_converged(Duration::from_secs(30)).await.unwrap();
    println!(
        "chaos: all members applied up to revision {applied} ({:.1?} after the last write)",
        started.elapsed() - elapsed
    );

    for id in c.ids() {
        let inv = c
            .api(id)
            .get("/v1/inventory?stale=true")
            .await
            .unwrap()
            .ok()
            .unwrap();
        let have: BTreeMap<String, Option<String>> = inv
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["serial"].as_str().unwrap().to_owned(),
                    r["model"].as_str().map(str::to_owned),
                )
            })
            .collect();
        let missing: Vec<&String> = acked
            .iter()
            .filter(|(s, m)| have.get(*s) != Some(&Some((*m).clone())))
            .map(|(s, _)| s)
            .collect();
        assert!(
            missing.is_empty(),
            "member {id} lacks {} acknowledged writes (or has another model), e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );

        let audit = audit_of(&c, id).await;
        let mut imports: BTreeMap<String, usize> = BTreeMap::new();
        for e in &audit {
            if e["action"] == "inventory.import" {
                *imports
                    .entry(e["target"].as_str().unwrap_or_default().to_owned())
                    .or_default() += 1;
            }
        }
        let twice: Vec<(&String, &usize)> = imports.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "member {id}: serials imported more than once: {:?}",
            &twice[..twice.len().min(10)]
        );
        let unaudited: Vec<&String> = acked
            .keys()
            .filter(|s| imports.get(*s) != Some(&1))
            .collect();
        assert!(
            unaudited.is_empty(),
            "member {id}: acknowledged serials without exactly one audit entry: {:?}",
            &unaudited[..unaudited.len().min(10)]
        );
        println!(
            "chaos: member {id}: {} inventory records, {} audit entries, {} imports, all once",
            have.len(),
            audit.len(),
            imports.len()
        );
    }
    println!("chaos: whole test {:.1?}", test_started.elapsed());
}
