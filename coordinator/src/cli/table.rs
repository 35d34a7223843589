//! A tiny text-table renderer for `metalctl`'s human output: a header row, columns aligned
//! by character count, two spaces between columns, no trailing whitespace. Also the
//! timestamp and placeholder conventions every table shares.

/// Shown for an absent value, so columns never look shifted.
pub const NONE: &str = "-";

/// Rows of text under a header.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new<I, S>(header: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells render empty, extra cells are kept (and widen the table).
    pub fn row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    /// Number of data rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no data rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, each ending in `\n`.
    pub fn render(&self) -> String {
        let ncols = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; ncols];
        for line in std::iter::once(&self.header).chain(&self.rows) {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.header).chain(&self.rows) {
            let mut text = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = line.get(i).map(|c| clean(c)).unwrap_or_default();
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(&cell);
                text.extend(std::iter::repeat_n(' ', w - width(&cell)));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Key/value lines (`Key:  value`) with the values aligned, for single-object views.
pub fn fields<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let pairs: Vec<(&str, String)> = pairs.into_iter().collect();
    let w = pairs.iter().map(|(k, _)| width(k) + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let key = format!("{k}:");
        let line = format!("{key}{}  {}", " ".repeat(w - width(&key)), clean(&v));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Display width, counted in characters (names and ids are ASCII; good enough for the rest).
fn width(s: &str) -> usize {
    s.chars().count()
}

/// A cell must stay on one line: control characters (newlines, tabs) become spaces.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `Some(x)` as text, `None` as [`NONE`].
pub fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| NONE.to_owned())
}

/// Items joined with `,`, or [`NONE`] when there are none.
pub fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let s: Vec<String> = items.into_iter().map(|x| x.to_string()).collect();
    if s.is_empty() {
        NONE.to_owned()
    } else {
        s.join(",")
    }
}

/// Milliseconds since the Unix epoch as UTC `YYYY-MM-DDTHH:MM:SSZ` (sub-second part
/// dropped). Rendered by hand so output does not depend on the local time zone.
pub fn time_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `then` relative to `now` (both ms since the epoch) in one truncated unit: `3s ago`,
/// `5m ago`, `in 59m`. Each unit is used up to twice the next one (`90s`, `100m`, `36h`) so
/// short spans keep their precision. Callers pass `now` so renderings stay pure.
pub fn relative_ms(then: i64, now: i64) -> String {
    let diff = now.saturating_sub(then);
    let secs = diff.unsigned_abs() / 1000;
    let span = match secs {
        0..120 => format!("{secs}s"),
        120..7_200 => format!("{}m", secs / 60),
        7_200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    };
    // A time ahead of ours (an expiry, clock skew) says so instead of clamping to "now";
    // under a second either way is "0s ago".
    if diff < 0 && secs > 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn aligns_and_trims() {
        let mut t = Table::new(["NAME", "DESCRIPTION"]);
        t.row(["ams1", "Amsterdam"]).row(["fra10", ""]);
        assert_eq!(t.render(), "NAME   DESCRIPTION\nams1   Amsterdam\nfra10\n");
    }

    #[test]
    fn control_characters_stay_on_one_line() {
        let mut t = Table::new(["A", "B"]);
        t.row(["x\ny", "z"]);
        assert_eq!(t.render(), "A    B\nx y  z\n");
    }

    #[test]
    fn times() {
        assert_eq!(time_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(time_ms(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(time_ms(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(time_ms(-1000), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn relative_times() {
        let now = 1_700_000_000_000;
        assert_eq!(relative_ms(now, now), "0s ago");
        assert_eq!(relative_ms(now - 3_400, now), "3s ago");
        assert_eq!(relative_ms(now - 119_999, now), "119s ago");
        assert_eq!(relative_ms(now - 120_000, now), "2m ago");
        assert_eq!(relative_ms(now - 7_199_999, now), "119m ago");
        assert_eq!(relative_ms(now - 7_200_000, now), "2h ago");
        assert_eq!(relative_ms(now - 3 * 86_400_000, now), "3d ago");
        assert_eq!(relative_ms(now + 3_600_000, now), "in 60m");
        assert_eq!(relative_ms(now + 500, now), "0s ago");
        assert_eq!(
            relative_ms(i64::MIN, i64::MAX),
            format!("{}d ago", i64::MAX / 86_400_000)
        );
    }

    #[test]
    fn key_values() {
        assert_eq!(
            fields([("Id", "1".into()), ("Serial", "SN1".into())]),
            "Id:      1\nSerial:  SN1\n"
        );
    }
}
