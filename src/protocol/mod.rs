//! Wire-level pieces shared by both legs: byte streams (plain or TLS), bounded framing,
//! one walker over buffered messages, named message tags, borrowed views of the bodies
//! the proxy reads, and writers for the messages it sends itself.

pub mod frame;
pub mod sqlstate;
pub mod stream;
pub mod tags;
pub mod to_client;
pub mod to_server;
pub mod views;
pub mod walk;

pub use frame::{Frame, FrameError, FramedStream};
pub use stream::Stream;
