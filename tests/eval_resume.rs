//! `eval --resume` on the tiny synthetic model (which ships a word-level tokenizer): finished
//! hypotheses are reused only for the same model files and settings; everything else is
//! translated again.

use std::path::Path;

use serde_json::Value;

mod common;
use common::{ok, run, synth_tiny};

fn eval_json(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("eval.json")).unwrap()).unwrap()
}

fn reused(report: &Value) -> Vec<(String, bool)> {
    report["models"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| {
            m["sets"].as_array().unwrap().iter().map(move |s| {
                (
                    format!(
                        "{}:{}",
                        m["label"].as_str().unwrap(),
                        s["testset"].as_str().unwrap()
                    ),
                    s["reused"].as_bool().unwrap(),
                )
            })
        })
        .collect()
}

#[test]
fn resume_reuses_only_matching_hypotheses() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synth_tiny(tmp.path(), "tiny", 3);
    let q = tmp.path().join("int8");
    ok(&[
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--out",
        q.to_str().unwrap(),
        "--bits",
        "8",
        "--group-size",
        "32",
    ]);
    let mut tsv = String::new();
    for i in 0..6 {
        tsv.push_str(&format!(
            "w{} w{} w{}\tw{} w{}\n",
            10 + i,
            20 + i,
            30 + i,
            40 + i,
            50 + i
        ));
    }
    let set_a = tmp.path().join("a.en-de.tsv");
    let set_b = tmp.path().join("b.de-en.tsv");
    std::fs::write(&set_a, &tsv).unwrap();
    std::fs::write(&set_b, &tsv).unwrap();
    let out = tmp.path().join("eval");
    let args = |resume: bool| {
        let mut v = vec![
            "eval".to_string(),
            "--original".into(),
            model.to_str().unwrap().into(),
            "--quantized".into(),
            q.to_str().unwrap().into(),
            "--testset".into(),
            set_a.to_str().unwrap().into(),
            set_b.to_str().unwrap().into(),
            "--max-new-tokens".into(),
            "6".into(),
            "--out".into(),
            out.to_str().unwrap().into(),
        ];
        if resume {
            v.push("--resume".into());
        }
        v
    };
    let run_eval = |resume: bool| {
        let a = args(resume);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let (code, _, err) = run(&refs);
        assert_eq!(code, 0, "{err}");
        eval_json(&out)
    };
    let first = run_eval(false);
    assert!(reused(&first).iter().all(|(_, r)| !r));
    let hyp_a = std::fs::read(out.join("hyp/int8.a.en-de.tsv.txt")).unwrap();

    // Everything matches: nothing is translated again, the scores are the same.
    let again = run_eval(true);
    assert!(
        reused(&again).iter().all(|(_, r)| *r),
        "{:?}",
        reused(&again)
    );
    for (m1, m2) in first["models"]
        .as_array()
        .unwrap()
        .iter()
        .zip(again["models"].as_array().unwrap())
    {
        assert_eq!(m1["weight_bytes_resident"], m2["weight_bytes_resident"]);
        for (s1, s2) in m1["sets"]
            .as_array()
            .unwrap()
            .iter()
            .zip(m2["sets"].as_array().unwrap())
        {
            assert_eq!(s1["bleu"], s2["bleu"]);
            assert_eq!(s1["chrf"], s2["chrf"]);
            assert_eq!(s1["delta_bleu"], s2["delta_bleu"]);
        }
    }

    // An interrupted run: one set's hypotheses are incomplete, so only that set is redone.
    std::fs::write(out.join("hyp/int8.b.de-en.tsv.txt"), "partial\n").unwrap();
    let partial = run_eval(true);
    let flags = reused(&partial);
    assert!(
        flags.contains(&("int8:b.de-en.tsv".into(), false)),
        "{flags:?}"
    );
    assert!(
        flags.contains(&("int8:a.en-de.tsv".into(), true)),
        "{flags:?}"
    );
    assert!(
        flags.contains(&("original:b.de-en.tsv".into(), true)),
        "{flags:?}"
    );

    // Other settings (max new tokens) or other model files: translated again.
    let mut a = args(true);
    let i = a.iter().position(|x| x == "6").unwrap();
    a[i] = "5".into();
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    assert_eq!(run(&refs).0, 0);
    assert!(reused(&eval_json(&out)).iter().all(|(_, r)| !r));
    ok(&[
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--out",
        q.to_str().unwrap(),
        "--bits",
        "4",
        "--group-size",
        "32",
    ]);
    // Same settings as the last run (5 new tokens): the original is reused, int8 is not.
    assert_eq!(run(&refs).0, 0);
    let flags = reused(&eval_json(&out));
    assert!(
        flags
            .iter()
            .filter(|(l, _)| l.starts_with("int8:"))
            .all(|(_, r)| !r),
        "{flags:?}"
    );
    assert!(
        flags
            .iter()
            .filter(|(l, _)| l.starts_with("original:"))
            .all(|(_, r)| *r),
        "{flags:?}"
    );
    assert_ne!(
        std::fs::read(out.join("hyp/int8.a.en-de.tsv.txt"))
            .unwrap()
            .len(),
        0
    );
    assert!(!hyp_a.is_empty());
}
