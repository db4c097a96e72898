//! Routing as pure functions: for each request, the chain of models to try (the first,
//! then the fallbacks), from the routes' `when` conditions (compiled by `config`).

use crate::api::Api;
use crate::config::{Cond, ConfigFile, ModelConfig, Subject, When, CHEAPEST};
use serde_json::Value;
use std::collections::BTreeMap;

/// What routing looks at in a request.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// The API asked for: only models that serve it are candidates.
    pub api: Api,
    pub model: String,
    pub task: Option<String>,
    /// USD for this request.
    pub budget: Option<f64>,
    /// Prompt tokens (estimated for remote models).
    pub context_length: usize,
    /// The request's max_tokens (or the default the gateway assumes).
    pub max_tokens: usize,
    /// Lower-cased header names.
    pub headers: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, Value>,
}

/// True when every check of `when` holds for the request (a missing value fails).
pub fn matches(when: &When, r: &RequestInfo) -> bool {
    when.checks.iter().all(|c| {
        let value = match &c.subject {
            Subject::Task => r.task.clone().map(Value::String),
            Subject::Model => Some(Value::String(r.model.clone())),
            Subject::ContextLength => Some(Value::from(r.context_length)),
            Subject::Budget => r.budget.map(Value::from),
            Subject::Header(h) => r.headers.get(h).cloned().map(Value::String),
            Subject::Metadata(m) => r.metadata.get(m).cloned(),
        };
        let Some(value) = value else { return false };
        c.conds.iter().all(|c| holds(c, &value))
    })
}

fn as_num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Equality across YAML and JSON types: numbers by value (`"2"` equals `2`), strings
/// and booleans by text.
fn same(a: &Value, b: &Value) -> bool {
    if let (Value::String(x), Value::String(y)) = (a, b) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (as_num(a), as_num(b)) {
        return x == y;
    }
    match (a, b) {
        (Value::String(x), Value::Bool(v)) | (Value::Bool(v), Value::String(x)) => {
            x.as_str() == if *v { "true" } else { "false" }
        }
        _ => a == b,
    }
}

fn holds(c: &Cond, v: &Value) -> bool {
    let n = as_num(v);
    match c {
        Cond::Eq(x) => same(v, x),
        Cond::In(xs) => xs.iter().any(|x| same(v, x)),
        Cond::Lt(x) => n.is_some_and(|n| n < *x),
        Cond::Le(x) => n.is_some_and(|n| n <= *x),
        Cond::Gt(x) => n.is_some_and(|n| n > *x),
        Cond::Ge(x) => n.is_some_and(|n| n >= *x),
    }
}

/// The estimated USD cost of a request on `m`: prompt x input price + max_tokens x
/// output price (no price: free, e.g. a local model).
pub fn estimate_cost(m: &ModelConfig, prompt_tokens: usize, max_tokens: usize) -> f64 {
    m.price.map_or(0.0, |p| {
        (prompt_tokens as f64 * p.input_per_mtok + max_tokens as f64 * p.output_per_mtok) / 1e6
    })
}

/// Models that serve the request's API, whose context window fits prompt + max_tokens, whose scores meet `floors` and
/// whose estimated cost is within the budget, cheapest first (ties keep config order).
/// Errors say why nothing qualified.
pub fn cheapest_capable(
    models: &[ModelConfig],
    r: &RequestInfo,
    floors: &BTreeMap<String, f64>,
) -> Result<Vec<String>, String> {
    let need = r.context_length + r.max_tokens;
    let mut fit: Vec<(f64, usize, &ModelConfig)> = Vec::new();
    let mut why = Vec::new();
    for (i, m) in models.iter().enumerate() {
        if !m.serves(r.api) {
            why.push(format!("{}: does not serve {}", m.name, r.api.route()));
            continue;
        }
        if m.context_window.is_some_and(|w| w < need) {
            why.push(format!(
                "{}: context window {} < {need}",
                m.name,
                m.context_window.unwrap_or(0)
            ));
            continue;
        }
        if let Some((k, floor)) = floors
            .iter()
            .find(|(k, f)| m.scores.get(*k).is_none_or(|s| s < *f))
        {
            why.push(format!("{}: score {k} below {floor}", m.name));
            continue;
        }
        let cost = estimate_cost(m, r.context_length, r.max_tokens);
        if r.budget.is_some_and(|b| cost > b) {
            why.push(format!("{}: estimated ${cost:.6} over the budget", m.name));
            continue;
        }
        fit.push((cost, i, m));
    }
    if fit.is_empty() {
        return Err(format!(
            "no model can take this request ({})",
            why.join("; ")
        ));
    }
    fit.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    Ok(fit.into_iter().map(|(_, _, m)| m.name.clone()).collect())
}

/// The chain of model names to try for a request, and which rule chose it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub chain: Vec<String>,
    pub rule: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PlanError {
    UnknownModel(String),
    NothingFits(String),
}

/// First matching rule wins; with none, a configured model name is used as is and
/// `auto` means cheapest capable with no floors.
pub fn plan(cfg: &ConfigFile, r: &RequestInfo) -> Result<Plan, PlanError> {
    let dedup = |v: Vec<String>| {
        let mut seen = std::collections::HashSet::new();
        v.into_iter()
            .filter(|m| seen.insert(m.clone()))
            .collect::<Vec<_>>()
    };
    for (i, route) in cfg.routes.iter().enumerate() {
        if !matches(&route.when, r) {
            continue;
        }
        let mut chain = if route.use_ == CHEAPEST {
            cheapest_capable(&cfg.models, r, &route.require).map_err(PlanError::NothingFits)?
        } else {
            vec![route.use_.clone()]
        };
        chain.extend(route.fallback.iter().cloned());
        return Ok(Plan {
            chain: dedup(chain),
            rule: Some(i),
        });
    }
    if cfg.models.iter().any(|m| m.name == r.model) {
        return Ok(Plan {
            chain: vec![r.model.clone()],
            rule: None,
        });
    }
    if r.model == "auto" {
        let chain =
            cheapest_capable(&cfg.models, r, &BTreeMap::new()).map_err(PlanError::NothingFits)?;
        return Ok(Plan { chain, rule: None });
    }
    Err(PlanError::UnknownModel(r.model.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
models:
  - {name: kimi, provider: openai, base_url: "http://x/v1", context_window: 262144, price: {input_per_mtok: 0.6, output_per_mtok: 2.5}, scores: {reasoning: 88, long_context: 95}}
  - {name: qwen, provider: openai, base_url: "http://x/v1", apis: [chat, completions], context_window: 131072, price: {input_per_mtok: 0.2, output_per_mtok: 0.6}, scores: {reasoning: 86}}
  - {name: tiny, provider: openai, base_url: "http://x/v1", context_window: 8192, price: {input_per_mtok: 0.01, output_per_mtok: 0.02}, scores: {reasoning: 40}}
  - {name: deep, provider: openai, base_url: "http://x/v1", context_window: 131072, price: {input_per_mtok: 0.3, output_per_mtok: 1.2}, scores: {reasoning: 93}}
routes:
  - when: {task: long_document_qa, context_length: {gt: 100000}}
    use: kimi
    fallback: [qwen]
  - when: {task: reasoning, budget: {lt: 0.0005}}
    use: deep
  - when: {header.x-team: [red, blue], metadata.tier: {eq: 2}}
    use: tiny
  - when: {model: auto}
    use: cheapest_capable
    require: {reasoning: 85}
"#;

    fn setup() -> ConfigFile {
        serde_yaml::from_str(CFG).unwrap()
    }

    fn req(model: &str) -> RequestInfo {
        RequestInfo {
            model: model.into(),
            context_length: 1000,
            max_tokens: 500,
            ..Default::default()
        }
    }

    #[test]
    fn first_matching_rule_wins_with_fallbacks() {
        let cfg = setup();
        let mut r = req("whatever");
        r.task = Some("long_document_qa".into());
        r.context_length = 150_000;
        let p = plan(&cfg, &r).unwrap();
        assert_eq!(p.chain, ["kimi", "qwen"]);
        assert_eq!(p.rule, Some(0));
        // Too short for rule 0; an unknown model name is then an error.
        r.context_length = 50_000;
        assert_eq!(
            plan(&cfg, &r),
            Err(PlanError::UnknownModel("whatever".into()))
        );
        let mut r = req("auto");
        r.task = Some("reasoning".into());
        r.budget = Some(0.0001);
        assert_eq!(plan(&cfg, &r).unwrap().chain, ["deep"]);
        r.budget = Some(0.01); // budget not < 0.0005: falls to the auto rule
        assert_eq!(plan(&cfg, &r).unwrap().rule, Some(3));
    }

    #[test]
    fn header_lists_and_metadata_numbers() {
        let cfg = setup();
        let mut r = req("qwen");
        r.headers.insert("x-team".into(), "blue".into());
        assert_eq!(plan(&cfg, &r).unwrap().chain, ["qwen"], "metadata missing");
        r.metadata.insert("tier".into(), Value::from(2));
        assert_eq!(plan(&cfg, &r).unwrap().chain, ["tiny"]);
        r.metadata.insert("tier".into(), Value::from("2"));
        assert_eq!(plan(&cfg, &r).unwrap().chain, ["tiny"], "\"2\" equals 2");
        r.headers.insert("x-team".into(), "green".into());
        assert_eq!(plan(&cfg, &r).unwrap().chain, ["qwen"]);
    }

    #[test]
    fn cheapest_capable_filters_and_orders_by_cost() {
        let cfg = setup();
        // Floors 85: tiny is out; qwen < deep < kimi by cost.
        let p = plan(&cfg, &req("auto")).unwrap();
        assert_eq!(p.chain, ["qwen", "deep", "kimi"]);
        // Embeddings go only to models that serve them (qwen lists chat and completions).
        let mut r = req("auto");
        r.api = Api::Embeddings;
        assert_eq!(plan(&cfg, &r).unwrap().chain, ["deep", "kimi"]);
        // A prompt over qwen's and deep's windows leaves kimi.
        let mut r = req("auto");
        r.context_length = 200_000;
        assert_eq!(plan(&cfg, &r).unwrap().chain, ["kimi"]);
        // A budget below every estimate: a clear error naming each model's reason.
        r.context_length = 1000;
        r.budget = Some(1e-9);
        match plan(&cfg, &r) {
            Err(PlanError::NothingFits(m)) => {
                assert!(
                    m.contains("tiny: score reasoning below 85") && m.contains("over the budget"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        // With a budget that fits only the cheaper ones.
        let cost_qwen = estimate_cost(&cfg.models[1], 1000, 500);
        let cost_deep = estimate_cost(&cfg.models[3], 1000, 500);
        assert!(cost_qwen < cost_deep);
        r.budget = Some((cost_qwen + cost_deep) / 2.0);
        assert_eq!(plan(&cfg, &r).unwrap().chain, ["qwen"]);
    }

    #[test]
    fn estimate_cost_is_prompt_times_input_plus_max_times_output() {
        let cfg = setup();
        let c = estimate_cost(&cfg.models[0], 1_000_000, 2_000_000);
        assert!((c - (0.6 + 5.0)).abs() < 1e-12);
    }
}
