//! The servers that the load is sent to, on the server runtime: firehose-edge under test
//! (`edge.rs`), and two references that share the accept loop here: bare hyper (`bare.rs`),
//! the ceiling that HTTP handling and this machine allow, and a pre-built answer
//! (`canned.rs`), the load generator's own ceiling.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

mod bare;
mod canned;
mod edge;

pub use edge::EdgeServer;

/// Longest wait for a server to stop.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// A reference server on the server runtime.
pub struct Server {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    fn spawn<F, Fut>(rt: &Runtime, serve: F) -> Server
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let (addr, task) = rt.block_on(async {
            let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .expect("bind reference server");
            let addr = listener.local_addr().expect("reference server address");
            (addr, tokio::spawn(accept(listener, serve, stop.clone())))
        });
        Server { addr, stop, task }
    }

    pub fn stop(self, rt: &Runtime) {
        self.stop.cancel();
        rt.block_on(async { tokio::time::timeout(STOP_WAIT, self.task).await })
            .expect("reference server stops")
            .expect("reference server task");
    }
}

async fn accept<F, Fut>(listener: TcpListener, serve: F, stop: CancellationToken)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                connections.spawn(serve(stream));
            }
            // Reap finished connections so the set does not grow over the runs.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = stop.cancelled() => break,
        }
    }
    connections.shutdown().await;
}
