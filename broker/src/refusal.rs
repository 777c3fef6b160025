//! A refusal: the reply code and text a failed operation answers with. Whether it closes the
//! channel or the connection follows from the code, as in RabbitMQ.

use crate::amqp::constants::ReplyCode;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} - {text}", code.name())]
pub struct Refusal {
    pub code: ReplyCode,
    pub text: String,
}

impl Refusal {
    pub fn new(code: ReplyCode, text: impl Into<String>) -> Refusal {
        Refusal {
            code,
            text: text.into(),
        }
    }

    pub fn not_found(text: impl Into<String>) -> Refusal {
        Refusal::new(ReplyCode::NotFound, text)
    }

    pub fn precondition(text: impl Into<String>) -> Refusal {
        Refusal::new(ReplyCode::PreconditionFailed, text)
    }

    pub fn access_refused(text: impl Into<String>) -> Refusal {
        Refusal::new(ReplyCode::AccessRefused, text)
    }

    pub fn resource_locked(text: impl Into<String>) -> Refusal {
        Refusal::new(ReplyCode::ResourceLocked, text)
    }

    pub fn internal(text: impl Into<String>) -> Refusal {
        Refusal::new(ReplyCode::InternalError, text)
    }

    /// The text sent on the wire: `CODE_NAME - text`, as RabbitMQ formats it.
    pub fn reply_text(&self) -> String {
        let full = format!("{} - {}", self.code.name(), self.text);
        // A short string holds at most 255 octets.
        let mut end = full.len().min(255);
        while !full.is_char_boundary(end) {
            end -= 1;
        }
        full[..end].to_string()
    }
}

impl From<crate::error::BrokerError> for Refusal {
    fn from(error: crate::error::BrokerError) -> Refusal {
        tracing::error!(%error, "storage failure answered as 541 INTERNAL_ERROR");
        Refusal::internal(error.to_string())
    }
}
