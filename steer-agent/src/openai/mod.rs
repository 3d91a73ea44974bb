//! The parts of the OpenAI API that routing needs: the request body (model,
//! stream, user, prompt text) and the response's token `usage`.

mod request;
mod token_count;
mod usage;

pub use request::{ParseError, ParsedRequest, PromptPieces, expected_tokens};
pub use usage::{Usage, UsageScanner};
