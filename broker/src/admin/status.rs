//! Refusals (AMQP reply codes) as gRPC status codes.

use crate::amqp::constants::ReplyCode;
use crate::refusal::Refusal;
use tonic::Status;

pub fn from_refusal(refusal: Refusal) -> Status {
    let text = refusal.text;
    match refusal.code {
        ReplyCode::NotFound | ReplyCode::NotAllowed => Status::not_found(text),
        ReplyCode::PreconditionFailed | ReplyCode::ResourceLocked => {
            Status::failed_precondition(text)
        }
        ReplyCode::AccessRefused
        | ReplyCode::SyntaxError
        | ReplyCode::CommandInvalid
        | ReplyCode::InvalidPath
        | ReplyCode::NotImplemented => Status::invalid_argument(text),
        ReplyCode::ResourceError | ReplyCode::ContentTooLarge => Status::resource_exhausted(text),
        _ => Status::internal(text),
    }
}

/// `?`-friendly conversion for the service's handlers.
pub trait OrStatus<T> {
    fn or_status(self) -> Result<T, Status>;
}

impl<T> OrStatus<T> for Result<T, Refusal> {
    fn or_status(self) -> Result<T, Status> {
        self.map_err(from_refusal)
    }
}
