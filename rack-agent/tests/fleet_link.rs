//! The fleet link against a small in-test coordinator speaking the wire protocol over real
//! QUIC with mutual TLS: handshake, snapshot and deltas stored before they are acknowledged,
//! queued events delivered and deleted once acknowledged, resynchronisation after a revision
//! mismatch, certificate renewal, and reconnection after a refusal.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use protocol::domain::BootTarget;
use protocol::error::{ErrorBody, ErrorCode};
use protocol::fleet::{AgentMsg, CoordinatorMsg, Delta, EventKind, RackDesiredState, RackNode};
use protocol::frame;
use protocol::json::JsonValue;
use protocol::Mac;
use rack_agent::agent::Agent;
use rack_agent::control::{self, Request};
use rack_agent::status::StatusView;
use rack_agent::store::Store;

/// One accepted fleet connection, seen from the coordinator's side.
struct Link {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Link {
    async fn accept(endpoint: &quinn::Endpoint) -> Link {
        let incoming = tokio::time::timeout(Duration::from_secs(15), endpoint.accept())
            .await
            .expect("the agent did not connect")
            .unwrap();
        let conn = incoming.await.unwrap();
        let identity = pki::quinn_peer_identity(&conn).unwrap();
        assert_eq!(identity, pki::Identity::Rack("ams1-r12".into()));
        let (send, recv) = conn.accept_bi().await.unwrap();
        Link { conn, send, recv }
    }

    async fn send(&mut self, msg: CoordinatorMsg) {
        let bytes = frame::encode(protocol::version::CURRENT, &msg).unwrap();
        self.send.write_all(&bytes).await.unwrap();
    }

    async fn recv(&mut self) -> AgentMsg {
        let read = async {
            let mut prefix = [0u8; 4];
            self.recv.read_exact(&mut prefix).await.unwrap();
            let mut body = vec![0u8; frame::parse_len(prefix).unwrap()];
            self.recv.read_exact(&mut body).await.unwrap();
            frame::decode_body::<AgentMsg>(&body).unwrap().body
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("no frame from the agent")
    }

    /// Reads frames until `want` matches one, skipping Status, Ping and RenewCertificate (the
    /// short test certificates are always due for renewal); any other frame fails the test.
    async fn expect<T>(&mut self, what: &str, mut want: impl FnMut(&AgentMsg) -> Option<T>) -> T {
        loop {
            let msg = self.recv().await;
            if let Some(v) = want(&msg) {
                return v;
            }
            assert!(
                matches!(
                    msg,
                    AgentMsg::Status { .. } | AgentMsg::Ping(_) | AgentMsg::RenewCertificate { .. }
                ),
                "waiting for {what}, got {msg:?}"
            );
        }
    }

    async fn welcome(&mut self, coordinators: Vec<String>) -> (u64, u64) {
        let hello = self.recv().await;
        let AgentMsg::Hello {
            offer,
            rack,
            last_revision,
            outbox_depth,
        } = hello
        else {
            panic!("expected Hello, got {hello:?}")
        };
        assert_eq!(rack.as_str(), "ams1-r12");
        assert!(offer.software.starts_with("rack-agent "), "{offer:?}");
        let version = protocol::version::negotiate(protocol::version::SUPPORTED, &offer).unwrap();
        self.send(CoordinatorMsg::Welcome {
            version,
            coordinator: 7,
            coordinators,
        })
        .await;
        (last_revision, outbox_depth)
    }
}

fn node(n: u8, revision: u64) -> RackNode {
    RackNode {
        id: format!("00000000-0000-0000-0000-0000000000{n:02x}")
            .parse()
            .unwrap(),
        serial: format!("SN-{n}").parse().unwrap(),
        macs: vec![Mac([0x52, 0x54, 0, 0, 0, n])],
        boot_target: BootTarget::Discovery,
        static_ips: vec![],
        switch_ports: vec![],
        bmc: Some(protocol::fleet::BmcAccess {
            address: format!("10.0.0.{n}"),
            driver: protocol::domain::BmcDriver::Ipmi,
            username: Some("admin".into()),
            password: Some("secret".into()),
        }),
        revision,
        power: None,
    }
}

async fn status(socket: &std::path::Path) -> StatusView {
    control::request(socket, &Request::Status)
        .await
        .unwrap()
        .status
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_link_end_to_end() {
    let ca = pki::CertAuthority::generate("test").unwrap();
    let server_leaf = ca
        .issue(&pki::Identity::Coordinator(7), &["127.0.0.1".to_owned()], 1)
        .unwrap();
    let server_config =
        pki::quinn_server_config(ca.cert_pem(), &server_leaf, pki::ALPN_FLEET).unwrap();
    let server =
        quinn::Endpoint::server(server_config, SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = server.local_addr().unwrap().to_string();

    let dir = tempfile::tempdir().unwrap();
    // A one-day certificate with renewal at 99% of its lifetime: renewal is due at once.
    let config = common::config(
        dir.path(),
        std::slice::from_ref(&addr),
        "renew_before_fraction = 0.99\n",
    );
    common::issue_identity(&config, &ca);
    let first_cert = std::fs::read_to_string(config.cert_path()).unwrap();
    let socket = config.control_socket.clone();

    // Three events observed while no agent ran.
    {
        let store = Store::open(&config.store_path()).unwrap();
        let events = rack_agent::cli::checkin_events(3, "EARLY").unwrap();
        assert_eq!(store.enqueue_many(events).unwrap(), [1, 2, 3]);
    }

    let agent = Agent::start(config.clone()).await.unwrap();

    // --- first connection ---
    let mut link = Link::accept(&server).await;
    let (last_revision, outbox_depth) = link.welcome(vec![addr.clone()]).await;
    assert_eq!((last_revision, outbox_depth), (0, 3));

    // The agent asks for renewal and sends the queued events, in some order.
    let mut csr = None;
    let mut sent = Vec::new();
    while csr.is_none() || sent.len() < 3 {
        match link.recv().await {
            AgentMsg::RenewCertificate { csr_pem } => csr = Some(csr_pem),
            AgentMsg::Events(events) => sent.extend(events.iter().map(|e| e.seq)),
            AgentMsg::Status { .. } | AgentMsg::Ping(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(sent, [1, 2, 3]);

    link.send(CoordinatorMsg::Snapshot(RackDesiredState {
        revision: 5,
        nodes: vec![node(1, 5)],
        ports: Vec::new(),
        runs: Vec::new(),
    }))
    .await;
    link.expect("AckRevision(5)", |m| {
        (*m == AgentMsg::AckRevision(5)).then_some(())
    })
    .await;

    link.send(CoordinatorMsg::AckEvents(3)).await;
    common::poll(5, "outbox emptied by the acknowledgement", || {
        let socket = socket.clone();
        async move { (status(&socket).await.outbox_depth == 0).then_some(()) }
    })
    .await;

    // An event emitted while connected goes out without waiting for a timer.
    let answer = control::request(
        &socket,
        &Request::Emit {
            events: vec![EventKind::CheckIn {
                serial: "LIVE-1".parse().unwrap(),
                macs: vec![],
                facts: JsonValue(serde_json::json!({"cpus": 4})),
            }],
        },
    )
    .await
    .unwrap();
    assert_eq!(answer.seqs.unwrap(), [4]);
    let live = link
        .expect("Events([4])", |m| match m {
            AgentMsg::Events(e) => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].seq, 4);

    let mut changed = node(1, 6);
    changed.boot_target = BootTarget::Local;
    link.send(CoordinatorMsg::Deltas {
        from: 5,
        to: 6,
        deltas: vec![
            Delta::UpsertNode(changed.clone()),
            Delta::UpsertNode(node(2, 6)),
        ],
    })
    .await;
    link.expect("AckRevision(6)", |m| {
        (*m == AgentMsg::AckRevision(6)).then_some(())
    })
    .await;

    // Renewal: sign the CSR, send the certificate; the agent installs it with its new key.
    let who = pki::Identity::Rack("ams1-r12".into());
    let renewed = ca.sign_csr(&csr.unwrap(), &who, &[], 1).unwrap();
    link.send(CoordinatorMsg::Certificate {
        cert_pem: renewed.clone(),
    })
    .await;
    common::poll(5, "renewed certificate on disk", || {
        let path = config.cert_path();
        let renewed = renewed.clone();
        async move { (std::fs::read_to_string(&path).ok()? == renewed).then_some(()) }
    })
    .await;
    assert_ne!(renewed, first_cert);
    rack_agent::identity::load(&config).unwrap(); // the new pair matches

    let view = status(&socket).await;
    assert!(view.connected);
    assert_eq!(view.coordinator, Some(7));
    assert_eq!(view.endpoint.as_deref(), Some(addr.as_str()));
    assert_eq!(view.revision, 6);
    assert_eq!(view.nodes, 2);
    assert_eq!(view.snapshots_received, Some(1));
    assert_eq!(view.deltas_received, Some(1));
    assert_eq!(view.connects, Some(1));
    assert_eq!(view.endpoints, [addr.as_str()]);

    let nodes = control::request(&socket, &Request::Nodes)
        .await
        .unwrap()
        .nodes
        .unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0].boot_target, BootTarget::Local);
    assert_eq!(
        nodes[0].bmc.as_ref().unwrap().password,
        None,
        "password leaked"
    );

    // Deltas that do not follow the stored revision: the agent hangs up and comes back
    // announcing its real revision; event 4, never acknowledged, is sent again.
    link.send(CoordinatorMsg::Deltas {
        from: 9,
        to: 10,
        deltas: vec![],
    })
    .await;
    let closed = tokio::time::timeout(Duration::from_secs(5), link.conn.closed())
        .await
        .unwrap();
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
        "{closed:?}"
    );

    // --- second connection ---
    let mut link = Link::accept(&server).await;
    let (last_revision, outbox_depth) = link.welcome(vec![]).await;
    assert_eq!((last_revision, outbox_depth), (6, 1));
    let resent = link
        .expect("Events([4]) again", |m| match m {
            AgentMsg::Events(e) => Some(e.iter().map(|e| e.seq).collect::<Vec<_>>()),
            _ => None,
        })
        .await;
    assert_eq!(resent, [4]);
    link.send(CoordinatorMsg::AckEvents(4)).await;

    // A refusal ends the connection; the agent reports it and tries again.
    link.send(CoordinatorMsg::Error(ErrorBody::new(
        ErrorCode::Forbidden,
        "rack ams1-r12 is revoked",
    )))
    .await;
    let mut link = Link::accept(&server).await;
    let (last_revision, outbox_depth) = link.welcome(vec![]).await;
    assert_eq!((last_revision, outbox_depth), (6, 0));
    let view = common::poll(5, "three connects", || {
        let socket = socket.clone();
        async move {
            let v = status(&socket).await;
            (v.connects == Some(3)).then_some(v)
        }
    })
    .await;
    assert!(view.connected);
    // An empty list in Welcome leaves the stored endpoints alone.
    assert_eq!(view.endpoints, [addr.as_str()]);

    // A lagging coordinator offers a snapshot older than what the agent holds: refused, the
    // agent hangs up and tries again with its revision unchanged.
    link.send(CoordinatorMsg::Snapshot(RackDesiredState {
        revision: 3,
        nodes: vec![],
        ports: Vec::new(),
        runs: Vec::new(),
    }))
    .await;
    let closed = tokio::time::timeout(Duration::from_secs(5), link.conn.closed())
        .await
        .unwrap();
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
        "{closed:?}"
    );
    let mut link = Link::accept(&server).await;
    let (last_revision, _) = link.welcome(vec![]).await;
    assert_eq!(last_revision, 6);
    assert_eq!(status(&socket).await.nodes, 2);

    agent.shutdown().await;
    let closed = tokio::time::timeout(Duration::from_secs(5), link.conn.closed())
        .await
        .unwrap();
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
        "{closed:?}"
    );

    let store = Store::open(&config.store_path()).unwrap();
    assert_eq!(store.revision().unwrap(), 6);
    assert_eq!(store.nodes().unwrap(), [changed, node(2, 6)]);
    assert_eq!(store.outbox_counters().unwrap().acked_seq, 4);
    assert_eq!(store.outbox_depth().unwrap(), 0);
}
