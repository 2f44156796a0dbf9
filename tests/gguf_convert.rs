//! `convert_gguf` end to end: small GGUF files written by the test itself, plus (ignored by
//! default) the real Qwen2.5-Coder-0.5B GGUF.

use std::fs;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use hy_quant::convert::{convert_gguf, ConvertError, ConvertOptions, OutputDtype};
use hy_quant::gguf::{dequantize, GgmlType, GgufFile};
use safetensors::SafeTensors;
use serde_json::Value;

// ---------------------------------------------------------------- tiny GGUF writer

#[derive(Clone)]
enum Val {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArr(Vec<String>),
    I32Arr(Vec<i32>),
}

struct Tensor {
    name: String,
    /// ggml order (ne[0] fastest)
    dims: Vec<u64>,
    type_id: u32,
    data: Vec<u8>,
}

#[derive(Default)]
struct GgufWriter {
    kv: Vec<(String, Val)>,
    tensors: Vec<Tensor>,
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

impl GgufWriter {
    fn kv(&mut self, k: &str, v: Val) -> &mut Self {
        self.kv.retain(|(key, _)| key != k);
        self.kv.push((k.into(), v));
        self
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> &mut Self {
        self.tensors.retain(|t| t.name != name);
        self.tensors.push(Tensor {
            name: name.into(),
            dims: dims.to_vec(),
            type_id: ty.id(),
            data,
        });
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(b"GGUF");
        b.extend(3u32.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut b, k);
            match v {
                Val::U32(x) => {
                    b.extend(4u32.to_le_bytes());
                    b.extend(x.to_le_bytes());
                }
                Val::F32(x) => {
                    b.extend(6u32.to_le_bytes());
                    b.extend(x.to_le_bytes());
                }
                Val::Bool(x) => {
                    b.extend(7u32.to_le_bytes());
                    b.push(*x as u8);
                }
                Val::Str(s) => {
                    b.extend(8u32.to_le_bytes());
                    put_str(&mut b, s);
                }
                Val::StrArr(a) => {
                    b.extend(9u32.to_le_bytes());
                    b.extend(8u32.to_le_bytes());
                    b.extend((a.len() as u64).to_le_bytes());
                    for s in a {
                        put_str(&mut b, s);
                    }
                }
                Val::I32Arr(a) => {
                    b.extend(9u32.to_le_bytes());
                    b.extend(5u32.to_le_bytes());
                    b.extend((a.len() as u64).to_le_bytes());
                    for x in a {
                        b.extend(x.to_le_bytes());
                    }
                }
            }
        }
        let mut offset = 0u64;
        let mut offsets = vec![];
        for t in &self.tensors {
            put_str(&mut b, &t.name);
            b.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(t.type_id.to_le_bytes());
            b.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len() as u64).div_ceil(32) * 32;
        }
        while b.len() % 32 != 0 {
            b.push(0);
        }
        let start = b.len() as u64;
        for (t, off) in self.tensors.iter().zip(offsets) {
            b.resize((start + off) as usize, 0);
            b.extend(&t.data);
        }
        b
    }
    fn write(&self, path: &Path) {
        fs::write(path, self.bytes()).unwrap();
    }
}

// ---------------------------------------------------------------- deterministic test data

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f(&mut self) -> f32 {
        (self.next() % 20001) as f32 / 10000.0 - 1.0
    }
}

fn f16b(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_bits().to_le_bytes()
}

/// Random blocks of type `ty` for `n` elements, with finite small scales.
fn random_data(ty: GgmlType, n: usize, rng: &mut Rng) -> Vec<u8> {
    match ty {
        GgmlType::F32 => (0..n).flat_map(|_| rng.f().to_le_bytes()).collect(),
        GgmlType::F16 => (0..n).flat_map(|_| f16b(rng.f())).collect(),
        GgmlType::Bf16 => (0..n)
            .flat_map(|_| bf16::from_f32(rng.f()).to_bits().to_le_bytes())
            .collect(),
        _ => {
            let (bs, ts) = (ty.block_size() as usize, ty.type_size() as usize);
            // byte offsets of f16 scale fields (ggml-common.h)
            let scales: &[usize] = match ty {
                GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
                GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
                GgmlType::Q2K => &[80, 82],
                GgmlType::Q3K => &[108],
                GgmlType::Q6K => &[208],
                _ => panic!("no test data for {ty}"),
            };
            let mut out = Vec::with_capacity(n / bs * ts);
            for _ in 0..n / bs {
                let mut blk: Vec<u8> = (0..ts).map(|_| rng.next() as u8).collect();
                for &o in scales {
                    blk[o..o + 2].copy_from_slice(&f16b(rng.f() * 0.05));
                }
                out.extend(blk);
            }
            out
        }
    }
}

// ---------------------------------------------------------------- toy model

const HIDDEN: u64 = 256;
const HEADS: u64 = 4;
const KV_HEADS: u64 = 2;
const HEAD_DIM: u64 = HIDDEN / HEADS;
const INTER: u64 = 256;

/// A byte-level BPE toy vocabulary: 256 byte tokens, a few merges, 4 added tokens.
fn toy_vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut byte_chars = vec!['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        byte_chars[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap()
        };
    }
    let mut tokens: Vec<String> = byte_chars.iter().map(|c| c.to_string()).collect();
    let merges: Vec<String> = ["Ġ t", "Ġt h", "Ġth e", "h e", "l l", "he ll", "hell o"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for m in &merges {
        tokens.push(m.replace(' ', ""));
    }
    let mut types = vec![1; tokens.len()];
    for (t, ty) in [
        ("<|endoftext|>", 3),
        ("<|im_start|>", 3),
        ("<|im_end|>", 3),
        ("<tool_call>", 4),
        ("[PAD267]", 5),
    ] {
        tokens.push(t.into());
        types.push(ty);
    }
    (tokens, types, merges)
}

fn toy_model(arch: &str, types: &[GgmlType], tied: bool, seed: u64) -> GgufWriter {
    let mut rng = Rng(seed);
    let (tokens, token_types, merges) = toy_vocab();
    let vocab = tokens.len() as u64;
    let mut w = GgufWriter::default();
    w.kv("general.architecture", Val::Str(arch.into()))
        .kv(&format!("{arch}.block_count"), Val::U32(2))
        .kv(&format!("{arch}.context_length"), Val::U32(4096))
        .kv(&format!("{arch}.embedding_length"), Val::U32(HIDDEN as u32))
        .kv(
            &format!("{arch}.feed_forward_length"),
            Val::U32(INTER as u32),
        )
        .kv(
            &format!("{arch}.attention.head_count"),
            Val::U32(HEADS as u32),
        )
        .kv(
            &format!("{arch}.attention.head_count_kv"),
            Val::U32(KV_HEADS as u32),
        )
        .kv(&format!("{arch}.rope.freq_base"), Val::F32(1_000_000.0))
        .kv(
            &format!("{arch}.attention.layer_norm_rms_epsilon"),
            Val::F32(1e-6),
        )
        .kv("tokenizer.ggml.model", Val::Str("gpt2".into()))
        .kv("tokenizer.ggml.pre", Val::Str("qwen2".into()))
        .kv("tokenizer.ggml.tokens", Val::StrArr(tokens))
        .kv("tokenizer.ggml.token_type", Val::I32Arr(token_types))
        .kv("tokenizer.ggml.merges", Val::StrArr(merges))
        .kv("tokenizer.ggml.bos_token_id", Val::U32(263))
        .kv("tokenizer.ggml.eos_token_id", Val::U32(265))
        .kv("tokenizer.ggml.padding_token_id", Val::U32(263))
        .kv("tokenizer.ggml.add_bos_token", Val::Bool(false))
        .kv("tokenizer.chat_template", Val::Str("{{ messages }}".into()));
    let mut ty_iter = types.iter().cycle();
    let mut next_ty = || *ty_iter.next().unwrap();
    let mut add = |w: &mut GgufWriter, name: &str, dims: &[u64], ty: GgmlType| {
        let n: u64 = dims.iter().product();
        let data = random_data(ty, n as usize, &mut rng);
        w.tensor(name, dims, ty, data);
    };
    add(&mut w, "token_embd.weight", &[HIDDEN, vocab], GgmlType::F16);
    add(&mut w, "output_norm.weight", &[HIDDEN], GgmlType::F32);
    if !tied {
        add(&mut w, "output.weight", &[HIDDEN, vocab], GgmlType::Q8_0);
    }
    for l in 0..2 {
        let p = |s: &str| format!("blk.{l}.{s}");
        add(&mut w, &p("attn_norm.weight"), &[HIDDEN], GgmlType::F32);
        add(&mut w, &p("ffn_norm.weight"), &[HIDDEN], GgmlType::F32);
        add(
            &mut w,
            &p("attn_q.weight"),
            &[HIDDEN, HEADS * HEAD_DIM],
            next_ty(),
        );
        add(
            &mut w,
            &p("attn_k.weight"),
            &[HIDDEN, KV_HEADS * HEAD_DIM],
            next_ty(),
        );
        add(
            &mut w,
            &p("attn_v.weight"),
            &[HIDDEN, KV_HEADS * HEAD_DIM],
            next_ty(),
        );
        add(
            &mut w,
            &p("attn_output.weight"),
            &[HEADS * HEAD_DIM, HIDDEN],
            next_ty(),
        );
        add(&mut w, &p("ffn_gate.weight"), &[HIDDEN, INTER], next_ty());
        add(&mut w, &p("ffn_up.weight"), &[HIDDEN, INTER], next_ty());
        add(&mut w, &p("ffn_down.weight"), &[INTER, HIDDEN], next_ty());
        if arch == "qwen2" {
            add(
                &mut w,
                &p("attn_q.bias"),
                &[HEADS * HEAD_DIM],
                GgmlType::F32,
            );
            add(
                &mut w,
                &p("attn_k.bias"),
                &[KV_HEADS * HEAD_DIM],
                GgmlType::F32,
            );
            add(
                &mut w,
                &p("attn_v.bias"),
                &[KV_HEADS * HEAD_DIM],
                GgmlType::F32,
            );
        }
        if arch == "hunyuan-dense" {
            add(&mut w, &p("attn_q_norm.weight"), &[HEAD_DIM], GgmlType::F32);
            add(&mut w, &p("attn_k_norm.weight"), &[HEAD_DIM], GgmlType::F32);
        }
    }
    w
}

const ALL_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

fn opts(dtype: OutputDtype) -> ConvertOptions {
    ConvertOptions {
        dtype,
        ..Default::default()
    }
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

/// Every written tensor equals the dequantized GGUF tensor rounded to `dtype`.
fn assert_round_trip(gguf: &Path, out: &Path, dtype: OutputDtype, unpermute: bool) -> usize {
    let g = GgufFile::open(gguf).unwrap();
    let bytes = fs::read(out.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let arch = g.get_str("general.architecture").unwrap().to_string();
    let mut checked = 0;
    for t in g.tensors() {
        let m = hy_quant::gguf::names::map_name(&arch, &t.name, HEADS as usize, KV_HEADS as usize)
            .unwrap()
            .unwrap();
        let view = st.tensor(&m.hf_name).unwrap();
        assert_eq!(view.shape(), t.shape().as_slice(), "{}", t.name);
        let mut f = vec![0f32; t.n_elements() as usize];
        dequantize(&t.name, t.ggml_type, g.tensor_data(t), &mut f).unwrap();
        if unpermute {
            if let Some(h) = m.unpermute_heads {
                let rows = t.shape()[0];
                f = hy_quant::gguf::names::unpermute_rows(&f, rows, f.len() / rows, h).unwrap();
            }
        }
        let want: Vec<u8> = f
            .iter()
            .flat_map(|&v| match dtype {
                OutputDtype::Bf16 => bf16::from_f32(v).to_bits().to_le_bytes(),
                OutputDtype::F16 => f16::from_f32(v).to_bits().to_le_bytes(),
            })
            .collect();
        assert!(view.data() == want.as_slice(), "{} differs", t.name);
        checked += 1;
    }
    checked
}

// ---------------------------------------------------------------- tests

#[test]
fn round_trip_every_block_type_bf16_and_f16() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("toy.gguf");
    toy_model("qwen2", ALL_TYPES, false, 7).write(&gguf);
    for dtype in [OutputDtype::Bf16, OutputDtype::F16] {
        let out = dir.path().join(format!("out-{dtype:?}"));
        let r = convert_gguf(&gguf, &out, &opts(dtype)).unwrap();
        let n = assert_round_trip(&gguf, &out, dtype, false);
        assert_eq!(n, r.tensors_written);
        // every block type appears in the input
        for t in ALL_TYPES {
            assert!(r.source_types.contains_key(t.name()), "{t} missing");
        }
        let st = fs::read(out.join("model.safetensors")).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&st).unwrap();
        assert_eq!(
            meta.metadata()
                .as_ref()
                .unwrap()
                .get("format")
                .map(String::as_str),
            Some("pt")
        );
        assert!(!dir
            .path()
            .join(format!("out-{dtype:?}.hyq-partial"))
            .exists());
    }
}

#[test]
fn llama_q_k_rows_are_unpermuted() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("llama.gguf");
    let mut w = toy_model("llama", &[GgmlType::F32], true, 3);
    // GGUF row r holds the value of the HF row it came from (llama.cpp permute):
    // r = h*d + 2i + j  <-  HF row h*d + j*(d/2) + i
    for (name, heads) in [
        ("blk.0.attn_q.weight", HEADS),
        ("blk.0.attn_k.weight", KV_HEADS),
    ] {
        let d = HEAD_DIM;
        let mut data = vec![];
        for r in 0..heads * d {
            let (h, within) = (r / d, r % d);
            let (i, j) = (within / 2, within % 2);
            let hf_row = h * d + j * (d / 2) + i;
            for c in 0..HIDDEN {
                data.extend((hf_row as f32 * 1000.0 + c as f32).to_le_bytes());
            }
        }
        w.tensor(name, &[HIDDEN, heads * d], GgmlType::F32, data);
    }
    w.write(&gguf);
    let out = dir.path().join("out");
    let r = convert_gguf(&gguf, &out, &opts(OutputDtype::Bf16)).unwrap();
    assert!(r
        .unpermuted
        .contains(&"model.layers.0.self_attn.q_proj.weight".to_string()));
    assert!(r
        .unpermuted
        .contains(&"model.layers.1.self_attn.k_proj.weight".to_string()));
    let bytes = fs::read(out.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for (name, rows) in [
        ("q_proj", HEADS * HEAD_DIM),
        ("k_proj", KV_HEADS * HEAD_DIM),
    ] {
        let v = st
            .tensor(&format!("model.layers.0.self_attn.{name}.weight"))
            .unwrap();
        let vals: Vec<f32> = v
            .data()
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        for row in 0..rows as usize {
            let want = bf16::from_f32(row as f32 * 1000.0).to_f32();
            assert_eq!(vals[row * HIDDEN as usize], want, "{name} row {row}");
        }
    }
    // the rest still round-trips (with the same un-permutation)
    assert_round_trip(&gguf, &out, OutputDtype::Bf16, true);
    let cfg = read_json(&out.join("config.json"));
    assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
    assert_eq!(cfg["tie_word_embeddings"], true);
    assert!(st.tensor("lm_head.weight").is_err());
}

#[test]
fn qwen2_and_hunyuan_are_not_permuted_and_names_map() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["qwen2", "hunyuan-dense"] {
        let gguf = dir.path().join(format!("{arch}.gguf"));
        toy_model(arch, &[GgmlType::Q8_0], true, 11).write(&gguf);
        let out = dir.path().join(format!("{arch}-out"));
        let r = convert_gguf(&gguf, &out, &opts(OutputDtype::Bf16)).unwrap();
        assert!(r.unpermuted.is_empty(), "{arch}");
        assert_round_trip(&gguf, &out, OutputDtype::Bf16, false);
        let bytes = fs::read(out.join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
        names.sort();
        assert!(names.contains(&"model.embed_tokens.weight".to_string()));
        assert!(names.contains(&"model.norm.weight".to_string()));
        assert!(names.contains(&"model.layers.1.mlp.down_proj.weight".to_string()));
        assert!(names.contains(&"model.layers.1.post_attention_layernorm.weight".to_string()));
        if arch == "hunyuan-dense" {
            assert!(names.contains(&"model.layers.0.self_attn.query_layernorm.weight".into()));
            assert!(names.contains(&"model.layers.0.self_attn.key_layernorm.weight".into()));
        } else {
            assert!(names.contains(&"model.layers.0.self_attn.q_proj.bias".into()));
        }
        assert!(!names.iter().any(|n| n.contains("lm_head")));
    }
}

#[test]
fn config_json_per_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("q.gguf");
    toy_model("qwen2", &[GgmlType::F16], true, 1).write(&gguf);
    let out = dir.path().join("q");
    convert_gguf(&gguf, &out, &opts(OutputDtype::F16)).unwrap();
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["architectures"][0], "Qwen2ForCausalLM");
    assert_eq!(c["model_type"], "qwen2");
    assert_eq!(c["hidden_size"], 256);
    assert_eq!(c["intermediate_size"], 256);
    assert_eq!(c["num_hidden_layers"], 2);
    assert_eq!(c["num_attention_heads"], 4);
    assert_eq!(c["num_key_value_heads"], 2);
    assert_eq!(c["rope_theta"], 1_000_000.0);
    assert_eq!(c["rms_norm_eps"], 1e-6);
    assert_eq!(c["max_position_embeddings"], 4096);
    assert_eq!(c["vocab_size"], 268);
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["use_sliding_window"], false);
    assert_eq!(c["torch_dtype"], "float16");
    assert_eq!(c["dtype"], "float16");
    assert_eq!(c["bos_token_id"], 263);
    assert_eq!(c["eos_token_id"], 265);
    let gen = read_json(&out.join("generation_config.json"));
    assert_eq!(gen["bos_token_id"], 263);
    assert_eq!(gen["eos_token_id"], 265);
    assert_eq!(gen["pad_token_id"], 263);

    // hunyuan-dense: llama.cpp folds alpha=1000 into freq_base; the converter unfolds it.
    let gguf = dir.path().join("hy.gguf");
    let mut w = toy_model("hunyuan-dense", &[GgmlType::F16], true, 1);
    let folded = 10000f64 * 1000f64.powf(HEAD_DIM as f64 / (HEAD_DIM as f64 - 2.0));
    w.kv("hunyuan-dense.rope.freq_base", Val::F32(folded as f32))
        .kv(
            "hunyuan-dense.attention.layer_norm_rms_epsilon",
            Val::F32(1e-5),
        )
        .kv("tokenizer.ggml.pre", Val::Str("hunyuan-dense".into()));
    w.write(&gguf);
    let out = dir.path().join("hy");
    convert_gguf(&gguf, &out, &opts(OutputDtype::Bf16)).unwrap();
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["architectures"][0], "HunYuanDenseV1ForCausalLM");
    assert_eq!(c["model_type"], "hunyuan_v1_dense");
    assert_eq!(c["rope_theta"], 10000.0);
    assert_eq!(c["rope_scaling"]["type"], "dynamic");
    assert_eq!(c["rope_scaling"]["alpha"], 1000.0);
    assert_eq!(c["use_qk_norm"], true);
    assert_eq!(c["head_dim"], HEAD_DIM);
    assert_eq!(c["rms_norm_eps"], 1e-5);
    assert_eq!(c["torch_dtype"], "bfloat16");
    let t = read_json(&out.join("tokenizer.json"));
    assert_eq!(
        t["pre_tokenizer"]["pretokenizers"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn tokenizer_from_toy_vocab_loads_and_encodes() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("t.gguf");
    toy_model("qwen2", &[GgmlType::F16], true, 1).write(&gguf);
    let out = dir.path().join("t");
    convert_gguf(&gguf, &out, &opts(OutputDtype::Bf16)).unwrap();
    let tk = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let (tokens, _, _) = toy_vocab();
    let id = |s: &str| tokens.iter().position(|t| t == s).unwrap() as u32;
    let enc = tk.encode("hello the", false).unwrap();
    assert_eq!(enc.get_ids(), &[id("hello"), id("Ġthe")]);
    let text = "<|im_start|>user\nhello<|im_end|><tool_call>";
    let enc = tk.encode(text, false).unwrap();
    assert_eq!(
        enc.get_ids(),
        &[
            id("<|im_start|>"),
            id("u"),
            id("s"),
            id("e"),
            id("r"),
            id("Ċ"),
            id("hello"),
            id("<|im_end|>"),
            id("<tool_call>")
        ]
    );
    assert_eq!(tk.decode(enc.get_ids(), false).unwrap(), text);
    // special tokens are skipped on request, user-defined ones are not
    assert_eq!(
        tk.decode(enc.get_ids(), true).unwrap(),
        "user\nhello<tool_call>"
    );
    // bytes outside the merges still round-trip
    let s = "Grüße, 世界! 🙂";
    let enc = tk.encode(s, false).unwrap();
    assert_eq!(tk.decode(enc.get_ids(), false).unwrap(), s);

    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["eos_token"], "<|im_end|>");
    assert_eq!(tc["pad_token"], "<|endoftext|>");
    assert_eq!(tc["chat_template"], "{{ messages }}");
    assert_eq!(tc["model_max_length"], 4096);
    assert_eq!(tc["added_tokens_decoder"]["264"]["special"], true);
    assert_eq!(tc["added_tokens_decoder"]["266"]["special"], false);
}

#[test]
fn output_is_deterministic_and_shards_with_index() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("m.gguf");
    toy_model("qwen2", &[GgmlType::Q4K, GgmlType::Q6K], false, 5).write(&gguf);
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    convert_gguf(&gguf, &a, &opts(OutputDtype::Bf16)).unwrap();
    convert_gguf(&gguf, &b, &opts(OutputDtype::Bf16)).unwrap();
    let list = |p: &Path| {
        let mut v: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list(&a), list(&b));
    for f in list(&a) {
        assert!(
            fs::read(a.join(&f)).unwrap() == fs::read(b.join(&f)).unwrap(),
            "{f}"
        );
    }

    let s = dir.path().join("sharded");
    let r = convert_gguf(
        &gguf,
        &s,
        &ConvertOptions {
            dtype: OutputDtype::Bf16,
            force: false,
            max_shard_bytes: Some(300_000),
        },
    )
    .unwrap();
    assert!(r.shards.len() > 1);
    let n = r.shards.len();
    assert_eq!(r.shards[0], format!("model-00001-of-{n:05}.safetensors"));
    let idx = read_json(&s.join("model.safetensors.index.json"));
    let wm = idx["weight_map"].as_object().unwrap();
    assert_eq!(wm.len(), r.tensors_written);
    let mut total = 0u64;
    for shard in &r.shards {
        let bytes = fs::read(s.join(shard)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (name, v) in st.tensors() {
            assert_eq!(wm[&name], shard.as_str());
            total += v.data().len() as u64;
        }
    }
    assert_eq!(idx["metadata"]["total_size"], total);
    assert!(!s.join("model.safetensors").exists());
}

#[test]
fn existing_output_needs_force_and_is_replaced_only_on_success() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("m.gguf");
    toy_model("qwen2", &[GgmlType::Q8_0], true, 5).write(&gguf);
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("keep.txt"), "old").unwrap();
    let e = convert_gguf(&gguf, &out, &opts(OutputDtype::Bf16)).unwrap_err();
    assert!(matches!(e, ConvertError::OutputExists { .. }), "{e}");
    assert!(e.to_string().contains("--force"));
    // a failing conversion with force leaves the old output alone
    let bad = dir.path().join("bad.gguf");
    fs::write(&bad, b"GGUFxxxx").unwrap();
    let force = ConvertOptions {
        force: true,
        ..opts(OutputDtype::Bf16)
    };
    assert!(convert_gguf(&bad, &out, &force).is_err());
    assert!(out.join("keep.txt").exists());
    convert_gguf(&gguf, &out, &force).unwrap();
    assert!(!out.join("keep.txt").exists());
    assert!(out.join("model.safetensors").exists());
    assert!(!dir.path().join("out.hyq-old").exists());
    // an existing empty directory is fine without force
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    convert_gguf(&gguf, &empty, &opts(OutputDtype::Bf16)).unwrap();
}

fn err_of(bytes: &[u8], dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    let e = convert_gguf(
        &p,
        &dir.join(format!("{name}.out")),
        &opts(OutputDtype::Bf16),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&p.display().to_string()),
        "error does not name the file: {e}"
    );
    e
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = toy_model("qwen2", &[GgmlType::Q4K], true, 9).bytes();

    let e = err_of(b"GGML\x03\0\0\0", dir.path(), "magic.gguf");
    assert!(e.contains("not a GGUF file") && e.contains("magic"), "{e}");

    // truncated anywhere: header, metadata, tensor infos, data -> error, never a panic
    let g = GgufFile::open(&{
        let p = dir.path().join("good.gguf");
        fs::write(&p, &good).unwrap();
        p
    })
    .unwrap();
    let data_start = g.data_offset() as usize;
    for cut in [
        0,
        3,
        7,
        20,
        100,
        5000,
        data_start - 1,
        data_start + 10,
        good.len() - 1,
    ] {
        let e = err_of(&good[..cut], dir.path(), &format!("trunc{cut}.gguf"));
        assert!(
            e.contains("truncated") || e.contains("past the end") || e.contains("exceeds"),
            "cut {cut}: {e}"
        );
    }
    // the last tensor's data cut short names the tensor
    let last = g.tensors().iter().max_by_key(|t| t.abs_offset).unwrap();
    let e = err_of(&good[..good.len() - 1], dir.path(), "trunclast.gguf");
    assert!(e.contains(&last.name), "{e}");

    let mut w = toy_model("qwen2", &[GgmlType::Q4K], true, 9);
    w.tensors[3].type_id = 99;
    let name = w.tensors[3].name.clone();
    let e = err_of(&w.bytes(), dir.path(), "type.gguf");
    assert!(
        e.contains(&name) && e.contains("unknown ggml tensor type id 99"),
        "{e}"
    );

    let mut w = toy_model("qwen2", &[GgmlType::Q4K], true, 9);
    w.tensors[2].type_id = GgmlType::Iq2Xxs.id();
    w.tensors[2].data = vec![0; 66];
    let name = w.tensors[2].name.clone();
    let e = err_of(&w.bytes(), dir.path(), "iq.gguf");
    assert!(e.contains(&name) && e.contains("IQ2_XXS"), "{e}");

    let mut w = toy_model("qwen2", &[GgmlType::Q4K], true, 9);
    w.kv("general.architecture", Val::Str("mamba".into()));
    let e = err_of(&w.bytes(), dir.path(), "arch.gguf");
    assert!(
        e.contains("mamba")
            && e.contains("llama")
            && e.contains("qwen2")
            && e.contains("hunyuan-dense"),
        "{e}"
    );

    let mut w = toy_model("qwen2", &[GgmlType::Q4K], true, 9);
    w.tensor("blk.0.mystery.weight", &[4], GgmlType::F32, vec![0; 16]);
    let e = err_of(&w.bytes(), dir.path(), "name.gguf");
    assert!(e.contains("blk.0.mystery.weight"), "{e}");

    // absurd counts / lengths must not allocate
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(u64::MAX.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    let e = err_of(&b, dir.path(), "count.gguf");
    assert!(e.contains("tensor count"), "{e}");
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend((1u64 << 60).to_le_bytes()); // key length
    b.extend([0u8; 16]);
    let e = err_of(&b, dir.path(), "strlen.gguf");
    assert!(e.contains("string length"), "{e}");

    // version 1 and big-endian files are refused with a reason
    let mut b = good.clone();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    let e = err_of(&b, dir.path(), "v1.gguf");
    assert!(e.contains("version 1"), "{e}");
    let mut b = good.clone();
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    let e = err_of(&b, dir.path(), "be.gguf");
    assert!(e.contains("big-endian"), "{e}");

    // tensor offset past EOF
    let mut w = toy_model("qwen2", &[GgmlType::Q4K], true, 9);
    let n = w.tensors.len();
    w.tensors[n - 1].data.truncate(0);
    let name = w.tensors[n - 1].name.clone();
    let e = err_of(&w.bytes(), dir.path(), "eof.gguf");
    assert!(e.contains(&name) && e.contains("past the end"), "{e}");
}

// ---------------------------------------------------------------- real model (ignored)

fn models_dir() -> PathBuf {
    std::env::var_os("HY_QUANT_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"))
}

fn real_gguf(name: &str) -> PathBuf {
    let p = models_dir().join(name);
    assert!(
        p.is_file(),
        "real test model {} is missing: run `bash /work/shared/scripts/fetch-test-models.sh <dir> 0.5b` and point HY_QUANT_TEST_MODELS at <dir> (default <repo>/models)",
        p.display()
    );
    p
}

/// Converts the real 0.5B model into `target/gguf-real/qwen2.5-coder-0.5b-<dtype>` (kept for
/// scripts/check_gguf_dequant.py and scripts/check_gguf_tokenizer.py).
#[test]
#[ignore = "needs the real test model: run scripts/test.sh (fetches it)"]
fn real_qwen2_5_coder_0_5b() {
    let gguf = real_gguf("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let dtype = match std::env::var("HY_QUANT_GGUF_DTYPE").as_deref() {
        Ok("f16") => OutputDtype::F16,
        _ => OutputDtype::Bf16,
    };
    let out = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/gguf-real")
        .join(format!("qwen2.5-coder-0.5b-{dtype:?}").to_lowercase());
    let t0 = std::time::Instant::now();
    let r = convert_gguf(
        &gguf,
        &out,
        &ConvertOptions {
            dtype,
            force: true,
            max_shard_bytes: None,
        },
    )
    .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!("{r:#?}\nconverted in {secs:.1}s -> {}", out.display());
    assert_eq!(r.tensors_written, 291);
    assert_eq!(r.shards, vec!["model.safetensors".to_string()]);
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["architectures"][0], "Qwen2ForCausalLM");
    assert_eq!(c["hidden_size"], 896);
    assert_eq!(c["num_hidden_layers"], 24);
    assert_eq!(c["intermediate_size"], 4864);
    assert_eq!(c["num_attention_heads"], 14);
    assert_eq!(c["num_key_value_heads"], 2);
    assert_eq!(c["vocab_size"], 151936);
    assert_eq!(c["rope_theta"], 1_000_000.0);
    assert_eq!(c["rms_norm_eps"], 1e-6);
    let tk = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let enc = tk
        .encode("<|im_start|>user\n把这句话翻译成英文<|im_end|>\n", false)
        .unwrap();
    assert_eq!(enc.get_ids()[0], 151644);
    assert_eq!(enc.get_ids()[enc.get_ids().len() - 2], 151645);
    assert_eq!(
        tk.decode(enc.get_ids(), false).unwrap(),
        "<|im_start|>user\n把这句话翻译成英文<|im_end|>\n"
    );
}

/// Writes a toy GGUF using every supported block type (random blocks) and its f16 and bf16
/// conversions under `target/gguf-fixture/`, for `scripts/check_gguf_dequant.py` to compare
/// against gguf-py (block types the real model does not contain).
#[test]
#[ignore = "writes a fixture for scripts/check_gguf_dequant.py"]
fn write_all_types_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/gguf-fixture");
    fs::create_dir_all(&dir).unwrap();
    for arch in ["qwen2", "llama"] {
        let gguf = dir.join(format!("all-types-{arch}.gguf"));
        toy_model(arch, ALL_TYPES, false, 12345).write(&gguf);
        for dtype in [OutputDtype::F16, OutputDtype::Bf16] {
            let out = dir.join(format!("all-types-{arch}-{dtype:?}").to_lowercase());
            let r = convert_gguf(
                &gguf,
                &out,
                &ConvertOptions {
                    dtype,
                    force: true,
                    max_shard_bytes: None,
                },
            )
            .unwrap();
            eprintln!("{:?} -> {}", r.source_types, out.display());
        }
    }
}

/// llama.cpp's `rope_freqs` factors for Llama 3 scaling (as `LlamaModel.generate_extra_tensors`
/// computes them), for `factor` and the standard low 1 / high 4 / original context 8192.
fn llama3_rope_freqs(base: f64, dim: usize, factor: f64) -> Vec<u8> {
    let (low, high, orig) = (1.0, 4.0, 8192.0);
    (0..dim / 2)
        .map(|i| {
            let freq = 1.0 / base.powf((2 * i) as f64 / dim as f64);
            let wl = 2.0 * std::f64::consts::PI / freq;
            if wl < orig / high {
                1.0
            } else if wl > orig / low {
                factor
            } else {
                let s = (orig / wl - low) / (high - low);
                1.0 / ((1.0 - s) / factor + s)
            }
        })
        .flat_map(|v| (v as f32).to_le_bytes())
        .collect()
}

#[test]
fn llama3_rope_freqs_become_rope_scaling() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("l3.gguf");
    let mut w = toy_model("llama", &[GgmlType::F16], true, 2);
    w.kv("llama.rope.freq_base", Val::F32(500000.0)).tensor(
        "rope_freqs.weight",
        &[HEAD_DIM / 2],
        GgmlType::F32,
        llama3_rope_freqs(500000.0, HEAD_DIM as usize, 8.0),
    );
    w.write(&gguf);
    let out = dir.path().join("out");
    let r = convert_gguf(&gguf, &out, &opts(OutputDtype::Bf16)).unwrap();
    assert_eq!(r.skipped, vec!["rope_freqs.weight".to_string()]);
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["rope_scaling"]["rope_type"], "llama3");
    assert_eq!(c["rope_scaling"]["factor"], 8.0);
    assert_eq!(c["rope_scaling"]["original_max_position_embeddings"], 8192);
    assert_eq!(c["rope_theta"], 500000.0);

    // factors that are not Llama 3's are refused, naming the tensor
    w.tensor(
        "rope_freqs.weight",
        &[HEAD_DIM / 2],
        GgmlType::F32,
        (0..HEAD_DIM / 2)
            .flat_map(|i| (1.0 + i as f32).to_le_bytes())
            .collect(),
    );
    let e = err_of(&w.bytes(), dir.path(), "odd-rope.gguf");
    assert!(e.contains("rope_freqs.weight"), "{e}");
}
