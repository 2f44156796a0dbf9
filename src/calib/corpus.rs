//! The calibration corpus on disk: `*.jsonl` records (see calibration/README.md) or plain
//! `*.txt` files (one document per non-empty line).
//!
//! ```text
//! {"kind":"text","lang":"de","text":"...","source":"..."}
//! {"kind":"pair","src_lang":"en","tgt_lang":"zh","src":"...","tgt":"...","source":"..."}
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, IoContext, Result};
use crate::io::sha256_file;

/// One calibration document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Plain text in one language.
    Text { lang: Option<String>, text: String },
    /// A translation pair, rendered as the model's translation prompt plus the reference as
    /// the assistant's answer.
    Pair {
        src_lang: String,
        tgt_lang: String,
        src: String,
        tgt: String,
    },
}

/// The corpus files read and their records, in file then line order.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// (path, sha256) of every file read, sorted by path.
    pub files: Vec<(PathBuf, String)>,
    pub records: Vec<Record>,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Line {
    Text {
        #[serde(default)]
        lang: Option<String>,
        text: String,
    },
    Pair {
        src_lang: String,
        tgt_lang: String,
        src: String,
        tgt: String,
    },
}

mod bundled {
    include!(concat!(env!("OUT_DIR"), "/bundled_calibration.rs"));
}

/// Label of the bundled corpus in manifests and messages.
pub const BUNDLED_LABEL: &str = "<bundled calibration/>";

impl Corpus {
    /// The corpus shipped in the repository's `calibration/` folder, compiled into the binary.
    pub fn bundled() -> Result<Self> {
        use sha2::{Digest, Sha256};
        if bundled::BUNDLED.is_empty() {
            return Err(Error::Calib {
                path: BUNDLED_LABEL.into(),
                msg: "this build has no bundled corpus; pass --calib FILE|DIR".into(),
            });
        }
        let mut corpus = Corpus {
            files: Vec::new(),
            records: Vec::new(),
        };
        for (name, text) in bundled::BUNDLED {
            let path = PathBuf::from(format!("{BUNDLED_LABEL}{name}"));
            parse_jsonl(&path, text, &mut corpus.records)?;
            corpus
                .files
                .push((path, hex::encode(Sha256::digest(text.as_bytes()))));
        }
        Ok(corpus)
    }

    /// Reads a `.jsonl` / `.txt` file, or every such file directly inside a directory.
    pub fn load(path: &Path) -> Result<Self> {
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .at(path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_corpus_file(p))
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(Error::Calib {
                    path: path.to_path_buf(),
                    msg: "directory holds no .jsonl or .txt file".into(),
                });
            }
            v
        } else if path.is_file() {
            if !is_corpus_file(path) {
                return Err(Error::Calib {
                    path: path.to_path_buf(),
                    msg: "expected a .jsonl or .txt file (or a directory of them)".into(),
                });
            }
            vec![path.to_path_buf()]
        } else {
            return Err(Error::Missing {
                path: path.to_path_buf(),
                what: "calibration corpus (--calib)".into(),
            });
        };
        let mut corpus = Corpus {
            files: Vec::new(),
            records: Vec::new(),
        };
        for file in files {
            let text = std::fs::read_to_string(&file).at(&file)?;
            let before = corpus.records.len();
            if file.extension().is_some_and(|e| e == "jsonl") {
                parse_jsonl(&file, &text, &mut corpus.records)?;
            } else {
                corpus
                    .records
                    .extend(
                        text.lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(|l| Record::Text {
                                lang: None,
                                text: l.to_string(),
                            }),
                    );
            }
            if corpus.records.len() == before {
                return Err(Error::Calib {
                    path: file,
                    msg: "holds no calibration text".into(),
                });
            }
            let (_, sha) = sha256_file(&file)?;
            corpus.files.push((file, sha));
        }
        Ok(corpus)
    }
}

fn is_corpus_file(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "jsonl" || e == "txt")
}

fn parse_jsonl(file: &Path, text: &str, out: &mut Vec<Record>) -> Result<()> {
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || PathBuf::from(format!("{}:{}", file.display(), i + 1));
        let parsed: Line = serde_json::from_str(line).map_err(|e| Error::Calib {
            path: at(),
            msg: format!(
                "{e}; expected {{\"kind\":\"text\",\"text\":...}} or \
                 {{\"kind\":\"pair\",\"src_lang\":...,\"tgt_lang\":...,\"src\":...,\"tgt\":...}}"
            ),
        })?;
        let record = match parsed {
            Line::Text { lang, text } => Record::Text { lang, text },
            Line::Pair {
                src_lang,
                tgt_lang,
                src,
                tgt,
            } => Record::Pair {
                src_lang,
                tgt_lang,
                src,
                tgt,
            },
        };
        let empty = match &record {
            Record::Text { text, .. } => text.trim().is_empty(),
            Record::Pair { src, tgt, .. } => src.trim().is_empty() || tgt.trim().is_empty(),
        };
        if empty {
            return Err(Error::Calib {
                path: at(),
                msg: "empty text".into(),
            });
        }
        out.push(record);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_kinds_and_names_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("a.jsonl");
        std::fs::write(
            &good,
            "{\"kind\":\"text\",\"lang\":\"de\",\"text\":\"Hallo Welt\",\"source\":\"x\"}\n\n\
             {\"kind\":\"pair\",\"src_lang\":\"en\",\"tgt_lang\":\"zh\",\"src\":\"hi\",\"tgt\":\"你好\",\"source\":\"y\"}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("b.txt"), "one\n\n  two  \n").unwrap();
        std::fs::write(dir.path().join("ignored.md"), "not read").unwrap();
        let c = Corpus::load(dir.path()).unwrap();
        assert_eq!(c.files.len(), 2);
        assert_eq!(c.records.len(), 4);
        assert_eq!(
            c.records[1],
            Record::Pair {
                src_lang: "en".into(),
                tgt_lang: "zh".into(),
                src: "hi".into(),
                tgt: "你好".into()
            }
        );
        assert_eq!(
            c.records[3],
            Record::Text {
                lang: None,
                text: "two".into()
            }
        );

        let bad = dir.path().join("bad.jsonl");
        std::fs::write(
            &bad,
            "{\"kind\":\"text\",\"text\":\"ok\"}\n{\"kind\":\"poem\"}\n",
        )
        .unwrap();
        let e = Corpus::load(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.jsonl:2"), "{e}");
        std::fs::write(&bad, "{\"kind\":\"text\",\"text\":\"  \"}\n").unwrap();
        let e = Corpus::load(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.jsonl:1") && e.contains("empty"), "{e}");
        std::fs::write(&bad, "\n").unwrap();
        let e = Corpus::load(&bad).unwrap_err().to_string();
        assert!(e.contains("no calibration text"), "{e}");
        let e = Corpus::load(&dir.path().join("nope.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.jsonl"), "{e}");
    }
}
