//! firehose-edge under test: `run_with_sink` on 127.0.0.1:0 over a fresh queue per run, and
//! a sink that accepts at once. A file sink would put the lake's writes on the disk that the
//! queue fsyncs, making the figure about that disk; with the instant sink the flusher still
//! does all of its own work (read the head, pack, remove) while requests come in, as it would
//! in front of Firehose.

use std::net::SocketAddr;
use std::sync::Arc;

use firehose_edge::config::{Config, Durability};
use firehose_edge::{Listeners, run_with_sink};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::STOP_WAIT;
use crate::common::{self, InstantSink};

/// firehose-edge in-process over a fresh queue, with an instant sink.
pub struct EdgeServer {
    pub addr: SocketAddr,
    pub sink: Arc<InstantSink>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), firehose_edge::app::AppError>>,
    // Removed after the server stopped.
    _dir: TempDir,
}

impl EdgeServer {
    pub fn start(rt: &Runtime, durability: Durability) -> EdgeServer {
        let dir = common::scratch_dir();
        let mut config = Config::default();
        config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.queue.path = dir.path().join("queue");
        config.queue.durability = durability;
        config.sink.directory = dir.path().join("lake");
        let sink = Arc::new(InstantSink::default());
        let stop = CancellationToken::new();
        let (addr, task) = rt.block_on(async {
            let ingest = TcpListener::bind(config.server.listen)
                .await
                .expect("bind ingest");
            let admin = TcpListener::bind(config.admin.listen)
                .await
                .expect("bind admin");
            let addr = ingest.local_addr().expect("ingest address");
            let task = tokio::spawn(run_with_sink(
                config,
                Listeners { ingest, admin },
                sink.clone(),
                None,
                stop.clone().cancelled_owned(),
            ));
            (addr, task)
        });
        EdgeServer {
            addr,
            sink,
            stop,
            task,
            _dir: dir,
        }
    }

    pub fn stop(self, rt: &Runtime) {
        self.stop.cancel();
        rt.block_on(async { tokio::time::timeout(STOP_WAIT, self.task).await })
            .expect("firehose-edge stops within the grace period")
            .expect("server task")
            .expect("clean shutdown");
    }
}
