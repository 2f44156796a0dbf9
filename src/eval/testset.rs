//! Parallel test sets: one `source<TAB>reference` pair per line, UTF-8. Errors name the file
//! and the 1-based line number.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub source: String,
    pub reference: String,
}

#[derive(Clone, Debug)]
pub struct TestSet {
    pub path: PathBuf,
    pub pairs: Vec<Pair>,
}

impl TestSet {
    /// Reads `path`; `limit` keeps the first N pairs.
    pub fn read(path: &Path, limit: Option<usize>) -> Result<Self> {
        let bytes = std::fs::read(path).at(path)?;
        Self::parse(path, &bytes, limit)
    }

    pub fn parse(path: &Path, bytes: &[u8], limit: Option<usize>) -> Result<Self> {
        let bad = |line: usize, msg: String| Error::config(path, format!("line {line}: {msg}"));
        let mut pairs = Vec::new();
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line_no = i + 1;
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.is_empty() {
                continue;
            }
            let line = std::str::from_utf8(raw).map_err(|e| {
                bad(
                    line_no,
                    format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                )
            })?;
            let cols: Vec<&str> = line.split('\t').collect();
            if cols.len() != 2 {
                return Err(bad(
                    line_no,
                    format!(
                        "{} tab-separated columns, expected 2 (source, reference)",
                        cols.len()
                    ),
                ));
            }
            if cols[0].trim().is_empty() {
                return Err(bad(line_no, "empty source".into()));
            }
            pairs.push(Pair {
                source: cols[0].to_string(),
                reference: cols[1].to_string(),
            });
            if limit.is_some_and(|n| pairs.len() >= n) {
                break;
            }
        }
        if pairs.is_empty() {
            return Err(Error::config(path, "no segment pairs"));
        }
        Ok(TestSet {
            path: path.to_path_buf(),
            pairs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[u8]) -> Result<TestSet> {
        TestSet::parse(Path::new("t.tsv"), s, None)
    }

    #[test]
    fn reads_pairs_and_skips_blank_lines() {
        let t = parse("a\tb\r\n\nc\td\n".as_bytes()).unwrap();
        assert_eq!(t.pairs.len(), 2);
        assert_eq!(
            t.pairs[1],
            Pair {
                source: "c".into(),
                reference: "d".into()
            }
        );
    }

    #[test]
    fn wrong_column_count_names_the_line() {
        let e = parse(b"a\tb\nc\td\te\n").unwrap_err().to_string();
        assert!(
            e.contains("t.tsv") && e.contains("line 2") && e.contains("3 tab-separated"),
            "{e}"
        );
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let e = parse(b"a\tb\nc\td\n\xff\tx\n").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn limit_keeps_the_first_pairs() {
        let t = TestSet::parse(Path::new("t"), b"a\t1\nb\t2\nc\t3\n", Some(2)).unwrap();
        assert_eq!(t.pairs.len(), 2);
    }
}
