//! `local` models: our own engine, started in this process by the binary's loader and
//! reached through its OpenAI router without a socket (`upstream::Transport::InProcess`).
//! It speaks OpenAI's format.

use super::openai::{OpenAi, OpenAiDecoder};
use super::{Decoder, Provider};
use crate::api::Api;
use crate::config::ModelConfig;
use crate::request::ClientRequest;

pub struct Local;

impl Provider for Local {
    fn endpoint(&self, _base_url: &str, _api: Api) -> Option<String> {
        None
    }

    fn body(&self, m: &ModelConfig, req: &ClientRequest) -> Vec<u8> {
        OpenAi.body(m, req)
    }

    fn decoder(&self, api: Api) -> Box<dyn Decoder> {
        Box::new(OpenAiDecoder { api })
    }
}
