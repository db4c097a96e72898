//! Which of OpenAI's APIs a client request is for. Every request goes through the same
//! authentication, routing, limits and attempt loop; only the upstream endpoint, the
//! request body and the answer's shape differ. A model serves the APIs its provider
//! speaks, or the subset its config lists in `apis:` (an OpenAI-compatible server
//! without `/v1/embeddings`, say), and requests for an API go only to models that serve
//! it.

use crate::config::Provider;
use serde::Deserialize;

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// `/v1/chat/completions`
    #[default]
    Chat,
    /// `/v1/completions` (a prompt, text choices)
    Completions,
    /// `/v1/embeddings` (never streamed)
    Embeddings,
}

impl Api {
    /// The endpoint under an upstream's `/v1` base (no leading slash).
    pub fn path(self) -> &'static str {
        match self {
            Api::Chat => "chat/completions",
            Api::Completions => "completions",
            Api::Embeddings => "embeddings",
        }
    }

    /// The gateway's own route for it.
    pub fn route(self) -> &'static str {
        match self {
            Api::Chat => "/v1/chat/completions",
            Api::Completions => "/v1/completions",
            Api::Embeddings => "/v1/embeddings",
        }
    }

    /// What a provider can speak at all: OpenAI-compatible servers all three, our
    /// engine chat and completions (it has no embeddings), Anthropic chat only (its
    /// Messages API).
    pub fn spoken_by(provider: Provider) -> &'static [Api] {
        match provider {
            Provider::Openai => &[Api::Chat, Api::Completions, Api::Embeddings],
            Provider::Local => &[Api::Chat, Api::Completions],
            Provider::Anthropic => &[Api::Chat],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_speak_what_their_servers_have() {
        assert!(Api::spoken_by(Provider::Openai).contains(&Api::Embeddings));
        assert!(!Api::spoken_by(Provider::Local).contains(&Api::Embeddings));
        assert_eq!(Api::spoken_by(Provider::Anthropic), [Api::Chat]);
        assert_eq!(Api::Completions.route(), "/v1/completions");
        assert_eq!(Api::Chat.path(), "chat/completions");
    }
}
