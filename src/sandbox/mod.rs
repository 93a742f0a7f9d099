//! Real local servers for `pgwarden sandbox`, benchmarks and integration tests: a PostgreSQL
//! primary with streaming replicas in a temp dir, on ports that tests running in parallel don't share.

pub mod delay_relay;
pub mod ports;
pub mod postgres;
pub mod redis;

pub use self::redis::RedisServer;
pub use delay_relay::DelayRelay;
pub use ports::free_port;
pub use postgres::{ClusterOptions, PgCluster, PgNode};

mod proxy_config;
pub use proxy_config::proxy_config_yaml;
