//! The TFTP server against real clients (tftp-hpa, atftp, curl) and a raw UDP client that
//! misbehaves on purpose: content integrity (sha256), option negotiation, block-number
//! rollover, path confinement, generated and iPXE files, concurrency, retransmission,
//! transfer IDs, malformed input and the transfer limit.

#![allow(clippy::unwrap_used)]

mod tftp_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rack_agent::boot::tftp::packet;
use rack_agent::boot::GeneratedFiles;
use tftp_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_fetches_octet_and_netascii() {
    let s = start(|_| {}, None).await;
    let data = pattern(200_000, 1);
    s.put("pxelinux.0", &data);
    let text = b"line one\nline two\r\nbare\rcr\n\nend".to_vec();
    s.put("boot/notes.txt", &text);

    // A leading slash is root-relative, as PXE clients send it.
    let out = s.out("pxelinux.0");
    let o = tftp_hpa_get(s.addr, "binary", "/pxelinux.0", &out).await;
    assert!(o.status.success(), "{}", text_of(&o));
    assert_eq!(sha256_file(&out), sha256(&data), "{}", text_of(&o));

    // netascii: the client turns CR LF back into LF and CR NUL into CR.
    let out = s.out("notes.txt");
    let o = tftp_hpa_get(s.addr, "ascii", "boot/notes.txt", &out).await;
    assert_eq!(std::fs::read(&out).unwrap(), text, "{}", text_of(&o));
    // The server counts a transfer when the final ACK arrives, just after the client exits.
    poll("two transfers counted ok", || {
        s.metric("metalfleet_tftp_requests_total{result=\"ok\"}") == 2
    })
    .await;
    s.stop().await;
}

fn text_of(o: &std::process::Output) -> String {
    text(o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_negotiates_blksize_tsize_windowsize() {
    let s = start(|_| {}, None).await;
    let data = pattern(3 * 1024 * 1024 + 7, 2);
    s.put("kernel", &data);
    // atftp 0.8 sends RFC 7440 windowsize (see `atftp --help`: "windowsize: enabled").
    let out = s.out("kernel");
    let o = atftp_get(
        s.addr,
        "kernel",
        &out,
        &["blksize 1428", "tsize 0", "windowsize 16"],
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(sha256_file(&out), sha256(&data));
    // 1428-byte blocks were used: about len/1428 blocks, far fewer than len/512.
    let blocks = s.metric("metalfleet_tftp_blocks_sent_total");
    let min = data.len() as u64 / 1428 + 1;
    assert!(
        blocks >= min && blocks < min + 200,
        "blocks sent {blocks}, expected ~{min}"
    );
    // atftp's trace shows the OACK it got and one ACK per 16-block window.
    let out = s.out("kernel-traced");
    let o = atftp_get(
        s.addr,
        "kernel",
        &out,
        &["blksize 1428", "tsize 0", "windowsize 16"],
        &["--trace"],
    )
    .await;
    let trace = text(&o);
    assert_eq!(sha256_file(&out), sha256(&data));
    let oack = trace
        .lines()
        .find(|l| l.starts_with("received OACK"))
        .unwrap_or_else(|| panic!("no OACK in trace: {trace}"));
    for want in [
        format!("tsize: {}", data.len()),
        "windowsize: 16".into(),
        "blksize: 1428".into(),
    ] {
        assert!(oack.contains(&want), "{oack} lacks {want}");
    }
    let acks = trace.lines().filter(|l| l.starts_with("sent ACK")).count() as u64;
    assert!(
        acks <= min / 16 + 5,
        "{acks} ACKs for {min} blocks: windowsize 16 not in effect"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_with_blksize() {
    let s = start(|_| {}, None).await;
    let data = pattern(1_000_000, 3);
    s.put("images/initrd.img", &data);
    let out = s.out("initrd");
    let o = curl_get(s.addr, "images/initrd.img", &out, 1428).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(sha256_file(&out), sha256(&data));
    // A file of exactly N blocks ends with an empty block.
    let exact = pattern(1428 * 10, 4);
    s.put("exact", &exact);
    let out = s.out("exact");
    let o = curl_get(s.addr, "exact", &out, 1428).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(sha256_file(&out), sha256(&exact));
    // An empty file is one empty block.
    s.put("empty", b"");
    let out = s.out("empty");
    let o = tftp_hpa_get(s.addr, "binary", "empty", &out).await;
    assert!(text(&o).is_empty(), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap().len(), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_numbers_roll_over_past_65535() {
    let s = start(|_| {}, None).await;
    // blksize 8: 65,536 blocks are only 512 KiB.
    let data = pattern(8 * 70_000 + 3, 5);
    s.put("big", &data);
    let mut c = Raw::new(s.addr).await;
    c.rrq("big", &[("blksize", "8"), ("windowsize", "32")])
        .await;
    let Got::Oack(opts) = c.recv().await else {
        panic!("expected OACK")
    };
    assert!(opts.contains(&("blksize".to_owned(), "8".to_owned())));
    assert!(opts.contains(&("windowsize".to_owned(), "32".to_owned())));
    c.ack(0).await;
    let first = c.recv().await;
    let (got, blocks) = c.finish(first, 8, 32).await;
    assert_eq!(sha256(&got), sha256(&data));
    assert_eq!(blocks.len(), 70_001);
    assert_eq!(blocks[65_534], 65_535);
    assert_eq!(blocks[65_535], 0, "block 65536 goes out as 0");
    assert_eq!(blocks[65_536], 1);
    poll("transfer counted ok", || {
        s.metric("metalfleet_tftp_requests_total{result=\"ok\"}") == 1
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_and_symlink_escape_are_refused() {
    let s = start(|_| {}, None).await;
    let secret = s.dir.path().join("secret");
    std::fs::write(&secret, b"outside the root").unwrap();
    std::os::unix::fs::symlink(&secret, s.root.join("escape")).unwrap();
    std::os::unix::fs::symlink("/etc", s.root.join("etc")).unwrap();
    std::fs::create_dir_all(s.root.join("somedir")).unwrap();

    for (i, name) in [
        "../etc/passwd",
        "/../../etc/passwd",
        "escape",
        "etc/passwd",
        "a\\..\\b",
    ]
    .iter()
    .enumerate()
    {
        let out = s.out(&format!("t{i}"));
        let o = tftp_hpa_get(s.addr, "binary", name, &out).await;
        assert!(
            text(&o).contains("Error code 2"),
            "{name}: client should report an access violation, got {:?}",
            text(&o)
        );
        assert_eq!(std::fs::read(&out).unwrap_or_default().len(), 0);
    }
    // atftp and curl report the refusal too.
    let out = s.out("a");
    let o = atftp_get(s.addr, "escape", &out, &["blksize 1428"], &[]).await;
    assert!(!o.status.success());
    assert!(text(&o).contains("Access violation"), "{}", text(&o));
    let o = curl_get(s.addr, "escape", &s.out("c"), 1428).await;
    assert!(!o.status.success(), "{}", text(&o));

    let o = tftp_hpa_get(s.addr, "binary", "missing", &s.out("m")).await;
    assert!(text(&o).contains("Error code 1"), "{}", text(&o));
    let o = tftp_hpa_get(s.addr, "binary", "somedir", &s.out("d")).await;
    assert!(text(&o).contains("Error code 2"), "{}", text(&o));

    assert_eq!(
        s.metric("metalfleet_tftp_refused_paths_total{reason=\"traversal\"}"),
        2
    );
    assert_eq!(
        s.metric("metalfleet_tftp_refused_paths_total{reason=\"escape\"}"),
        4
    );
    assert_eq!(
        s.metric("metalfleet_tftp_refused_paths_total{reason=\"bad_character\"}"),
        1
    );
    assert_eq!(
        s.metric("metalfleet_tftp_refused_paths_total{reason=\"not_regular\"}"),
        1
    );
    poll("not-found counted", || {
        s.metric("metalfleet_tftp_requests_total{result=\"not_found\"}") == 1
    })
    .await;
    s.stop().await;
}

/// Per-node file: content depends on the asking peer.
struct NodeFiles;

impl GeneratedFiles for NodeFiles {
    fn generate(&self, path: &str, peer: SocketAddr) -> Option<Vec<u8>> {
        (path == "pxelinux.cfg/default")
            .then(|| format!("DEFAULT node\n# for {}\n", peer.ip()).into_bytes())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_files_and_ipxe_binaries_are_served() {
    let s = start(|_| {}, Some(Arc::new(NodeFiles))).await;
    // The root has a file of the same name: generated content wins.
    s.put("pxelinux.cfg/default", b"static");
    let out = s.out("default");
    let o = curl_get(s.addr, "pxelinux.cfg/default", &out, 1428).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "DEFAULT node\n# for 127.0.0.1\n"
    );

    let undi = pattern(70_000, 6);
    std::fs::write(s.ipxe_dir.join("undionly.kpxe"), &undi).unwrap();
    std::fs::write(s.ipxe_dir.join("snponly.efi"), b"snp").unwrap();
    std::fs::write(s.ipxe_dir.join("secret.rom"), b"not by name").unwrap();
    let out = s.out("undionly.kpxe");
    let o = tftp_hpa_get(s.addr, "binary", "/undionly.kpxe", &out).await;
    assert!(o.status.success());
    assert_eq!(sha256_file(&out), sha256(&undi), "{}", text(&o));
    let out = s.out("snponly.efi");
    let o = atftp_get(
        s.addr,
        "snponly.efi",
        &out,
        &["blksize 1428", "tsize 0"],
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), b"snp");
    // Other files in the iPXE directory are not reachable.
    let o = tftp_hpa_get(s.addr, "binary", "secret.rom", &s.out("x")).await;
    assert!(text(&o).contains("Error code 1"), "{}", text(&o));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_fetches_succeed() {
    let s = start(|_| {}, None).await;
    let files: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("f{i}"), pattern(1024 * 1024, 10 + i)))
        .collect();
    for (n, d) in &files {
        s.put(n, d);
    }
    let mut jobs = Vec::new();
    for i in 0..50usize {
        let (name, data) = files[i % files.len()].clone();
        let out = s.out(&format!("c{i}"));
        let addr = s.addr;
        jobs.push(tokio::spawn(async move {
            let o = if i % 2 == 0 {
                curl_get(addr, &name, &out, 1428).await
            } else {
                atftp_get(addr, &name, &out, &["blksize 1428", "tsize 0"], &[]).await
            };
            assert!(o.status.success(), "fetch {i}: {}", text(&o));
            assert_eq!(sha256_file(&out), sha256(&data), "fetch {i}");
        }));
    }
    for j in jobs {
        j.await.unwrap();
    }
    poll("fifty transfers counted ok", || {
        s.metric("metalfleet_tftp_requests_total{result=\"ok\"}") == 50
    })
    .await;
    poll("active transfers to drain", || {
        s.metric("metalfleet_tftp_active_transfers") == 0
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_ack_gets_the_block_retransmitted() {
    let s = start(|c| c.timeout = Duration::from_millis(200), None).await;
    let data = pattern(1500, 7);
    s.put("f", &data);
    let mut c = Raw::new(s.addr).await;
    c.rrq("f", &[]).await;
    let first = c.recv().await;
    let Got::Data(1, ref block) = first else {
        panic!("expected DATA 1, got {first:?}")
    };
    assert_eq!(block.len(), 512);
    // No ACK: the same block comes again after the timeout.
    let again = c.recv().await;
    assert_eq!(again, first);
    poll("retransmission counted", || {
        s.metric("metalfleet_tftp_blocks_retransmitted_total") >= 1
    })
    .await;
    assert!(s.metric("metalfleet_tftp_timeouts_total") >= 1);
    let (got, _) = c.finish(again, 512, 1).await;
    assert_eq!(got, data);
    poll("transfer counted ok", || {
        s.metric("metalfleet_tftp_requests_total{result=\"ok\"}") == 1
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_abandoned_after_retries() {
    let s = start(
        |c| {
            c.timeout = Duration::from_millis(50);
            c.retries = 2;
        },
        None,
    )
    .await;
    s.put("f", &pattern(5000, 8));
    let mut c = Raw::new(s.addr).await;
    c.rrq("f", &[]).await;
    for _ in 0..3 {
        assert!(matches!(c.recv().await, Got::Data(1, _)));
    }
    poll("transfer to time out", || {
        s.metric("metalfleet_tftp_requests_total{result=\"timed_out\"}") == 1
    })
    .await;
    assert_eq!(s.metric("metalfleet_tftp_active_transfers"), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowsize_sends_a_window_and_resends_after_a_partial_ack() {
    let s = start(|_| {}, None).await;
    let data = pattern(1428 * 40 + 5, 9);
    s.put("f", &data);
    let mut c = Raw::new(s.addr).await;
    c.rrq(
        "f",
        &[("blksize", "1428"), ("windowsize", "16"), ("tsize", "0")],
    )
    .await;
    let Got::Oack(opts) = c.recv().await else {
        panic!("expected OACK")
    };
    assert!(opts.contains(&("tsize".to_owned(), data.len().to_string())));
    c.ack(0).await;
    // Sixteen blocks without an ACK.
    for b in 1..=16u16 {
        assert!(matches!(c.recv().await, Got::Data(n, _) if n == b));
    }
    // Pretend 6.. were lost: the server resends from 6.
    c.ack(5).await;
    let next = c.recv().await;
    assert!(matches!(next, Got::Data(6, _)), "got {next:?}");
    // Finish (the helper acknowledges every 16 blocks starting from here).
    let mut rest = data[..1428 * 5].to_vec();
    let (tail, _) = finish_from(&mut c, next, 6).await;
    rest.extend_from_slice(&tail);
    assert_eq!(sha256(&rest), sha256(&data));
    assert!(s.metric("metalfleet_tftp_blocks_retransmitted_total") >= 11);
    s.stop().await;
}

/// Like `Raw::finish` but starting at block `from`.
async fn finish_from(c: &mut Raw, first: Got, from: u16) -> (Vec<u8>, u16) {
    let mut data = Vec::new();
    let mut expect = from;
    let mut next = Some(first);
    let mut n = 0;
    loop {
        let got = match next.take() {
            Some(g) => g,
            None => c.recv().await,
        };
        let Got::Data(b, bytes) = got else {
            panic!("unexpected {got:?}")
        };
        if b != expect {
            continue;
        }
        data.extend_from_slice(&bytes);
        n += 1;
        let last = bytes.len() < 1428;
        if last || n % 16 == 0 {
            c.ack(b).await;
        }
        if last {
            return (data, b);
        }
        expect += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tid_gets_error_5_and_the_transfer_goes_on() {
    let s = start(|_| {}, None).await;
    let data = pattern(2000, 11);
    s.put("f", &data);
    let mut c = Raw::new(s.addr).await;
    c.rrq("f", &[]).await;
    let first = c.recv().await;
    let tid = c.tid.unwrap();
    assert_ne!(tid.port(), s.addr.port(), "each transfer has its own port");
    let mut intruder = Raw::new(s.addr).await;
    intruder.tid = Some(tid);
    intruder.ack(1).await;
    let got = intruder.recv().await;
    assert!(matches!(got, Got::Error(5, _)), "got {got:?}");
    let (bytes, _) = c.finish(first, 512, 1).await;
    assert_eq!(bytes, data);
    assert_eq!(s.metric("metalfleet_tftp_unknown_tid_total"), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_8_to_the_oack_ends_the_transfer() {
    let s = start(|_| {}, None).await;
    s.put("f", &pattern(3000, 12));
    let mut c = Raw::new(s.addr).await;
    c.rrq("f", &[("tsize", "0"), ("bogus", "1")]).await;
    let got = c.recv().await;
    assert_eq!(got, Got::Oack(vec![("tsize".into(), "3000".into())]));
    let tid = c.tid.unwrap();
    c.socket
        .send_to(
            &packet::encode_error(packet::ErrorCode::OptionRefused, "no thanks"),
            tid,
        )
        .await
        .unwrap();
    poll("transfer to end", || {
        s.metric("metalfleet_tftp_requests_total{result=\"client_error\"}") == 1
            && s.metric("metalfleet_tftp_active_transfers") == 0
    })
    .await;
    // Without options there is no OACK: DATA 1 comes straight away.
    let mut c = Raw::new(s.addr).await;
    c.rrq("f", &[("bogus", "1")]).await;
    assert!(matches!(c.recv().await, Got::Data(1, _)));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_counted_and_the_server_keeps_serving() {
    let s = start(|_| {}, None).await;
    let data = pattern(10_000, 13);
    s.put("f", &data);
    let mut c = Raw::new(s.addr).await;
    for g in [
        &b""[..],
        b"\x07",
        b"\x00\x01no-terminator",
        b"\x00\x01\xff\xfe\x00octet\x00",
        b"\x00\x01f\x00octet\x00blksize\x00",
        b"\x00\x04\x00\x01",
        b"\x00\x03\x00\x01data",
    ] {
        c.send_listen(g).await;
    }
    // Unknown opcode → ERROR 4; WRQ → ERROR 2.
    c.send_listen(b"\x00\x63junk").await;
    assert!(matches!(c.recv().await, Got::Error(4, _)));
    let o = tftp_put(s.addr, &s.out("x")).await;
    assert!(text(&o).contains("Error code 2"), "{}", text(&o));
    poll("malformed datagrams counted", || {
        let m = s.metrics();
        metric(&m, "metalfleet_tftp_malformed_total{reason=\"short\"}") == 2
            && metric(
                &m,
                "metalfleet_tftp_malformed_total{reason=\"unterminated\"}",
            ) == 1
            && metric(&m, "metalfleet_tftp_malformed_total{reason=\"bad_string\"}") == 1
            && metric(
                &m,
                "metalfleet_tftp_malformed_total{reason=\"odd_options\"}",
            ) == 1
            && metric(
                &m,
                "metalfleet_tftp_malformed_total{reason=\"unexpected_opcode\"}",
            ) == 2
            && metric(
                &m,
                "metalfleet_tftp_malformed_total{reason=\"unknown_opcode\"}",
            ) == 1
            && metric(
                &m,
                "metalfleet_tftp_requests_total{result=\"write_refused\"}",
            ) == 1
    })
    .await;
    let out = s.out("f");
    let o = tftp_hpa_get(s.addr, "binary", "f", &out).await;
    assert_eq!(sha256_file(&out), sha256(&data), "{}", text(&o));
    s.stop().await;
}

async fn tftp_put(addr: SocketAddr, local: &std::path::Path) -> std::process::Output {
    need("tftp", "tftp-hpa");
    std::fs::write(local, b"upload").unwrap();
    run(tokio::process::Command::new("tftp")
        .args([
            &addr.ip().to_string(),
            &addr.port().to_string(),
            "-c",
            "put",
        ])
        .arg(local)
        .arg("uploaded"))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_max_transfers_get_server_busy() {
    let s = start(|c| c.max_transfers = 1, None).await;
    let data = pattern(3000, 14);
    s.put("f", &data);
    let mut holder = Raw::new(s.addr).await;
    holder.rrq("f", &[]).await;
    let first = holder.recv().await;
    let o = tftp_hpa_get(s.addr, "binary", "f", &s.out("busy")).await;
    assert!(text(&o).contains("server busy"), "{}", text(&o));
    assert_eq!(
        s.metric("metalfleet_tftp_requests_total{result=\"busy\"}"),
        1
    );
    // A retransmitted RRQ from the holder is not a second transfer.
    holder.rrq("f", &[]).await;
    poll("duplicate RRQ counted", || {
        s.metric("metalfleet_tftp_malformed_total{reason=\"duplicate_request\"}") == 1
    })
    .await;
    let (got, _) = holder.finish(first, 512, 1).await;
    assert_eq!(got, data);
    poll("slot released", || {
        s.metric("metalfleet_tftp_active_transfers") == 0
    })
    .await;
    let out = s.out("after");
    tftp_hpa_get(s.addr, "binary", "f", &out).await;
    assert_eq!(sha256_file(&out), sha256(&data));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_fails_on_a_port_in_use() {
    let s = start(|_| {}, None).await;
    let dir = tempfile::tempdir().unwrap();
    let deps = s.deps.clone();
    let config = rack_agent::boot::tftp::TftpConfig::with_defaults(s.addr, dir.path());
    let err = rack_agent::boot::tftp::TftpServer::bind(&config, &deps)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&s.addr.to_string()), "{err}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_in_flight_transfers_within_a_bound() {
    // A long timeout: the transfer neither retransmits nor gives up on its own meanwhile.
    let s = start(|c| c.timeout = Duration::from_secs(60), None).await;
    s.put("f", &pattern(5000, 15));
    let mut c = Raw::new(s.addr).await;
    c.rrq("f", &[]).await;
    assert!(matches!(c.recv().await, Got::Data(1, _)));
    poll("transfer active", || {
        s.metric("metalfleet_tftp_active_transfers") == 1
    })
    .await;
    let deps = s.deps.clone();
    // `stop` waits for `run` to return: after the grace period the transfer is stopped.
    s.stop().await;
    let got = c.recv().await;
    assert_eq!(got, Got::Error(0, "server shutting down".into()));
    let m = deps.metrics.render();
    assert_eq!(
        metric(&m, "metalfleet_tftp_requests_total{result=\"shutdown\"}"),
        1
    );
    assert_eq!(metric(&m, "metalfleet_tftp_active_transfers"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_files_are_reread_and_large_files_streamed() {
    let s = start(|c| c.cache_bytes = 1 << 20, None).await;
    let v1 = pattern(100_000, 16);
    s.put("a", &v1);
    let out = s.out("a1");
    curl_get(s.addr, "a", &out, 1428).await;
    assert_eq!(sha256_file(&out), sha256(&v1));
    let out = s.out("a2");
    curl_get(s.addr, "a", &out, 1428).await;
    assert_eq!(sha256_file(&out), sha256(&v1));
    assert_eq!(s.metric("metalfleet_tftp_cache_hits_total"), 1);
    // A new version (other length) is not served from the cache.
    let v2 = pattern(120_000, 17);
    s.put("a", &v2);
    let out = s.out("a3");
    curl_get(s.addr, "a", &out, 1428).await;
    assert_eq!(sha256_file(&out), sha256(&v2));
    // Larger than the cache: streamed from disk in chunks, with a window.
    let big = pattern(3 * 1024 * 1024 + 99, 18);
    s.put("big", &big);
    let out = s.out("big");
    let o = atftp_get(s.addr, "big", &out, &["blksize 1428", "windowsize 8"], &[]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(sha256_file(&out), sha256(&big));
    assert_eq!(s.metric("metalfleet_tftp_cache_hits_total"), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_request_from_the_same_port_replaces_the_running_transfer() {
    let s = start(|_| {}, None).await;
    let data = pattern(50_000, 19);
    s.put("undionly.kpxe", &data);
    // A PXE ROM asks for the size alone, then (same port, no ERROR) for the file with blksize.
    let mut c = Raw::new(s.addr).await;
    c.rrq("undionly.kpxe", &[("tsize", "0")]).await;
    assert_eq!(
        c.recv().await,
        Got::Oack(vec![("tsize".into(), "50000".into())])
    );
    let old = c.tid.take().unwrap();
    c.rrq("undionly.kpxe", &[("blksize", "1428"), ("tsize", "0")])
        .await;
    let oack = loop {
        let got = c.recv().await;
        if c.tid == Some(old) {
            // A retransmission from the old transfer before it was stopped.
            c.tid = None;
            continue;
        }
        break got;
    };
    assert_eq!(
        oack,
        Got::Oack(vec![
            ("blksize".into(), "1428".into()),
            ("tsize".into(), "50000".into())
        ])
    );
    c.ack(0).await;
    let first = c.recv().await;
    let (got, _) = c.finish(first, 1428, 1).await;
    assert_eq!(got, data);
    poll("old transfer superseded, new one ok", || {
        s.metric("metalfleet_tftp_requests_total{result=\"superseded\"}") == 1
            && s.metric("metalfleet_tftp_requests_total{result=\"ok\"}") == 1
            && s.metric("metalfleet_tftp_active_transfers") == 0
    })
    .await;
    s.stop().await;
}
