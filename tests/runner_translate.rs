//! End to end through `Translator` on the tiny synthetic HunYuan checkpoint with a word-level
//! tokenizer.json written here: template -> ids -> batched greedy -> text, stop ids, logit dump.

use hy_quant::runner::prompt::ChatTemplate;
use hy_quant::runner::translator::{write_logit_dump, Prompt, Translator};
use serde_json::{json, Value};

mod common;
use common::tiny_with_tokenizer;

#[test]
fn translate_batch_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_with_tokenizer(tmp.path());
    let mut tr = Translator::load(&dir).unwrap();
    assert_eq!(tr.template, ChatTemplate::Hunyuan);
    // generation_config / config eos 2 (a special here) and the HunYuan end-of-turn token (4).
    assert_eq!(tr.options.stop_ids, vec![2, 4]);
    tr.options.max_new_tokens = 5;
    tr.options.max_batch = 2;
    tr.options.keep_first_logits = true;
    let prompts: Vec<Prompt> = ["w10 w11 w12", "w900", "w5 w6 w7 w8 w9 w10"]
        .iter()
        .map(|t| Prompt {
            text: t.to_string(),
            source_lang: Some("de".into()),
            target_lang: "en".into(),
        })
        .collect();
    let outs = tr.translate_batch(&prompts).unwrap();
    assert_eq!(outs.len(), 3);
    for (p, o) in prompts.iter().zip(&outs) {
        assert_eq!(
            o.prompt_ids[0], 1,
            "prompt starts with <｜hy_begin▁of▁sentence｜>"
        );
        assert_eq!(o.prompt_ids[1], 2, "then <｜hy_User｜>");
        assert_eq!(
            *o.prompt_ids.last().unwrap(),
            3,
            "ends with <｜hy_Assistant｜>"
        );
        assert_eq!(o.n_prompt_tokens, o.prompt_ids.len());
        assert_eq!(o.prompt_ids, tr.prompt_ids(p).unwrap());
        assert!(
            o.token_ids.len() <= 5 && !o.token_ids.iter().any(|t| tr.options.stop_ids.contains(t))
        );
        assert_eq!(o.text, tr.tokenizer.decode(&o.token_ids).unwrap().trim());
    }
    // Solo decoding of one prompt gives the same continuation.
    tr.options.max_batch = 1;
    let solo = tr.translate_batch(&prompts[2..]).unwrap();
    assert_eq!(solo[0].token_ids, outs[2].token_ids);

    let dump = tmp.path().join("dump");
    write_logit_dump(&dump, &dir, &tr, &prompts, &outs).unwrap();
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dump.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["items"].as_array().unwrap().len(), 3);
    assert_eq!(
        std::fs::metadata(dump.join("logits.f32")).unwrap().len(),
        3 * 1024 * 4
    );
}

#[test]
fn tokenizer_larger_than_the_model_vocab_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_with_tokenizer(tmp.path());
    let cfg_path = dir.join("config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["vocab_size"] = json!(512);
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let err = match Translator::load(&dir) {
        Ok(_) => panic!("a 1024-token tokenizer on a 512-row model must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("tokenizer.json") && err.contains("1024") && err.contains("512"),
        "{err}"
    );
}

/// `--device auto` without a GPU runs the CPU reference runner (no VRAM report); with one, the
/// GPU runner, whose VRAM report counts the weights and the KV cache.
#[test]
fn translator_on_the_selected_device() {
    use hy_quant::backend::{Device, DeviceChoice};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_with_tokenizer(tmp.path());
    let selection = Device::select(DeviceChoice::Auto).unwrap();
    let on_gpu = selection.device.is_cuda();
    let mut tr = Translator::load_on(&dir, selection.device).unwrap();
    tr.options.max_new_tokens = 4;
    let out = tr
        .translate_batch(&[Prompt {
            text: "w10 w11 w12".into(),
            source_lang: Some("en".into()),
            target_lang: "zh".into(),
        }])
        .unwrap();
    assert_eq!(out.len(), 1);
    assert!(tr.engine.weight_bytes() > 0);
    match tr.vram() {
        None => assert!(!on_gpu),
        Some(v) => {
            assert!(on_gpu);
            assert_eq!(v.weights_bytes, tr.engine.weight_bytes());
            assert!(v.kv_cache_bytes > 0 && v.peak_allocated_bytes >= v.weights_bytes);
        }
    }
}
