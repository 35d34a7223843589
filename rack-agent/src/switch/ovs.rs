//! Open vSwitch driver: VLAN settings of the `Port` rows of one bridge, through the OVSDB
//! management protocol (JSON-RPC, RFC 7047) on `ovsdb-server`'s unix socket or TCP port.
//!
//! Mapping of [`PortMode`] to `Port` columns (`vswitchd/vswitch.xml`):
//!
//! | mode | `vlan_mode` | `tag` | `trunks` | `protected` |
//! |---|---|---|---|---|
//! | `Access { vlan }` | `access` | vlan | `[]` | false |
//! | `Trunk { native: None, allowed }` | `trunk` | `[]` | allowed | false |
//! | `Trunk { native: Some(n), allowed }` | `native-untagged` | n | allowed | false |
//! | `Unconfigured` | `trunk` | `[]` | `[4095]` | true |
//!
//! "Nothing" on OVS: clearing `tag` and `trunks` would make the port a trunk of *every*
//! VLAN, and `tag=4095` alone still floods the port's frames, tagged 4095, to every
//! all-VLAN trunk (measured). So an unconfigured port is a trunk of only the reserved VLAN
//! 4095: untagged frames (VLAN 0 on a trunk) are dropped at ingress, no other port of ours
//! carries VLAN 4095 so nothing egresses, and `protected` stops two unconfigured ports from
//! reaching each other with hand-tagged 4095 frames. The one remaining path is a host that
//! tags its frames 4095 towards a port configured outside the driver as an all-VLAN trunk
//! (empty `trunks`): give uplinks explicit `trunks`.
//!
//! `apply` returns once `ovs-vswitchd` has applied the transaction (its `cur_cfg` reached the
//! `next_cfg` the transaction bumped, as `ovs-vsctl` waits), not merely when the database
//! holds it.
//!
//! One connection per switch, opened on first use and reopened after an error. A reader task
//! answers the server's `echo` keepalives (RFC 7047 §4.1.11) even while no call is in flight,
//! and matches responses to requests by id, so calls from several tasks can overlap.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::config::OvsAddress;
use super::{
    validate_batch, verify_readback, PortChange, PortConfig, PortMode, SwitchDriver, SwitchError,
    Vlan,
};

/// The database every OVS bridge lives in.
const DATABASE: &str = "Open_vSwitch";
/// The VLAN an unconfigured port trunks (reserved by 802.1Q, so never a tenant VLAN).
const DEAD_VLAN: i64 = 4095;
/// Columns of `Port` the driver reads.
const PORT_COLUMNS: [&str; 6] = ["_uuid", "name", "tag", "trunks", "vlan_mode", "protected"];
/// Largest JSON-RPC message accepted from the server (a `select` of a few thousand ports is
/// well below).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, Value>>>>>;

/// One JSON-RPC connection: a writer task, a reader task and the requests awaiting answers.
#[derive(Debug)]
struct Conn {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    dead: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock_pending(
    p: &Pending,
) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<Value, Value>>>> {
    p.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Conn {
    fn start<S>(stream: S) -> Conn
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let pending: Pending = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        let writer = {
            let dead = dead.clone();
            tokio::spawn(async move {
                while let Some(bytes) = rx.recv().await {
                    if wr.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                dead.store(true, Ordering::Release);
            })
        };
        let reader = {
            let dead = dead.clone();
            let pending = pending.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
                let mut chunk = vec![0u8; 64 * 1024];
                'read: loop {
                    let n = match rd.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                    // OVSDB sends JSON texts back to back without framing: parse as many
                    // complete ones as the buffer holds and keep the rest.
                    let mut consumed = 0;
                    let mut stream =
                        serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
                    loop {
                        match stream.next() {
                            Some(Ok(msg)) => {
                                consumed = stream.byte_offset();
                                dispatch(msg, &pending, &tx);
                            }
                            Some(Err(e)) if e.is_eof() => break,
                            Some(Err(_)) => break 'read,
                            None => {
                                consumed = buf.len();
                                break;
                            }
                        }
                    }
                    buf.drain(..consumed);
                    if buf.len() > MAX_MESSAGE {
                        break;
                    }
                }
                dead.store(true, Ordering::Release);
                // Dropping the senders fails every waiting call with "connection closed".
                lock_pending(&pending).clear();
            })
        };
        Conn {
            tx,
            pending,
            dead,
            tasks: vec![writer, reader],
        }
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire) || self.tx.is_closed()
    }
}

/// Routes one message from the server: answers `echo`, completes a waiting request.
fn dispatch(msg: Value, pending: &Pending, tx: &mpsc::UnboundedSender<Vec<u8>>) {
    if let Some(method) = msg.get("method").and_then(Value::as_str) {
        if method == "echo" {
            let reply = json!({
                "id": msg.get("id").cloned().unwrap_or(Value::Null),
                "result": msg.get("params").cloned().unwrap_or(json!([])),
                "error": null,
            });
            let _ = tx.send(reply.to_string().into_bytes());
        }
        // Other methods are notifications (`update`, `locked`) for monitors we never start.
        return;
    }
    let Some(id) = msg.get("id").and_then(Value::as_u64) else {
        return;
    };
    let Some(waiter) = lock_pending(pending).remove(&id) else {
        return;
    };
    let error = msg.get("error").cloned().unwrap_or(Value::Null);
    let _ = waiter.send(if error.is_null() {
        Ok(msg.get("result").cloned().unwrap_or(Value::Null))
    } else {
        Err(error)
    });
}

/// An Open vSwitch bridge managed through OVSDB.
#[derive(Debug)]
pub struct OvsSwitch {
    name: String,
    address: OvsAddress,
    bridge: String,
    timeout: Duration,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    next_id: AtomicU64,
    /// Serialises `apply` so one batch's read-back never sees another batch's writes.
    applying: tokio::sync::Mutex<()>,
}

/// A `Port` row as read.
#[derive(Debug)]
struct PortRow {
    uuid: String,
    name: String,
    mode: Result<PortMode, String>,
}

impl OvsSwitch {
    /// A driver for `bridge` on the OVSDB server at `address`; connects on first use.
    pub fn new(name: &str, address: OvsAddress, bridge: &str, timeout: Duration) -> OvsSwitch {
        OvsSwitch {
            name: name.to_owned(),
            address,
            bridge: bridge.to_owned(),
            timeout,
            conn: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
            applying: tokio::sync::Mutex::new(()),
        }
    }

    fn timeout_ms(&self) -> u64 {
        u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX)
    }

    fn protocol(&self, message: impl Into<String>) -> SwitchError {
        SwitchError::Protocol {
            switch: self.name.clone(),
            message: message.into(),
        }
    }

    async fn connection(&self) -> Result<Arc<Conn>, SwitchError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.is_dead() {
                return Ok(c.clone());
            }
        }
        *slot = None;
        let connect_err = |source| SwitchError::Connect {
            switch: self.name.clone(),
            address: self.address.to_string(),
            source,
        };
        let connecting = async {
            Ok::<_, std::io::Error>(match &self.address {
                OvsAddress::Unix(p) => Conn::start(tokio::net::UnixStream::connect(p).await?),
                OvsAddress::Tcp(hp) => {
                    let s = tokio::net::TcpStream::connect(hp.as_str()).await?;
                    let _ = s.set_nodelay(true);
                    Conn::start(s)
                }
            })
        };
        let conn = tokio::time::timeout(self.timeout, connecting)
            .await
            .map_err(|_| SwitchError::Timeout {
                switch: self.name.clone(),
                what: format!("connect to {}", self.address),
                timeout_ms: self.timeout_ms(),
            })?
            .map_err(connect_err)?;
        let conn = Arc::new(conn);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn forget(&self, conn: &Arc<Conn>) {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *slot = None;
        }
    }

    /// One JSON-RPC call; an error answer is returned as `Err(Rejected)`.
    async fn call(&self, method: &str, params: Value) -> Result<Value, SwitchError> {
        let conn = self.connection().await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock_pending(&conn.pending).insert(id, tx);
        let msg = json!({"method": method, "params": params, "id": id});
        if conn.tx.send(msg.to_string().into_bytes()).is_err() {
            lock_pending(&conn.pending).remove(&id);
            self.forget(&conn).await;
            return Err(SwitchError::Io {
                switch: self.name.clone(),
                what: format!("OVSDB connection to {} closed", self.address),
                source: std::io::ErrorKind::BrokenPipe.into(),
            });
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(error))) => Err(SwitchError::Rejected {
                switch: self.name.clone(),
                command: method.to_owned(),
                message: error.to_string(),
            }),
            Ok(Err(_closed)) => {
                self.forget(&conn).await;
                Err(SwitchError::Io {
                    switch: self.name.clone(),
                    what: format!(
                        "OVSDB connection to {} closed during {method}",
                        self.address
                    ),
                    source: std::io::ErrorKind::ConnectionAborted.into(),
                })
            }
            Err(_) => {
                lock_pending(&conn.pending).remove(&id);
                // The answer may still come; a fresh connection keeps ids unambiguous.
                self.forget(&conn).await;
                Err(SwitchError::Timeout {
                    switch: self.name.clone(),
                    what: format!("OVSDB {method}"),
                    timeout_ms: self.timeout_ms(),
                })
            }
        }
    }

    /// An RFC 7047 `transact`; the per-operation results, or the first operation's error
    /// (with OVSDB's `error` and `details`) as [`SwitchError::Rejected`].
    async fn transact(&self, ops: Vec<Value>) -> Result<Vec<Value>, SwitchError> {
        let mut params = vec![json!(DATABASE)];
        params.extend(ops.iter().cloned());
        let result = self.call("transact", Value::Array(params)).await?;
        let Value::Array(results) = result else {
            return Err(self.protocol(format!("transact answered {result}")));
        };
        for (i, r) in results.iter().enumerate() {
            if let Some(err) = r.get("error").and_then(Value::as_str) {
                let details = r.get("details").and_then(Value::as_str).unwrap_or("");
                // Results beyond the operations report a commit failure (RFC 7047 §4.1.3).
                let command = ops
                    .get(i)
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| "commit".to_owned());
                return Err(SwitchError::Rejected {
                    switch: self.name.clone(),
                    command,
                    message: if details.is_empty() {
                        err.to_owned()
                    } else {
                        format!("{err}: {details}")
                    },
                });
            }
        }
        Ok(results)
    }

    /// The bridge's ports (without the bridge's own internal port), by name.
    async fn bridge_ports(
        &self,
        only: Option<&str>,
    ) -> Result<BTreeMap<String, PortRow>, SwitchError> {
        let port_where = match only {
            Some(p) => json!([["name", "==", p]]),
            None => json!([]),
        };
        let results = self
            .transact(vec![
                json!({"op": "select", "table": "Bridge",
                       "where": [["name", "==", self.bridge]], "columns": ["ports"]}),
                json!({"op": "select", "table": "Port", "where": port_where,
                       "columns": PORT_COLUMNS}),
            ])
            .await?;
        let rows = |i: usize| {
            results
                .get(i)
                .and_then(|r| r.get("rows"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let bridges = rows(0);
        let Some(bridge) = bridges.first() else {
            return Err(self.protocol(format!("no bridge {} in the database", self.bridge)));
        };
        let members: BTreeSet<String> = set_items(bridge.get("ports"))
            .iter()
            .filter_map(uuid_of)
            .collect();
        let mut out = BTreeMap::new();
        for row in rows(1) {
            let uuid = uuid_of(row.get("_uuid").unwrap_or(&Value::Null)).unwrap_or_default();
            let name = row
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if !members.contains(&uuid) || name == self.bridge {
                continue;
            }
            let mode = decode_mode(&row);
            out.insert(name.clone(), PortRow { uuid, name, mode });
        }
        Ok(out)
    }

    /// Waits until ovs-vswitchd has applied configuration `next_cfg` to the datapath
    /// (`cur_cfg` reached it): without this, `apply` would return while traffic still follows
    /// the old VLANs. A server-side `wait` (RFC 7047 §5.2.6) blocks instead of polling.
    async fn wait_applied(&self, next_cfg: i64) -> Result<(), SwitchError> {
        // Below our own call timeout so the server's "timed out" answer arrives first.
        let wait_ms = self.timeout_ms().saturating_mul(3) / 4;
        let result = self
            .transact(vec![
                json!({"op": "wait", "timeout": wait_ms, "table": "Open_vSwitch",
                                  "where": [["cur_cfg", ">=", next_cfg]], "columns": ["cur_cfg"],
                                  "until": "!=", "rows": []}),
            ])
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(SwitchError::Rejected { message, .. }) if message.starts_with("timed out") => {
                Err(SwitchError::Timeout {
                    switch: self.name.clone(),
                    what: format!(
                        "ovs-vswitchd to apply configuration {next_cfg} (is it running?)"
                    ),
                    timeout_ms: wait_ms,
                })
            }
            Err(e) => Err(e),
        }
    }

    fn config_of(&self, row: &PortRow) -> Result<PortConfig, SwitchError> {
        match &row.mode {
            Ok(m) => Ok(PortConfig::new(row.name.clone(), m.clone())),
            Err(e) => Err(self.protocol(format!("port {}: {e}", row.name))),
        }
    }
}

/// The members of an OVSDB set value (`["set", [...]]`, or a single atom standing for a
/// one-element set).
fn set_items(v: Option<&Value>) -> Vec<Value> {
    match v {
        None => Vec::new(),
        Some(Value::Array(a)) if a.first().and_then(Value::as_str) == Some("set") => a
            .get(1)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        Some(atom) => vec![atom.clone()],
    }
}

fn uuid_of(v: &Value) -> Option<String> {
    match v.as_array().map(Vec::as_slice) {
        Some([kind, id]) if kind.as_str() == Some("uuid") => id.as_str().map(str::to_owned),
        _ => None,
    }
}

fn ovs_set<T: serde::Serialize>(items: &[T]) -> Value {
    json!(["set", items])
}

/// The `Port` columns written for `mode` (see the module table).
fn encode_mode(mode: &PortMode) -> Value {
    let none: [i64; 0] = [];
    match mode {
        PortMode::Unconfigured => json!({
            "vlan_mode": "trunk", "tag": ovs_set(&none),
            "trunks": ovs_set(&[DEAD_VLAN]), "protected": true,
        }),
        PortMode::Access { vlan } => json!({
            "vlan_mode": "access", "tag": vlan.get(),
            "trunks": ovs_set(&none), "protected": false,
        }),
        PortMode::Trunk { native, allowed } => {
            let trunks: Vec<u16> = allowed.iter().map(|v| v.get()).collect();
            match native {
                None => json!({
                    "vlan_mode": "trunk", "tag": ovs_set(&none),
                    "trunks": ovs_set(&trunks), "protected": false,
                }),
                Some(n) => json!({
                    "vlan_mode": "native-untagged", "tag": n.get(),
                    "trunks": ovs_set(&trunks), "protected": false,
                }),
            }
        }
    }
}

/// A `Port` row's VLAN columns as a [`PortMode`], or why they fit none (set outside the
/// driver in a way the model cannot express: reported, never guessed).
fn decode_mode(row: &Value) -> Result<PortMode, String> {
    let ints = |col: &str| -> Result<Vec<i64>, String> {
        set_items(row.get(col))
            .iter()
            .map(|v| v.as_i64().ok_or_else(|| format!("{col} holds {v}")))
            .collect()
    };
    let tag = ints("tag")?;
    let trunks = ints("trunks")?;
    let vlan_mode = set_items(row.get("vlan_mode"))
        .first()
        .and_then(Value::as_str)
        .map(str::to_owned);
    let protected = row
        .get("protected")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let describe = || {
        format!(
            "VLAN settings not modelled: vlan_mode={} tag={tag:?} trunks={trunks:?} protected={protected}",
            vlan_mode.as_deref().unwrap_or("(default)")
        )
    };
    let vlans = |ids: &[i64]| -> Result<BTreeSet<Vlan>, String> {
        ids.iter()
            .map(|&i| Vlan::from_i64(i).map_err(|_| describe()))
            .collect()
    };
    if protected {
        return if vlan_mode.as_deref() == Some("trunk") && tag.is_empty() && trunks == [DEAD_VLAN] {
            Ok(PortMode::Unconfigured)
        } else {
            Err(describe())
        };
    }
    match (vlan_mode.as_deref(), tag.as_slice()) {
        (None | Some("access"), [t]) if trunks.is_empty() => Ok(PortMode::Access {
            vlan: Vlan::from_i64(*t).map_err(|_| describe())?,
        }),
        (None | Some("trunk"), []) => {
            // Empty trunks: OVS carries every VLAN.
            let allowed = if trunks.is_empty() {
                (super::MIN_VLAN..=super::MAX_VLAN)
                    .filter_map(|v| Vlan::new(v).ok())
                    .collect()
            } else {
                vlans(&trunks)?
            };
            Ok(PortMode::Trunk {
                native: None,
                allowed,
            })
        }
        (Some("native-untagged"), [t]) if !trunks.is_empty() => {
            let native = Vlan::from_i64(*t).map_err(|_| describe())?;
            let mut allowed = vlans(&trunks)?;
            // OVS carries the native VLAN whether or not it is listed in trunks.
            allowed.insert(native);
            Ok(PortMode::Trunk {
                native: Some(native),
                allowed,
            })
        }
        _ => Err(describe()),
    }
}

impl SwitchDriver for OvsSwitch {
    fn name(&self) -> &str {
        &self.name
    }

    fn read_port<'a>(&'a self, port: &'a str) -> BoxFuture<'a, Result<PortConfig, SwitchError>> {
        async move {
            let ports = self.bridge_ports(Some(port)).await?;
            let row = ports.get(port).ok_or_else(|| SwitchError::UnknownPort {
                switch: self.name.clone(),
                port: port.to_owned(),
            })?;
            self.config_of(row)
        }
        .boxed()
    }

    fn read_ports(&self) -> BoxFuture<'_, Result<Vec<PortConfig>, SwitchError>> {
        async move {
            self.bridge_ports(None)
                .await?
                .values()
                .map(|r| self.config_of(r))
                .collect()
        }
        .boxed()
    }

    fn apply<'a>(
        &'a self,
        changes: &'a [PortChange],
    ) -> BoxFuture<'a, Result<Vec<PortConfig>, SwitchError>> {
        async move {
            validate_batch(changes)?;
            if changes.is_empty() {
                return Ok(Vec::new());
            }
            let _one_batch_at_a_time = self.applying.lock().await;
            // Resolve names to row UUIDs on this bridge; updating by UUID (guarded by the
            // wait below) cannot touch a same-named port someone re-created elsewhere.
            let before = self.bridge_ports(None).await?;
            let mut uuids = Vec::with_capacity(changes.len());
            for c in changes {
                let row = before.get(&c.port).ok_or_else(|| SwitchError::UnknownPort {
                    switch: self.name.clone(),
                    port: c.port.clone(),
                })?;
                uuids.push(row.uuid.clone());
            }
            let uuid_set: Vec<Value> = uuids.iter().map(|u| json!(["uuid", u])).collect();
            let mut ops = vec![
                // Recorded in the database log: who changed what.
                json!({"op": "comment",
                       "comment": format!("metalfleet switch {}: {} port change(s)", self.name, changes.len())}),
                // Abort the whole transaction if any port left the bridge since we looked
                // (timeout 0: check once, do not block).
                json!({"op": "wait", "timeout": 0, "table": "Bridge",
                       "where": [["name", "==", self.bridge], ["ports", "includes", ["set", uuid_set]]],
                       "columns": ["name"], "until": "==", "rows": [{"name": self.bridge}]}),
            ];
            for (c, u) in changes.iter().zip(&uuids) {
                ops.push(json!({"op": "update", "table": "Port",
                                "where": [["_uuid", "==", ["uuid", u]]],
                                "row": encode_mode(&c.mode)}));
            }
            // Ask ovs-vswitchd to acknowledge this configuration (as ovs-vsctl does): bump
            // next_cfg in the same transaction; it copies the value to cur_cfg once the
            // bridge has been reconfigured.
            ops.push(json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
                            "mutations": [["next_cfg", "+=", 1]]}));
            ops.push(json!({"op": "select", "table": "Open_vSwitch", "where": [],
                            "columns": ["next_cfg"]}));
            let results = self.transact(ops).await?;
            let next_cfg = results
                .get(changes.len() + 3)
                .and_then(|r| r.get("rows"))
                .and_then(|rows| rows.get(0))
                .and_then(|row| row.get("next_cfg"))
                .and_then(Value::as_i64)
                .ok_or_else(|| self.protocol("no next_cfg in the Open_vSwitch table"))?;
            for (i, c) in changes.iter().enumerate() {
                let count = results
                    .get(i + 2)
                    .and_then(|r| r.get("count"))
                    .and_then(Value::as_u64);
                if count != Some(1) {
                    return Err(self.protocol(format!(
                        "update of port {} matched {count:?} rows",
                        c.port
                    )));
                }
            }
            self.wait_applied(next_cfg).await?;
            let after = self.bridge_ports(None).await?;
            let mut found = Vec::with_capacity(changes.len());
            for c in changes {
                if let Some(row) = after.get(&c.port) {
                    found.push(self.config_of(row)?);
                }
            }
            verify_readback(&self.name, changes, &found)
        }
        .boxed()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::switch::parse_vlan_list;

    fn row(mut v: Value) -> Value {
        v["_uuid"] = json!(["uuid", "u1"]);
        v["name"] = json!("p1");
        v
    }

    #[test]
    fn encode_decode_round_trip() {
        let modes = [
            PortMode::Unconfigured,
            PortMode::Access {
                vlan: Vlan::new(10).unwrap(),
            },
            PortMode::Trunk {
                native: None,
                allowed: parse_vlan_list("10,20").unwrap(),
            },
            PortMode::Trunk {
                native: None,
                allowed: parse_vlan_list("10").unwrap(),
            },
            PortMode::Trunk {
                native: Some(Vlan::new(20).unwrap()),
                allowed: parse_vlan_list("10,20").unwrap(),
            },
        ];
        for m in modes {
            let mut written = encode_mode(&m);
            // OVSDB answers a one-element set as the bare atom and a string enum as a string.
            for col in ["tag", "trunks"] {
                let items = set_items(written.get(col));
                if items.len() == 1 {
                    written[col] = items[0].clone();
                }
            }
            assert_eq!(decode_mode(&row(written)), Ok(m.clone()), "{m}");
        }
    }

    #[test]
    fn decodes_ovs_defaults_and_refuses_unmodelled() {
        // A port nobody configured: OVS trunks every VLAN.
        let m = decode_mode(&row(json!({"tag": ["set", []], "trunks": ["set", []],
                                        "vlan_mode": ["set", []], "protected": false})))
        .unwrap();
        assert!(
            matches!(m, PortMode::Trunk { native: None, ref allowed } if allowed.len() == 4094)
        );
        // tag=4095 alone is not "nothing" (it leaks to all-VLAN trunks): reported, not hidden.
        let e = decode_mode(&row(json!({"tag": 4095, "trunks": ["set", []],
                                        "vlan_mode": "access", "protected": false})))
        .unwrap_err();
        assert!(e.contains("not modelled"), "{e}");
        assert!(decode_mode(&row(json!({"tag": 10, "trunks": ["set", []],
                                        "vlan_mode": "access", "protected": true})))
        .is_err());
    }

    #[tokio::test]
    async fn framing_across_reads_and_echo_while_idle() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut server) = tokio::io::duplex(64);
        let conn = Conn::start(client);
        let (tx, rx) = oneshot::channel();
        lock_pending(&conn.pending).insert(1, tx);
        // Two messages back to back, split mid-token across writes (no framing in OVSDB).
        let bytes = br#"{"method":"echo","params":[],"id":"echo"}{"id":1,"result":[{"count":1}],"error":null}"#;
        for part in bytes.chunks(7) {
            server.write_all(part).await.unwrap();
        }
        assert_eq!(rx.await.unwrap(), Ok(json!([{"count": 1}])));
        let mut got = vec![0u8; 256];
        let n = server.read(&mut got).await.unwrap();
        let reply: Value = serde_json::from_slice(&got[..n]).unwrap();
        assert_eq!(reply, json!({"id": "echo", "result": [], "error": null}));
        // The server going away fails waiting calls instead of hanging them.
        let (tx, rx) = oneshot::channel();
        lock_pending(&conn.pending).insert(2, tx);
        drop(server);
        assert!(rx.await.is_err());
        assert!(conn.is_dead());
    }

    #[test]
    fn echo_is_answered_and_responses_routed() {
        let pending: Pending = Arc::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        dispatch(
            json!({"method": "echo", "params": ["x"], "id": "echo"}),
            &pending,
            &tx,
        );
        let reply: Value = serde_json::from_slice(&rx.try_recv().unwrap()).unwrap();
        assert_eq!(reply, json!({"id": "echo", "result": ["x"], "error": null}));
        let (otx, mut orx) = oneshot::channel();
        lock_pending(&pending).insert(7, otx);
        dispatch(
            json!({"id": 7, "result": null, "error": {"error": "bad"}}),
            &pending,
            &tx,
        );
        assert_eq!(orx.try_recv().unwrap(), Err(json!({"error": "bad"})));
    }
}
