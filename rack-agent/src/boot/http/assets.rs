//! Boot assets under `/assets/`: the remote catalogue (downloaded once, verified, cached by
//! SHA-256), local files under `assets_dir` (path-confined), and the iPXE binaries by fixed
//! name; served as streams with `Content-Length`, one `Range`, `ETag` and `Last-Modified`.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::StreamExt as _;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::config::RemoteAsset;
use super::stats::HttpStats;
use crate::boot::{IPXE_BIOS, IPXE_EFI_ARM64, IPXE_EFI_X64};

/// Read size of the file streamer: large enough that a 64 MiB kernel is 256 reads, small enough
/// that a download holds about two chunks (one being sent, one being read) at a time.
pub const CHUNK: usize = 256 * 1024;
/// Snponly iPXE (UEFI, uses the firmware's network driver), served under its Debian name.
pub const IPXE_SNPONLY: &str = "snponly.efi";

/// `/assets/<name>` → file in `ipxe_dir`. Explicit so that no other file of that directory is
/// reachable.
pub const IPXE_FILES: [(&str, &str); 4] = [
    (IPXE_BIOS, "undionly.kpxe"),
    (IPXE_EFI_X64, "ipxe.efi"),
    (IPXE_EFI_ARM64, "ipxe-arm64.efi"),
    (IPXE_SNPONLY, "snponly.efi"),
];

/// Why an asset cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// No catalogue entry, local file or iPXE binary has this name.
    #[error("asset {name:?} not found")]
    NotFound {
        /// Requested name.
        name: String,
    },
    /// The path is malformed or escapes `assets_dir`.
    #[error("asset path {name:?} refused: {reason}")]
    Forbidden {
        /// Requested name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The remote asset could not be fetched.
    #[error("asset {name:?}: fetching {url} failed")]
    Fetch {
        /// Catalogue name.
        name: String,
        /// Remote URL.
        url: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The remote server answered with an error status.
    #[error("asset {name:?}: {url} answered {status}")]
    Status {
        /// Catalogue name.
        name: String,
        /// Remote URL.
        url: String,
        /// Status received.
        status: u16,
    },
    /// The download took longer than `download_timeout_secs`.
    #[error("asset {name:?}: fetching {url} timed out")]
    Timeout {
        /// Catalogue name.
        name: String,
        /// Remote URL.
        url: String,
    },
    /// The content does not have the configured SHA-256; nothing was cached.
    #[error("asset {name:?}: sha256 mismatch for {url}: expected {expected}, got {actual}")]
    Checksum {
        /// Catalogue name.
        name: String,
        /// Remote URL.
        url: String,
        /// Configured digest.
        expected: String,
        /// Digest of what was received.
        actual: String,
    },
    /// A local file operation failed.
    #[error("asset {name:?}: {path}")]
    Io {
        /// Requested name.
        name: String,
        /// File involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The download task ended without a result (agent shutting down).
    #[error("asset {name:?}: download interrupted")]
    Interrupted {
        /// Catalogue name.
        name: String,
    },
}

impl AssetError {
    /// HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            AssetError::NotFound { .. } => StatusCode::NOT_FOUND,
            AssetError::Forbidden { .. } => StatusCode::FORBIDDEN,
            AssetError::Fetch { .. }
            | AssetError::Status { .. }
            | AssetError::Checksum { .. }
            | AssetError::Interrupted { .. } => StatusCode::BAD_GATEWAY,
            AssetError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            AssetError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Metrics reason for refused requests.
    pub fn reason(&self) -> &'static str {
        match self {
            AssetError::NotFound { .. } => "asset_not_found",
            AssetError::Forbidden { .. } => "asset_path_refused",
            _ => "asset_failed",
        }
    }
}

/// Full error text with its causes (reqwest hides the interesting part in `source`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

type Download = Shared<BoxFuture<'static, Result<PathBuf, Arc<AssetError>>>>;

/// Where assets come from, and the shared downloads in flight.
#[derive(Debug)]
pub struct AssetStore {
    assets_dir: PathBuf,
    cache_dir: PathBuf,
    ipxe_dir: PathBuf,
    catalogue: BTreeMap<String, RemoteAsset>,
    client: reqwest::Client,
    download_timeout: Duration,
    stats: Arc<HttpStats>,
    inflight: Arc<Mutex<HashMap<String, DownloadSlot>>>,
}

struct DownloadSlot(Download);

impl std::fmt::Debug for DownloadSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DownloadSlot")
    }
}

/// A resolved asset: a file to stream, with a strong validator when the content is known by
/// digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The file.
    pub path: PathBuf,
    /// SHA-256 of the content when known (catalogue assets): used as the ETag.
    pub sha256: Option<String>,
}

/// Splits a decoded request path into safe segments, or says why it is refused. Pure.
pub fn check_path(name: &str) -> Result<Vec<&str>, &'static str> {
    if name.is_empty() {
        return Err("empty path");
    }
    let mut out = Vec::new();
    for seg in name.split('/') {
        match seg {
            "" => return Err("empty path segment"),
            "." | ".." => return Err("dot segment"),
            s if s.contains('\\') || s.chars().any(char::is_control) => {
                return Err("backslash or control character")
            }
            s => out.push(s),
        }
    }
    Ok(out)
}

impl AssetStore {
    /// An asset store over the given directories and catalogue.
    pub fn new(
        assets_dir: PathBuf,
        cache_dir: PathBuf,
        ipxe_dir: PathBuf,
        catalogue: &[RemoteAsset],
        client: reqwest::Client,
        download_timeout: Duration,
        stats: Arc<HttpStats>,
    ) -> AssetStore {
        AssetStore {
            assets_dir,
            cache_dir,
            ipxe_dir,
            catalogue: catalogue
                .iter()
                .map(|a| (a.name.clone(), a.clone()))
                .collect(),
            client,
            download_timeout,
            stats,
            inflight: Arc::default(),
        }
    }

    /// The cache file of content with digest `sha256`.
    pub fn cache_path(&self, sha256: &str) -> PathBuf {
        self.cache_dir.join("sha256").join(sha256)
    }

    /// Finds `name` (decoded, without the `/assets/` prefix): catalogue, then `assets_dir`,
    /// then the iPXE binaries. A catalogue asset not yet cached is downloaded first; concurrent
    /// requests for it share one download.
    pub async fn resolve(&self, name: &str) -> Result<Resolved, AssetError> {
        let refused = |reason| AssetError::Forbidden {
            name: name.to_owned(),
            reason,
        };
        let segments = check_path(name).map_err(refused)?;
        if let Some(asset) = self.catalogue.get(name) {
            let path = self
                .cached(asset)
                .await
                .map_err(|e| match Arc::try_unwrap(e) {
                    Ok(e) => e,
                    // Shared with other waiters: keep the message, not the source chain.
                    Err(shared) => AssetError::Io {
                        name: name.to_owned(),
                        path: self.cache_path(&asset.sha256),
                        source: std::io::Error::other(error_chain(&*shared)),
                    },
                })?;
            return Ok(Resolved {
                path,
                sha256: Some(asset.sha256.clone()),
            });
        }
        if let Some(path) = self.local(name, &segments).await? {
            return Ok(Resolved { path, sha256: None });
        }
        if let Some((_, file)) = IPXE_FILES.iter().find(|(n, _)| *n == name) {
            let path = self.ipxe_dir.join(file);
            if tokio::fs::metadata(&path)
                .await
                .map(|m| m.is_file())
                .unwrap_or(false)
            {
                return Ok(Resolved { path, sha256: None });
            }
        }
        Err(AssetError::NotFound {
            name: name.to_owned(),
        })
    }

    /// The file under `assets_dir`, if it exists there; refuses symlinks leading outside it.
    async fn local(&self, name: &str, segments: &[&str]) -> Result<Option<PathBuf>, AssetError> {
        let mut joined = self.assets_dir.clone();
        joined.extend(segments);
        let root = self.assets_dir.clone();
        let name = name.to_owned();
        let checked = tokio::task::spawn_blocking(move || {
            let Ok(real) = std::fs::canonicalize(&joined) else {
                return Ok(None);
            };
            let Ok(real_root) = std::fs::canonicalize(&root) else {
                return Ok(None);
            };
            if !real.starts_with(&real_root) {
                return Err(AssetError::Forbidden {
                    name,
                    reason: "resolves outside assets_dir",
                });
            }
            Ok(real.is_file().then_some(real))
        })
        .await;
        checked.unwrap_or(Ok(None))
    }

    /// The cached copy of `asset`, downloading it when absent.
    async fn cached(&self, asset: &RemoteAsset) -> Result<PathBuf, Arc<AssetError>> {
        let path = self.cache_path(&asset.sha256);
        let download = {
            let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(d) = inflight.get(&asset.sha256) {
                HttpStats::add(&self.stats.cache_misses, 1);
                d.0.clone()
            } else if path.is_file() {
                // Checked under the lock: the download task renames into place before it
                // leaves the map, so a request sees either the task or the file.
                HttpStats::add(&self.stats.cache_hits, 1);
                return Ok(path);
            } else {
                HttpStats::add(&self.stats.cache_misses, 1);
                let task = tokio::spawn(download(
                    self.client.clone(),
                    asset.clone(),
                    path.clone(),
                    self.download_timeout,
                    self.stats.clone(),
                    self.inflight.clone(),
                ));
                let name = asset.name.clone();
                let d: Download = async move {
                    match task.await {
                        Ok(r) => r,
                        Err(_) => Err(Arc::new(AssetError::Interrupted { name })),
                    }
                }
                .boxed()
                .shared();
                inflight.insert(asset.sha256.clone(), DownloadSlot(d.clone()));
                d
            }
        };
        download.await
    }
}

/// Downloads `asset` into a temp file beside `dest`, checks its digest and renames it into
/// place; removes its entry from `inflight` when done (success or not).
async fn download(
    client: reqwest::Client,
    asset: RemoteAsset,
    dest: PathBuf,
    timeout: Duration,
    stats: Arc<HttpStats>,
    inflight: Arc<Mutex<HashMap<String, DownloadSlot>>>,
) -> Result<PathBuf, Arc<AssetError>> {
    let tmp = dest.with_file_name(format!(
        ".{}.{:016x}.part",
        asset.sha256,
        rand::random::<u64>()
    ));
    let result = match tokio::time::timeout(timeout, fetch_verified(&client, &asset, &tmp)).await {
        Ok(r) => r,
        Err(_) => Err(AssetError::Timeout {
            name: asset.name.clone(),
            url: asset.url.clone(),
        }),
    };
    let result = match result {
        Ok(()) => tokio::fs::rename(&tmp, &dest)
            .await
            .map(|()| dest.clone())
            .map_err(|source| AssetError::Io {
                name: asset.name.clone(),
                path: dest.clone(),
                source,
            }),
        Err(e) => Err(e),
    };
    match &result {
        Ok(_) => {
            HttpStats::add(&stats.downloads, 1);
            tracing::info!(asset = %asset.name, url = %asset.url, "remote asset downloaded and verified");
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            HttpStats::add(&stats.download_failures, 1);
            tracing::warn!(asset = %asset.name, error = %error_chain(e), "remote asset download failed");
        }
    }
    inflight
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&asset.sha256);
    result.map_err(Arc::new)
}

async fn fetch_verified(
    client: &reqwest::Client,
    asset: &RemoteAsset,
    tmp: &Path,
) -> Result<(), AssetError> {
    let fetch = |source| AssetError::Fetch {
        name: asset.name.clone(),
        url: asset.url.clone(),
        source,
    };
    let io = |source| AssetError::Io {
        name: asset.name.clone(),
        path: tmp.to_owned(),
        source,
    };
    if let Some(dir) = tmp.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
    }
    let mut resp = client.get(&asset.url).send().await.map_err(fetch)?;
    if !resp.status().is_success() {
        return Err(AssetError::Status {
            name: asset.name.clone(),
            url: asset.url.clone(),
            status: resp.status().as_u16(),
        });
    }
    let mut file = tokio::fs::File::create(tmp).await.map_err(io)?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = resp.chunk().await.map_err(fetch)? {
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.sync_all().await.map_err(io)?;
    drop(file);
    let actual = hex::encode(hasher.finalize());
    if actual != asset.sha256 {
        return Err(AssetError::Checksum {
            name: asset.name.clone(),
            url: asset.url.clone(),
            expected: asset.sha256.clone(),
            actual,
        });
    }
    Ok(())
}

/// A parsed `Range` header against a representation of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeReq {
    /// No (usable) range: the whole representation.
    Full,
    /// Bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// Syntactically valid but outside the representation: 416.
    Unsatisfiable,
}

/// Parses one `bytes=` range (RFC 9110 §14.1.2). Several ranges, other units and syntax errors
/// fall back to the full representation, which the RFC allows.
pub fn parse_range(value: &str, len: u64) -> RangeReq {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeReq::Full;
    };
    if spec.contains(',') {
        return RangeReq::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match num(b) {
            Some(0) => RangeReq::Unsatisfiable,
            Some(_) if len == 0 => RangeReq::Unsatisfiable,
            Some(n) => RangeReq::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
            None => RangeReq::Full,
        },
        (false, true) => match num(a) {
            Some(s) if s < len => RangeReq::Partial {
                start: s,
                end: len - 1,
            },
            Some(_) => RangeReq::Unsatisfiable,
            None => RangeReq::Full,
        },
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if s > e => RangeReq::Full,
            (Some(s), Some(_)) if s >= len => RangeReq::Unsatisfiable,
            (Some(s), Some(e)) => RangeReq::Partial {
                start: s,
                end: e.min(len.saturating_sub(1)),
            },
            _ => RangeReq::Full,
        },
        (true, true) => RangeReq::Full,
    }
}

/// `time` as an IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // 1970-01-01 was a Thursday.
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]
        .get((days % 7) as usize)
        .copied()
        .unwrap_or("Thu");
    // Civil date from days since the epoch (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .get((month - 1) as usize)
    .copied()
    .unwrap_or("Jan");
    format!("{weekday}, {d:02} {mon} {year} {h:02}:{m:02}:{s:02} GMT")
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t.trim_start_matches("W/") == etag
    })
}

/// Streams `resolved` as the answer to `method` with `headers` (Range, conditionals).
pub async fn serve_file(
    resolved: &Resolved,
    method: &Method,
    headers: &HeaderMap,
    stats: Arc<HttpStats>,
) -> Result<Response, AssetError> {
    let path = resolved.path.clone();
    let name = path.display().to_string();
    let io = |source| AssetError::Io {
        name: name.clone(),
        path: path.clone(),
        source,
    };
    let file = tokio::fs::File::open(&path).await.map_err(io)?;
    let meta = file.metadata().await.map_err(io)?;
    let file = file.into_std().await;
    let len = meta.len();
    let modified = meta.modified().unwrap_or(UNIX_EPOCH);
    let last_modified = http_date(modified);
    let etag = match &resolved.sha256 {
        Some(sha) => format!("\"sha256-{sha}\""),
        None => {
            let nanos = modified
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!("\"{len:x}-{nanos:x}\"")
        }
    };

    let mut common = HeaderMap::new();
    let mut put = |k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            common.insert(k, v);
        }
    };
    put(header::ETAG, &etag);
    put(header::LAST_MODIFIED, &last_modified);
    put(header::ACCEPT_RANGES, "bytes");
    put(header::CONTENT_TYPE, "application/octet-stream");

    let not_modified = match header_str(headers, header::IF_NONE_MATCH) {
        Some(list) => etag_matches(list, &etag),
        None => header_str(headers, header::IF_MODIFIED_SINCE) == Some(last_modified.as_str()),
    };
    if not_modified {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }

    // If-Range: a stale validator means "send it all".
    let range_applies = match header_str(headers, header::IF_RANGE) {
        Some(v) => v == etag || v == last_modified,
        None => true,
    };
    let range = match header_str(headers, header::RANGE) {
        Some(r) if range_applies => parse_range(r, len),
        _ => RangeReq::Full,
    };
    let (status, start, count) = match range {
        RangeReq::Full => (StatusCode::OK, 0, len),
        RangeReq::Partial { start, end } => {
            let mut h = common.clone();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            common = h;
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeReq::Unsatisfiable => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                common.insert(header::CONTENT_RANGE, v);
            }
            stats.rejected("range_unsatisfiable");
            return Ok((StatusCode::RANGE_NOT_SATISFIABLE, common).into_response());
        }
    };
    common.insert(header::CONTENT_LENGTH, HeaderValue::from(count));

    if method == Method::HEAD || count == 0 {
        return Ok((status, common, Body::empty()).into_response());
    }
    let body = Body::from_stream(file_stream(file, start, count, stats, path.clone()));
    Ok((status, common, body).into_response())
}

/// A stream of `count` bytes of `file` from `start`, read [`CHUNK`] bytes at a time on the
/// blocking pool, the next chunk while the current one is being sent (disk and socket overlap;
/// no thread is held while a slow client drains).
///
/// Two buffers alternate and are reused once the connection has dropped what it sent from them
/// (`BytesMut` reclaims a uniquely owned allocation): allocating a fresh 256 KiB buffer per
/// chunk costs page faults and kernel page clearing on every chunk.
fn file_stream(
    mut file: std::fs::File,
    start: u64,
    count: u64,
    stats: Arc<HttpStats>,
    path: PathBuf,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    type Done = (std::fs::File, BytesMut, std::io::Result<Bytes>);
    struct St {
        file: Option<std::fs::File>,
        left: u64,
        pending: Option<tokio::task::JoinHandle<Done>>,
        /// The buffer not being read into (the other travels with the read).
        spare: BytesMut,
        stats: Arc<HttpStats>,
        path: PathBuf,
    }
    impl St {
        /// Starts reading the next chunk into `buf`, if any is left. Reads are sequential on
        /// one file descriptor, so the file travels with the read.
        fn read_ahead(&mut self, buf: BytesMut) {
            if self.left == 0 {
                return;
            }
            let Some(file) = self.file.take() else {
                return;
            };
            let len = usize::try_from(self.left.min(CHUNK as u64)).unwrap_or(CHUNK);
            self.left -= len as u64;
            self.pending = Some(tokio::task::spawn_blocking(move || {
                // Reuses the allocation when nothing cut from it is alive any more.
                let mut vec = Vec::from(buf);
                vec.clear();
                vec.reserve_exact(len);
                // read_to_end fills the spare capacity without zeroing it first.
                let r = match (&file).take(len as u64).read_to_end(&mut vec) {
                    Ok(n) if n == len => Ok(()),
                    Ok(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "file shrank while being sent",
                    )),
                    Err(e) => Err(e),
                };
                // A fresh Bytes is uniquely owned, so this never copies.
                let mut buf = Bytes::from(vec)
                    .try_into_mut()
                    .unwrap_or_else(|b| BytesMut::from(&b[..]));
                let chunk = r.map(|()| buf.split().freeze());
                (file, buf, chunk)
            }));
        }
    }
    let seek = if start > 0 {
        file.seek(SeekFrom::Start(start)).map(|_| ())
    } else {
        Ok(())
    };
    let mut st = St {
        file: Some(file),
        left: count,
        pending: None,
        spare: BytesMut::new(),
        stats,
        path,
    };
    let failed = seek.err();
    if failed.is_none() {
        st.read_ahead(BytesMut::new());
    }
    let head = futures::stream::iter(failed.map(Err));
    head.chain(futures::stream::unfold(st, |mut st| async move {
        let handle = st.pending.take()?;
        let item = match handle.await {
            Ok((file, buf, Ok(chunk))) => {
                HttpStats::add(&st.stats.bytes_sent, chunk.len() as u64);
                st.file = Some(file);
                // The chunk just read is sent from `buf`; the next read goes into the other.
                let next = std::mem::replace(&mut st.spare, buf);
                st.read_ahead(next);
                Ok(chunk)
            }
            Ok((_, _, Err(e))) => Err(std::io::Error::new(
                e.kind(),
                format!("reading {}: {e}", st.path.display()),
            )),
            Err(_) => Err(std::io::Error::other("file reader task failed")),
        };
        Some((item, st))
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("bytes=0-99", 1000),
            RangeReq::Partial { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=990-2000", 1000),
            RangeReq::Partial {
                start: 990,
                end: 999
            }
        );
        assert_eq!(
            parse_range("bytes=-10", 1000),
            RangeReq::Partial {
                start: 990,
                end: 999
            }
        );
        assert_eq!(
            parse_range("bytes=-5000", 1000),
            RangeReq::Partial { start: 0, end: 999 }
        );
        assert_eq!(
            parse_range("bytes=500-", 1000),
            RangeReq::Partial {
                start: 500,
                end: 999
            }
        );
        assert_eq!(parse_range("bytes=1000-", 1000), RangeReq::Unsatisfiable);
        assert_eq!(
            parse_range("bytes=2000-3000", 1000),
            RangeReq::Unsatisfiable
        );
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), RangeReq::Full);
        assert_eq!(parse_range("items=0-1", 1000), RangeReq::Full);
        assert_eq!(parse_range("bytes=5-1", 1000), RangeReq::Full);
        assert_eq!(parse_range("bytes=x-1", 1000), RangeReq::Full);
        assert_eq!(parse_range("bytes=-0", 1000), RangeReq::Unsatisfiable);
    }

    #[test]
    fn dates() {
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(1_709_210_096)),
            "Thu, 29 Feb 2024 12:34:56 GMT"
        );
    }

    #[test]
    fn paths() {
        assert_eq!(check_path("a/b.img").unwrap(), vec!["a", "b.img"]);
        assert!(check_path("../etc/passwd").is_err());
        assert!(check_path("a/./b").is_err());
        assert!(check_path("a//b").is_err());
        assert!(check_path("").is_err());
        assert!(check_path("a\\..\\b").is_err());
    }
}
