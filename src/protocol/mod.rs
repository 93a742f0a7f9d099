//! Wire-level pieces shared by both legs: byte streams (plain or TLS), bounded framing,
//! and builders for the few messages the proxy writes itself.

pub mod frame;
pub mod messages;
pub mod sqlstate;
pub mod stream;

pub use frame::{Frame, FrameError, FramedStream};
pub use stream::Stream;
