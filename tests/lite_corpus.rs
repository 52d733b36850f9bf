//! The lite corpus that the README's test command builds (`shear corpus build --profile lite`): seven real
//! domains, verified shards, SmolLM2's tokenizer, and a finite per-domain loss for the source model.

mod common;

use common::*;
use shear::data::corpus::{Corpus, DOMAINS};

#[test]
fn lite_corpus_is_complete_and_evaluates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/corpus");
    assert!(
        dir.join("manifest.json").exists(),
        "{} missing: run scripts/test.sh (it builds the lite corpus)",
        dir.display()
    );
    let corpus = Corpus::open(&dir).unwrap(); // verifies every shard's size and checksum
    assert_eq!(corpus.domains, DOMAINS.iter().map(|d| d.to_string()).collect::<Vec<_>>());
    let model = smollm2_dir();
    corpus.check_tokenizer(&std::fs::read(model.join("tokenizer.json")).unwrap(), &model).unwrap();
    for (d, name) in corpus.domains.iter().enumerate() {
        let s = &corpus.manifest.domains[name];
        assert!(s.train.tokens >= 100_000, "{name}: only {} training tokens", s.train.tokens);
        assert!(corpus.sequences(false, d) >= 1, "{name}: no eval sequence");
        assert!(!s.sources.is_empty());
    }
    let loaded = shear::io::load_model(&model, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let rows = shear::eval::evaluate_corpus(&loaded.model, &corpus, Some(1), 1, None, |_, _, _| {}).unwrap();
    for r in &rows {
        println!("{:<14} NLL {:.3} on {} tokens", r.domain, r.mean_nll, r.tokens);
        // A pretrained model: well below the uniform ln(49152) = 10.8 on every real domain.
        assert!(r.mean_nll.is_finite() && r.mean_nll < 6.0, "{}: {}", r.domain, r.mean_nll);
    }
}
