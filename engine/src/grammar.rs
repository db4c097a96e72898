//! Constrained decoding: a grammar (a JSON schema, a regex, a choice of strings or a Lark
//! grammar) compiled by llguidance against the model's vocabulary, and per sequence a
//! matcher that says, before each token, which tokens may come next.
//!
//! [`GrammarVocab`] is built once per model; [`GrammarVocab::compile`] runs where the
//! request arrives, so a grammar the engine cannot enforce is refused before it is
//! queued; each sequence then gets its own [`Constraint`] from the compiled [`Grammar`].

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use novastack_models::{TokenBytes, Tokenizer};
use serde_json::{json, Value};
use std::fmt;
use std::sync::Arc;
use toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

/// What a request constrains its output to.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON valid against a schema.
    JsonSchema(Value),
    /// Text matching a regular expression (Rust `regex` syntax), whole.
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A grammar in llguidance's Lark dialect.
    Lark(String),
}

/// Why a grammar was refused; the text names the feature or the fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct GrammarError(pub String);

/// The model's vocabulary as llguidance sees it: each token's bytes in a trie.
struct VocabEnv {
    trie: TokTrie,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// Greedy longest-match over the trie. llguidance uses this only to tokenize text
    /// it forces (we never ask it to) and grammar literals; any tokenization of the
    /// right bytes is valid for the mask, canonical or not.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }
}

/// The per-model half of constrained decoding: the vocabulary and the parser factory.
pub struct GrammarVocab {
    factory: ParserFactory,
    vocab_size: usize,
    eos: Arc<[u32]>,
}

impl fmt::Debug for GrammarVocab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrammarVocab")
            .field("vocab_size", &self.vocab_size)
            .finish()
    }
}

impl GrammarVocab {
    /// Builds the vocabulary of a model with `vocab_size` logits (the tokenizer may have
    /// fewer ids; the rest can never be picked) whose sequences end on `eos`.
    pub fn new(
        tokenizer: &Tokenizer,
        vocab_size: usize,
        eos: &[u32],
    ) -> Result<Self, GrammarError> {
        let tokens = tokenizer
            .token_bytes(vocab_size)
            .map_err(|e| GrammarError(e.to_string()))?;
        let words: Vec<Vec<u8>> = tokens
            .into_iter()
            .enumerate()
            .map(|(id, t)| {
                // Special tokens are marked so grammars can only name them outright;
                // holes get a unique unmatchable name.
                let special = |name: &str| {
                    let mut b = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    b.extend_from_slice(name.as_bytes());
                    b
                };
                match t {
                    TokenBytes::Text(b) => b,
                    TokenBytes::Special(name) => special(&name),
                    TokenBytes::Missing => special(&format!("<[{id}]>")),
                }
            })
            .collect();
        let first_eos = eos
            .first()
            .copied()
            .ok_or_else(|| GrammarError("the model has no end-of-sequence token".into()))?;
        let info = TokRxInfo::new(vocab_size as u32, first_eos);
        let mut trie = TokTrie::from(&info, &words);
        if eos.len() > 1 {
            trie = trie.with_eos_tokens(eos);
        }
        let env: TokEnv = Arc::new(VocabEnv { trie });
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| GrammarError(e.to_string()))?;
        // Warnings and errors reach the client in the 400, not stderr.
        factory.quiet();
        Ok(GrammarVocab {
            factory,
            vocab_size,
            eos: eos.into(),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Compiles a grammar. JSON is compact: no whitespace between tokens, so a model
    /// cannot wander in it; a schema keyword llguidance cannot enforce is an error that
    /// names it.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Grammar, GrammarError> {
        let top = match spec {
            GrammarSpec::JsonObject => {
                TopLevelGrammar::from_json_schema(compact(json!({"type": "object"})))
            }
            GrammarSpec::JsonSchema(schema) => {
                if !schema.is_object() && !schema.is_boolean() {
                    return Err(GrammarError(
                        "a JSON schema must be an object (or a boolean)".into(),
                    ));
                }
                TopLevelGrammar::from_json_schema(compact(schema.clone()))
            }
            GrammarSpec::Regex(rx) => TopLevelGrammar::from_regex(rx),
            GrammarSpec::Choice(options) => {
                if options.is_empty() {
                    return Err(GrammarError("the choice list is empty".into()));
                }
                let alts: Vec<String> = options
                    .iter()
                    .map(|o| serde_json::to_string(o).expect("a string serializes"))
                    .collect();
                TopLevelGrammar::from_lark(format!("start: {}", alts.join(" | ")))
            }
            GrammarSpec::Lark(src) => TopLevelGrammar::from_lark(src.clone()),
        };
        let parser = self
            .factory
            .create_parser(top)
            .map_err(|e| GrammarError(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(GrammarError(e));
        }
        Ok(Grammar {
            start: Arc::new(matcher),
            vocab_size: self.vocab_size,
            eos: self.eos.clone(),
        })
    }
}

/// Adds llguidance's compact-JSON options to a schema (unless it sets its own).
fn compact(mut schema: Value) -> Value {
    if let Value::Object(o) = &mut schema {
        o.entry("x-guidance")
            .or_insert_with(|| json!({"whitespace_flexible": false}));
    }
    schema
}

/// A compiled grammar at its start, shared by the sequences that use it.
#[derive(Clone)]
pub struct Grammar {
    start: Arc<Matcher>,
    vocab_size: usize,
    eos: Arc<[u32]>,
}

impl fmt::Debug for Grammar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Grammar")
    }
}

impl PartialEq for Grammar {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.start, &other.start)
    }
}

impl Grammar {
    /// The number of logits the grammar's masks cover (the model's vocabulary).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// A fresh matcher for one sequence.
    pub fn constraint(&self) -> Constraint {
        Constraint {
            matcher: self.start.deep_clone(),
            mask: None,
            vocab_size: self.vocab_size,
            eos: self.eos.clone(),
            ended: false,
        }
    }
}

/// One sequence's matcher and the mask for its next token.
pub struct Constraint {
    matcher: Matcher,
    mask: Option<SimpleVob>,
    vocab_size: usize,
    eos: Arc<[u32]>,
    ended: bool,
}

impl Constraint {
    /// Computes the mask for the next token (kept until [`Constraint::commit`]). Once the
    /// grammar is complete only the end-of-sequence tokens are allowed.
    pub fn compute_mask(&mut self) -> Result<(), GrammarError> {
        if self.mask.is_none() {
            let m = self
                .matcher
                .compute_mask_or_eos()
                .map_err(|e| GrammarError(e.to_string()))?;
            self.mask = Some(m);
        }
        Ok(())
    }

    /// The mask from [`Constraint::compute_mask`], if computed.
    pub fn mask(&self) -> Option<&SimpleVob> {
        self.mask.as_ref()
    }

    /// Sets every token the grammar does not allow to -inf, 32 tokens per mask word
    /// (a grammar usually allows few: most words are all zero).
    pub fn apply(&self, logits: &mut [f32]) {
        let Some(m) = &self.mask else { return };
        let n = logits.len().min(self.vocab_size);
        for (word, chunk) in m.as_slice().iter().zip(logits[..n].chunks_mut(32)) {
            if *word == u32::MAX {
                continue;
            }
            for (bit, l) in chunk.iter_mut().enumerate() {
                if word >> bit & 1 == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
    }

    /// Advances past the sampled token. Once the grammar can go no further (the
    /// matcher stops by itself after the last byte a grammar allows) only an
    /// end-of-sequence token is accepted, and it ends the sequence.
    pub fn commit(&mut self, token: u32) -> Result<(), GrammarError> {
        self.mask = None;
        let is_eos = self.eos.contains(&token);
        if self.matcher.is_stopped() {
            if !is_eos {
                return Err(GrammarError(format!(
                    "token {token} after the end of the grammar"
                )));
            }
        } else {
            self.matcher
                .consume_token(token)
                .map_err(|e| GrammarError(e.to_string()))?;
        }
        self.ended |= is_eos;
        Ok(())
    }

    /// The grammar's end was taken: the sequence is done.
    pub fn is_finished(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn fixture_vocab() -> (Tokenizer, GrammarVocab) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/models/llama-f32");
        let tok = Tokenizer::from_dir(&dir).unwrap();
        let eos = tok.eos_token_ids().to_vec();
        let vocab = GrammarVocab::new(&tok, tok.vocab_size() + 5, &eos).unwrap();
        (tok, vocab)
    }

    /// Walks a grammar with a seeded random choice among the allowed tokens until it
    /// ends; returns the text.
    fn walk(tok: &Tokenizer, g: &Grammar, seed: u64, eos: &[u32]) -> String {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut c = g.constraint();
        let mut out = Vec::new();
        for _ in 0..400 {
            c.compute_mask().unwrap();
            let allowed = c.mask().unwrap().to_list();
            assert!(!allowed.is_empty());
            let t = allowed[rng.random_range(0..allowed.len())];
            c.commit(t).unwrap();
            if eos.contains(&t) {
                assert!(c.is_finished());
                break;
            }
            out.push(t);
        }
        tok.decode(&out, false).unwrap()
    }

    #[test]
    fn random_walks_through_a_schema_give_valid_compact_json() {
        let (tok, vocab) = fixture_vocab();
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 8},
                "age": {"type": "integer", "minimum": 0, "maximum": 150},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}
            },
            "required": ["name", "age", "tags"],
            "additionalProperties": false
        });
        let g = vocab.compile(&GrammarSpec::JsonSchema(schema)).unwrap();
        for seed in 0..10 {
            let text = walk(&tok, &g, seed, tok.eos_token_ids());
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(v["name"].as_str().unwrap().chars().count() <= 8, "{text}");
            let age = v["age"].as_i64().unwrap();
            assert!((0..=150).contains(&age), "{text}");
            assert!(v["tags"].as_array().unwrap().len() <= 3);
            assert_eq!(v.as_object().unwrap().len(), 3, "{text}");
            assert!(
                !text.contains(": ") && !text.contains(", "),
                "compact: {text}"
            );
        }
    }

    /// Masking a word at a time sets exactly the tokens the mask forbids to -inf.
    #[test]
    fn apply_masks_exactly_the_forbidden_tokens() {
        let (tok, vocab) = fixture_vocab();
        let g = vocab
            .compile(&GrammarSpec::JsonSchema(json!({"type": "object"})))
            .unwrap();
        let mut c = g.constraint();
        for t in tok.encode("{\"a\":", false).unwrap() {
            c.compute_mask().unwrap();
            c.commit(t).unwrap();
        }
        c.compute_mask().unwrap();
        let mut logits = vec![1.0f32; vocab.vocab_size()];
        c.apply(&mut logits);
        let m = c.mask().unwrap();
        for (i, l) in logits.iter().enumerate() {
            assert_eq!(*l == 1.0, m.is_allowed(i as TokenId), "token {i}");
        }
        assert!(logits.contains(&1.0) && logits.iter().any(|&l| l < 0.0));
    }

    #[test]
    fn regex_choice_and_lark_hold() {
        let (tok, vocab) = fixture_vocab();
        let eos = tok.eos_token_ids();
        let g = vocab
            .compile(&GrammarSpec::Regex(r"[0-9]{3}-[a-c]{2}".into()))
            .unwrap();
        let g2 = vocab
            .compile(&GrammarSpec::Choice(vec![
                "yes".into(),
                "no \"way\"".into(),
            ]))
            .unwrap();
        let g3 = vocab
            .compile(&GrammarSpec::Lark(
                "start: \"(\" NUM (\"+\" NUM)* \")\"\nNUM: /[1-9]/".into(),
            ))
            .unwrap();
        let gbnf = "root ::= item (\",\" item){0,3}\nitem ::= [a-c] | \"<\" [0-9]+ \">\"";
        let g4 = vocab
            .compile(&GrammarSpec::Lark(crate::gbnf::to_lark(gbnf).unwrap()))
            .unwrap();
        let re = |s: &str| {
            s.len() == 6
                && s[..3].bytes().all(|b| b.is_ascii_digit())
                && &s[3..4] == "-"
                && s[4..].bytes().all(|b| (b'a'..=b'c').contains(&b))
        };
        for seed in 0..10 {
            let s = walk(&tok, &g, seed, eos);
            assert!(re(&s), "{s:?}");
            let s = walk(&tok, &g2, seed, eos);
            assert!(s == "yes" || s == "no \"way\"", "{s:?}");
            let s = walk(&tok, &g3, seed, eos);
            assert!(s.starts_with('(') && s.ends_with(')'), "{s:?}");
            let s = walk(&tok, &g4, seed, eos);
            let ok = s.split(',').count() <= 4
                && s.split(',').all(|i| {
                    matches!(i, "a" | "b" | "c")
                        || (i.starts_with('<')
                            && i.ends_with('>')
                            && i.len() > 2
                            && i[1..i.len() - 1].bytes().all(|b| b.is_ascii_digit()))
                });
            assert!(ok, "{s:?}");
        }
    }

    #[test]
    fn unsupported_and_broken_grammars_are_refused_by_name() {
        let (_, vocab) = fixture_vocab();
        let e = vocab
            .compile(&GrammarSpec::JsonSchema(
                json!({"type": "object", "patternPropertiez": {}, "unevaluatedItems": false}),
            ))
            .unwrap_err();
        assert!(e.0.contains("unevaluatedItems"), "{e}");
        let e = vocab
            .compile(&GrammarSpec::Regex("(unclosed".into()))
            .unwrap_err();
        assert!(!e.0.is_empty());
        let e = vocab
            .compile(&GrammarSpec::Lark("start: nope".into()))
            .unwrap_err();
        assert!(e.0.contains("nope"), "{e}");
        assert!(vocab.compile(&GrammarSpec::Choice(vec![])).is_err());
        assert!(vocab.compile(&GrammarSpec::JsonSchema(json!(3))).is_err());
    }
}
