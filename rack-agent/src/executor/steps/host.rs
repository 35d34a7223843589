//! Steps the agent's host does for a node: `http.call` (a webhook; the JSON answer may be
//! merged into the node's facts) and `ansible.run` (`ansible-playbook` against the node with
//! a generated one-host inventory; output streamed into the step log).

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use protocol::workflow::{AnsibleRun, HttpCall, HttpMethod};

use super::{StepCtx, StepErr, StepOk};

/// Most bytes of a webhook answer kept for facts and messages.
const MAX_HTTP_ANSWER: usize = 1 << 20;

/// `http.call`.
pub(crate) async fn http_call(ctx: &StepCtx, p: &HttpCall) -> Result<StepOk, StepErr> {
    let method = match p.method {
        HttpMethod::Get => reqwest::Method::GET,
        HttpMethod::Post => reqwest::Method::POST,
        HttpMethod::Put => reqwest::Method::PUT,
        HttpMethod::Patch => reqwest::Method::PATCH,
        HttpMethod::Delete => reqwest::Method::DELETE,
    };
    let mut req = ctx
        .sh
        .http
        .request(method, &p.url)
        .timeout(ctx.left().max(std::time::Duration::from_millis(1)));
    for (k, v) in &p.headers {
        req = req.header(k, v);
    }
    if let Some(body) = &p.body {
        let text = ctx.render("body", body)?;
        if !p
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("content-type"))
        {
            req = req.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        req = req.body(text);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| StepErr::failed(format!("{}: {}", p.url, crate::error_chain(&e))))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| StepErr::failed(format!("{}: {}", p.url, crate::error_chain(&e))))?;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_HTTP_ANSWER)]).into_owned();
    let ok = if p.expect_status.is_empty() {
        (200..300).contains(&status)
    } else {
        p.expect_status.contains(&status)
    };
    ctx.log(format!("{} answered {status}", p.url));
    if !ok {
        let excerpt: String = text.chars().take(300).collect();
        return Err(StepErr::failed(format!(
            "{} answered {status}: {excerpt}",
            p.url
        )));
    }
    if let Some(key) = &p.facts_key {
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            StepErr::failed(format!("{} answered {status} but not JSON: {e}", p.url))
        })?;
        ctx.put_fact(key, v, true)?;
    }
    Ok(StepOk::msg(format!("{} answered {status}", p.url)))
}

/// The address Ansible reaches the node at: the pinned one, else the inventory's first
/// static address that is not the BMC's, else the current lease.
fn node_address(ctx: &StepCtx) -> Result<String, StepErr> {
    if let Some(pin) = ctx.sh.overrides.read().ok().and_then(|o| {
        o.get(&ctx.node)
            .and_then(|o| o.dhcp.as_ref().map(|d| d.address))
    }) {
        return Ok(pin.to_string());
    }
    let node = ctx.rack_node()?;
    if let Some(s) = node.static_ips.iter().find(|s| s.interface != "bmc") {
        return Ok(s.address.to_string());
    }
    ctx.facts()?
        .pointer("/lease/ip")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            StepErr::failed("no address for the node: no pin, no static address, no lease")
        })
}

/// `ansible.run`.
pub(crate) async fn ansible_run(ctx: &StepCtx, p: &AnsibleRun) -> Result<StepOk, StepErr> {
    let node = ctx.rack_node()?;
    let address = node_address(ctx)?;
    let dir = ctx
        .sh
        .config
        .data_dir
        .join("ansible")
        .join(&ctx.run_id)
        .join(ctx.index.to_string());
    std::fs::create_dir_all(&dir)
        .map_err(|e| StepErr::failed(format!("creating {}: {e}", dir.display())))?;
    let key = p
        .private_key
        .as_ref()
        .map(PathBuf::from)
        .or_else(|| ctx.sh.config.ansible_private_key.clone());
    let mut host = format!(
        "{} ansible_host={address} ansible_user={}",
        node.serial, p.user
    );
    if let Some(k) = &key {
        host.push_str(&format!(" ansible_ssh_private_key_file={}", k.display()));
    }
    let inventory = format!("[{}]\n{host}\n", p.group);
    let inv_path = dir.join("inventory.ini");
    std::fs::write(&inv_path, inventory)
        .map_err(|e| StepErr::failed(format!("writing {}: {e}", inv_path.display())))?;
    let vars: serde_json::Map<String, Value> = p
        .extra_vars
        .iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    let vars_path = dir.join("extra-vars.json");
    std::fs::write(&vars_path, Value::Object(vars).to_string())
        .map_err(|e| StepErr::failed(format!("writing {}: {e}", vars_path.display())))?;
    let playbook = {
        let pb = PathBuf::from(&p.playbook);
        if pb.is_relative() {
            ctx.sh.config.playbook_dir.join(pb)
        } else {
            pb
        }
    };
    ctx.log(format!(
        "{} -i {} {} (host {address})",
        p.ansible_playbook,
        inv_path.display(),
        playbook.display()
    ));
    let mut child = tokio::process::Command::new(&p.ansible_playbook)
        .arg("-i")
        .arg(&inv_path)
        .arg("-e")
        .arg(format!("@{}", vars_path.display()))
        .arg(&playbook)
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_FORCE_COLOR", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .map_err(|e| StepErr::failed(format!("cannot run {}: {e}", p.ansible_playbook)))?;
    // A cancelled or timed-out attempt takes the playbook's forked workers with it.
    let mut group = KillGroup(child.id());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send(l);
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send(l);
            }
        });
    }
    drop(tx);
    let mut tail: Vec<String> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(l) = rx.try_recv() {
            batch.push(l);
        }
        tail.extend(batch.iter().filter(|l| !l.trim().is_empty()).cloned());
        let cut = tail.len().saturating_sub(5);
        tail.drain(..cut);
        if let Err(e) =
            crate::executor::observe::append_step_lines(&ctx.sh, &ctx.run_id, ctx.index, batch)
        {
            tracing::warn!(error = %crate::error_chain(&e), "ansible output not stored");
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| StepErr::failed(format!("waiting for {}: {e}", p.ansible_playbook)))?;
    group.0 = None;
    let code = status.code().unwrap_or(-1);
    if code == 0 {
        Ok(StepOk {
            exit_code: Some(0),
            message: Some(format!("{} succeeded", playbook.display())),
            progress: None,
        })
    } else {
        Err(StepErr {
            message: format!(
                "{} exited with {code}: {}",
                p.ansible_playbook,
                tail.join(" | ")
            ),
            exit_code: Some(code),
            lost: false,
        })
    }
}

/// Kills a process group when dropped (unless disarmed by clearing the id).
struct KillGroup(Option<u32>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
