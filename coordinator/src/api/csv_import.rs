//! CSV form of an inventory import, for operators whose source of truth is a spreadsheet.
//!
//! Header (order free, unknown columns rejected): `serial,site,rack,u_position,model,
//! bmc_address,bmc_driver,bmc_username,bmc_password,nics,static_ips,tags`; only serial, site
//! and rack are required. Lists inside a cell are `;`-separated:
//! - `nics`: `eno1=52:54:00:00:00:01@tor1:Ethernet1/1;eno2@tor1:Ethernet1/2` (MAC and
//!   `@switch:port` optional),
//! - `static_ips`: `eno1=10.0.0.5/24@10.0.0.1;bmc=10.1.0.5/24` (`@gateway` optional),
//! - `tags`: `gpu;batch-7`.
//!
//! Errors name the line and column, e.g. `line 3: nics`.

use protocol::domain::{
    BmcDriver, BmcSpec, CredentialsInput, ExpectedNic, InventoryInput, StaticIp,
};
use protocol::error::ErrorCode;

use super::error::ApiError;

const COLUMNS: [&str; 12] = [
    "serial",
    "site",
    "rack",
    "u_position",
    "model",
    "bmc_address",
    "bmc_driver",
    "bmc_username",
    "bmc_password",
    "nics",
    "static_ips",
    "tags",
];

fn bad(line: usize, col: &str, msg: impl std::fmt::Display) -> ApiError {
    ApiError::field(
        ErrorCode::InvalidField,
        format!("line {line}: {col}"),
        msg.to_string(),
    )
}

/// Parses a CSV document into import records.
pub fn parse(bytes: &[u8]) -> Result<Vec<InventoryInput>, ApiError> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let headers: Vec<String> = rdr
        .headers()
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("CSV header: {e}")))?
        .iter()
        .map(str::to_owned)
        .collect();
    for h in &headers {
        if !COLUMNS.contains(&h.as_str()) {
            return Err(ApiError::field(
                ErrorCode::UnknownField,
                format!("line 1: {h}"),
                format!("unknown column {h:?}; known: {}", COLUMNS.join(",")),
            ));
        }
    }
    for required in ["serial", "site", "rack"] {
        if !headers.iter().any(|h| h == required) {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                format!("line 1: {required}"),
                format!("required column {required} is missing"),
            ));
        }
    }
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec =
            rec.map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("CSV line {line}: {e}")))?;
        let get = |name: &str| -> &str {
            headers
                .iter()
                .position(|h| h == name)
                .and_then(|p| rec.get(p))
                .unwrap_or("")
        };
        let parse_id = |col: &str| {
            get(col)
                .parse()
                .map_err(|e: protocol::IdError| bad(line, col, e))
        };
        let opt = |col: &str| Some(get(col).to_owned()).filter(|s| !s.is_empty());
        let u_position = match opt("u_position") {
            None => None,
            Some(s) => Some(s.parse::<u16>().map_err(|_| {
                bad(
                    line,
                    "u_position",
                    format!("{s:?} is not a rack unit number"),
                )
            })?),
        };
        let bmc = match opt("bmc_address") {
            None => None,
            Some(address) => {
                let driver = match get("bmc_driver") {
                    "" | "ipmi" => BmcDriver::Ipmi,
                    "redfish" => BmcDriver::Redfish,
                    other => {
                        return Err(bad(
                            line,
                            "bmc_driver",
                            format!("{other:?} is not ipmi or redfish"),
                        ))
                    }
                };
                let credentials = match (opt("bmc_username"), opt("bmc_password")) {
                    (None, None) => None,
                    (Some(username), Some(password)) => {
                        Some(CredentialsInput { username, password })
                    }
                    _ => {
                        return Err(bad(
                            line,
                            "bmc_password",
                            "bmc_username and bmc_password go together",
                        ))
                    }
                };
                Some(BmcSpec {
                    address,
                    driver,
                    credentials,
                })
            }
        };
        let mut nics = Vec::new();
        for item in get("nics")
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (head, wiring) = match item.split_once('@') {
                Some((h, w)) => (h, Some(w)),
                None => (item, None),
            };
            let (name, mac) = match head.split_once('=') {
                Some((n, m)) => (
                    n,
                    Some(
                        m.parse()
                            .map_err(|e: protocol::IdError| bad(line, "nics", e))?,
                    ),
                ),
                None => (head, None),
            };
            let (switch, port) = match wiring {
                None => (None, None),
                Some(w) => match w.split_once(':') {
                    Some((s, p)) if !s.is_empty() && !p.is_empty() => {
                        (Some(s.to_owned()), Some(p.to_owned()))
                    }
                    _ => return Err(bad(line, "nics", format!("{w:?} must be switch:port"))),
                },
            };
            nics.push(ExpectedNic {
                name: name.to_owned(),
                mac,
                switch,
                port,
            });
        }
        let mut static_ips = Vec::new();
        for item in get("static_ips")
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (iface, rest) = item.split_once('=').ok_or_else(|| {
                bad(
                    line,
                    "static_ips",
                    format!("{item:?} must be iface=addr/prefix[@gateway]"),
                )
            })?;
            let (cidr, gw) = match rest.split_once('@') {
                Some((c, g)) => (c, Some(g)),
                None => (rest, None),
            };
            let (addr, prefix) = cidr
                .split_once('/')
                .ok_or_else(|| bad(line, "static_ips", format!("{cidr:?} needs a /prefix")))?;
            static_ips.push(StaticIp {
                interface: iface.to_owned(),
                address: addr.parse().map_err(|_| {
                    bad(line, "static_ips", format!("{addr:?} is not an IP address"))
                })?,
                prefix: prefix.parse().map_err(|_| {
                    bad(
                        line,
                        "static_ips",
                        format!("{prefix:?} is not a prefix length"),
                    )
                })?,
                gateway: gw
                    .map(|g| {
                        g.parse().map_err(|_| {
                            bad(line, "static_ips", format!("{g:?} is not an IP address"))
                        })
                    })
                    .transpose()?,
            });
        }
        let mut tags = std::collections::BTreeSet::new();
        for t in get("tags")
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            tags.insert(
                t.parse()
                    .map_err(|e: protocol::IdError| bad(line, "tags", e))?,
            );
        }
        out.push(InventoryInput {
            serial: parse_id("serial")?,
            site: get("site")
                .parse()
                .map_err(|e: protocol::IdError| bad(line, "site", e))?,
            rack: get("rack")
                .parse()
                .map_err(|e: protocol::IdError| bad(line, "rack", e))?,
            u_position,
            model: opt("model"),
            nics,
            bmc,
            static_ips,
            tags,
        });
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn full_row() {
        let csv = "serial,site,rack,u_position,bmc_address,bmc_driver,bmc_username,bmc_password,nics,static_ips,tags\n\
                   SN1,ams1,r1,12,10.1.0.5,redfish,root,calvin,eno1=52:54:00:00:00:01@tor1:Ethernet1/1;eno2@tor1:Ethernet1/2,eno1=10.0.0.5/24@10.0.0.1;bmc=10.1.0.5/24,gpu;b7\n";
        let r = parse(csv.as_bytes()).unwrap();
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(r.u_position, Some(12));
        assert_eq!(r.nics.len(), 2);
        assert_eq!(r.nics[1].port.as_deref(), Some("Ethernet1/2"));
        assert_eq!(r.static_ips[0].gateway.unwrap().to_string(), "10.0.0.1");
        assert_eq!(r.bmc.as_ref().unwrap().driver, BmcDriver::Redfish);
        assert_eq!(r.tags.len(), 2);
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = parse(b"serial,site,rack,nics\nSN1,a,r,eno1=zz\n").unwrap_err();
        assert_eq!(e.0.field.as_deref(), Some("line 2: nics"));
        let e = parse(b"serial,site,rack,color\nSN1,a,r,blue\n").unwrap_err();
        assert_eq!(e.0.field.as_deref(), Some("line 1: color"));
        let e = parse(b"serial,site\nSN1,a\n").unwrap_err();
        assert_eq!(e.0.field.as_deref(), Some("line 1: rack"));
        let e = parse(b"serial,site,rack\nbad serial,a,r\n").unwrap_err();
        assert_eq!(e.0.field.as_deref(), Some("line 2: serial"));
    }
}
