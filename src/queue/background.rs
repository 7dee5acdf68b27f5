//! A background thread of the queue (the health round, the compactor): started once, woken
//! on demand or after a period, and stopped and joined from any thread but its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

#[derive(Default)]
pub(super) struct Background {
    stop: AtomicBool,
    wake: Condvar,
    woken: Mutex<bool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Background {
    /// Starts `body` on a thread named `name`.
    pub fn spawn(&self, name: &str, body: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(body)?;
        *self.thread.lock() = Some(handle);
        Ok(())
    }

    /// Whether [`Background::stop`] was called.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Waits until woken, stopped, or `period` passed.
    pub fn wait(&self, period: Duration) {
        let mut woken = self.woken.lock();
        self.wake
            .wait_while_for(&mut woken, |w| !*w && !self.stopping(), period);
        *woken = false;
    }

    /// Ends the current or next [`Background::wait`] at once.
    pub fn wake(&self) {
        *self.woken.lock() = true;
        self.wake.notify_one();
    }

    /// Stops the thread and waits for it (unless called from it).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
        let handle = self.thread.lock().take();
        if let Some(handle) = handle
            && handle.thread().id() != std::thread::current().id()
        {
            let _ = handle.join();
        }
    }
}
