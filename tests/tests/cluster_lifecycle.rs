//! Cluster membership over the API with real processes: three voters, a member removed, a
//! SIGKILLed member that comes back on its own and catches up.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use coordinator::app::ClusterStatus;
use metalfleet_tests::{poll, Cluster};
use serde_json::json;

const CATCH_UP: Duration = Duration::from_secs(30);

fn voters(s: &ClusterStatus) -> Vec<u64> {
    s.members
        .iter()
        .filter(|m| m.kind == "voter")
        .map(|m| m.id)
        .collect()
}

/// Waits until member `id` has applied at least what the leader has applied right now.
async fn caught_up(c: &Cluster, id: u64) -> u64 {
    let leader = c.leader().await.unwrap();
    let target = c.status(leader).await.unwrap().last_applied;
    poll(
        CATCH_UP,
        &format!("member {id} to apply {target}"),
        || async {
            let s = c.status(id).await.ok()?;
            (s.last_applied >= target).then_some(s.last_applied)
        },
    )
    .await
    .unwrap()
}

/// Writes `n` sites through member `via`, retrying 5xx answers (with the same idempotency
/// key) like any client should while the cluster elects a leader.
async fn put_sites(c: &Cluster, via: u64, prefix: &str, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("{prefix}-{i}");
        let key = uuid::Uuid::new_v4().to_string();
        let body = json!({"name": name});
        poll(CATCH_UP, &format!("site {name} to be written"), || async {
            let r = c
                .api(via)
                .request(reqwest::Method::PUT, &format!("/v1/sites/{name}"))
                .header("Idempotency-Key", &key)
                .json(&body)
                .send()
                .await
                .ok()?;
            assert!(
                !r.status().is_client_error(),
                "PUT site {name}: {}",
                r.status()
            );
            r.status().is_success().then_some(())
        })
        .await
        .unwrap();
        names.push(name);
    }
    names
}

async fn stale_site_names(c: &Cluster, id: u64) -> Vec<String> {
    let sites = c
        .api(id)
        .get("/v1/sites?stale=true")
        .await
        .unwrap()
        .ok()
        .unwrap();
    sites
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_are_removed_and_killed_members_rejoin() {
    let t = std::time::Instant::now();
    let step = |what: &str| eprintln!("lifecycle: {:>6.1?}: {what}", t.elapsed());
    let c = Cluster::start(3).await.unwrap();
    step("three members up");
    for id in c.ids() {
        let s = c.status(id).await.unwrap();
        assert_eq!(voters(&s), vec![1, 2, 3], "as seen by {id}: {s:?}");
        assert_eq!(s.members.len(), 3);
        assert!(s.leader.is_some());
    }

    // A member that misses writes while dead catches up after a plain restart.
    c.kill(2).unwrap();
    step("killed 2");
    let written = put_sites(&c, 1, "while-2-down", 30).await;
    step("30 writes while 2 is down");
    c.restart(2).await.unwrap();
    step("restarted 2");
    let applied = caught_up(&c, 2).await;
    step("2 caught up");
    let on_2 = stale_site_names(&c, 2).await;
    for name in &written {
        assert!(on_2.contains(name), "member 2 lacks {name} at {applied}");
    }

    // Remove member 3: two voters remain, everywhere.
    let r = c.api(1).delete("/v1/cluster/members/3").await.unwrap();
    step("removed 3");
    let changed = r.ok().unwrap();
    let after: ClusterStatus = serde_json::from_value(changed["cluster"].clone()).unwrap();
    assert_eq!(voters(&after), vec![1, 2], "{changed}");
    for id in [1, 2] {
        let s = poll(CATCH_UP, "membership without 3", || async {
            let s = c.status(id).await.ok()?;
            (s.members.len() == 2).then_some(s)
        })
        .await
        .unwrap();
        assert_eq!(voters(&s), vec![1, 2], "as seen by {id}: {s:?}");
    }
    let audit = c
        .api(1)
        .get("/v1/audit?limit=100")
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "cluster.remove" && e["target"] == "3"),
        "{audit:#}"
    );
    // The removed coordinator is retired by its operator.
    c.kill(3).unwrap();
    let r = c.api(1).delete("/v1/cluster/members/3").await.unwrap();
    assert_eq!(r.status, reqwest::StatusCode::NOT_FOUND, "{}", r.body);

    // With two voters, a write needs both: after SIGKILL and restart, member 2 is back in
    // without any operator action, catches up, and writes commit again.
    put_sites(&c, 1, "before-kill", 5).await;
    c.kill(2).unwrap();
    c.restart(2).await.unwrap();
    step("killed and restarted 2");
    let written = put_sites(&c, 1, "after-restart", 5).await;
    step("5 writes after restart");
    let applied = caught_up(&c, 2).await;
    step("2 caught up");
    let s2 = c.status(2).await.unwrap();
    assert_eq!(voters(&s2), vec![1, 2], "{s2:?}");
    let on_2 = stale_site_names(&c, 2).await;
    for name in &written {
        assert!(on_2.contains(name), "member 2 lacks {name} at {applied}");
    }
    let converged = c.wait_converged(CATCH_UP).await.unwrap();
    assert!(converged >= applied);
}

/// A restarted follower should be back in step within a few heartbeats (100 ms each), and a
/// follower restart must not depose the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_follower_is_back_promptly_without_an_election() {
    let c = Cluster::start(3).await.unwrap();
    let leader = c.leader().await.unwrap();
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    put_sites(&c, leader, "before", 5).await;
    let term = c.status(leader).await.unwrap().term;

    c.kill(follower).unwrap();
    put_sites(&c, leader, "while-down", 10).await;
    let target = c.status(leader).await.unwrap().last_applied;
    c.restart(follower).await.unwrap();
    let restarted = std::time::Instant::now();
    poll(CATCH_UP, "the restarted follower to catch up", || async {
        let s = c.status(follower).await.ok()?;
        (s.last_applied >= target).then_some(())
    })
    .await
    .unwrap();
    let took = restarted.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "member {follower} took {took:.1?} to catch up after a restart"
    );
    let s = c.status(leader).await.unwrap();
    assert_eq!(
        (s.role.as_str(), s.term),
        ("Leader", term),
        "the follower's restart disturbed leader {leader}"
    );
}
