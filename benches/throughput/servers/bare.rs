//! Bare hyper (`common::bare`) on the server runtime: the ceiling that HTTP handling and
//! this machine allow. The table's ratio is firehose-edge ÷ bare.

use tokio::runtime::Runtime;

use super::Server;
use crate::common::bare;

impl Server {
    /// Bare hyper: an HTTP/1.1 server that reads each body and answers 200 without looking
    /// at it.
    pub fn bare(rt: &Runtime) -> Server {
        Self::spawn(rt, bare::connection)
    }
}
