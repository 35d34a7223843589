//! Offline operation: an agent whose only coordinator is a dead address keeps serving its
//! control socket, queues events durably, and still has them after a restart.

#![allow(clippy::unwrap_used)]

mod common;

use protocol::error::ErrorCode;
use protocol::fleet::EventKind;
use rack_agent::agent::Agent;
use rack_agent::cli;
use rack_agent::control::{self, ControlError, Request};
use rack_agent::store::Store;

const DEAD: &str = "127.0.0.1:1";

async fn status(socket: &std::path::Path) -> rack_agent::status::StatusView {
    control::request(socket, &Request::Status)
        .await
        .unwrap()
        .status
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_round_trip_while_offline() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(dir.path(), &[DEAD.to_owned()], "");
    let ca = pki::CertAuthority::generate("test").unwrap();
    common::issue_identity(&config, &ca);
    let socket = config.control_socket.clone();

    let agent = Agent::start(config.clone()).await.unwrap();

    let view = status(&socket).await;
    assert!(view.agent_running);
    assert!(!view.connected);
    assert_eq!(view.rack, "ams1-r12");
    assert_eq!(view.revision, 0);
    assert_eq!(view.outbox_depth, 0);
    assert_eq!(view.configured_endpoints, [DEAD]);
    assert!(view.cert_not_after.is_some());

    let events = cli::checkin_events(25, "OFF").unwrap();
    let answer = control::request(&socket, &Request::Emit { events })
        .await
        .unwrap();
    assert_eq!(answer.seqs.unwrap(), (1..=25).collect::<Vec<u64>>());

    // A raw JSON line, as a shell script would send it.
    let raw = r#"{"op":"emit","events":[{"Power":{"node":"00000000-0000-0000-0000-000000000001","on":true}}]}"#;
    let request: Request = serde_json::from_str(raw).unwrap();
    let answer = control::request(&socket, &request).await.unwrap();
    assert_eq!(answer.seqs.unwrap(), [26]);

    let view = status(&socket).await;
    assert_eq!(view.outbox_depth, 26);
    assert_eq!(view.next_seq, 27);
    assert_eq!(view.last_acked_seq, 0);
    assert!(!view.connected);

    // The link keeps trying the dead endpoint and says why it fails.
    common::poll(15, "a link error in status", || {
        let socket = socket.clone();
        async move {
            let v = status(&socket).await;
            (v.endpoint.as_deref() == Some(DEAD) && v.last_error.is_some()).then_some(v)
        }
    })
    .await;

    let nodes = control::request(&socket, &Request::Nodes).await.unwrap();
    assert_eq!(nodes.nodes.unwrap(), []);

    // Requests the agent refuses come back as errors with a code, and the connection-level
    // protocol survives them.
    let err = control::request(
        &socket,
        &Request::Emit {
            events: vec![
                EventKind::Log {
                    node: "00000000-0000-0000-0000-000000000001".parse().unwrap(),
                    message: "x".repeat(2 * 1024 * 1024),
                };
                1
            ],
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ControlError::Refused(b) if b.code == ErrorCode::PayloadTooLarge),
        "{err}"
    );
    assert_eq!(status(&socket).await.outbox_depth, 26);

    agent.shutdown().await;
    assert!(!socket.exists(), "socket file left behind");
    assert!(matches!(
        control::request(&socket, &Request::Status).await,
        Err(ControlError::NotRunning { .. })
    ));

    // The stopped agent's view comes from the store and says so.
    let view = cli::status(&config).await.unwrap();
    assert!(!view.agent_running);
    assert_eq!(view.outbox_depth, 26);
    assert_eq!(view.connects, None);
    assert!(view.render(0).contains("(agent not running)"));

    // Emitting with no agent running goes straight to the store.
    let (seqs, source) = cli::emit(&config, cli::checkin_events(2, "LATE").unwrap())
        .await
        .unwrap();
    assert_eq!((seqs, source), (vec![27, 28], cli::Source::Store));

    {
        let store = Store::open(&config.store_path()).unwrap();
        let pending = store.pending(100).unwrap();
        assert_eq!(
            pending.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=28).collect::<Vec<u64>>()
        );
        let EventKind::CheckIn { serial, macs, .. } = &pending[0].kind else {
            panic!("{:?}", pending[0])
        };
        assert_eq!(serial.as_str(), "OFF-000001");
        assert_eq!(macs[0].to_string(), "52:54:00:00:00:01");
    }

    // A new agent over the same data continues the sequence.
    let agent = Agent::start(config.clone()).await.unwrap();
    assert_eq!(status(&socket).await.outbox_depth, 28);
    let answer = control::request(
        &socket,
        &Request::Emit {
            events: cli::checkin_events(1, "AGAIN").unwrap(),
        },
    )
    .await
    .unwrap();
    assert_eq!(answer.seqs.unwrap(), [29]);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unenrolled_agent_runs_and_a_second_agent_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(dir.path(), &[], "");
    let agent = Agent::start(config.clone()).await.unwrap();
    let socket = config.control_socket.clone();
    let view = common::poll(10, "the link error", || {
        let socket = socket.clone();
        async move {
            let v = status(&socket).await;
            v.last_error.is_some().then_some(v)
        }
    })
    .await;
    assert!(
        view.last_error
            .as_deref()
            .unwrap()
            .contains("no fleet endpoint known"),
        "{view:?}"
    );
    assert_eq!(view.cert_not_after, None);

    let second = Agent::start(config.clone()).await.unwrap_err();
    assert!(
        second.to_string().contains("is the agent running"),
        "{second}"
    );
    // The refused second agent must not have removed the first one's socket.
    assert!(status(&socket).await.agent_running);
    agent.shutdown().await;
}
