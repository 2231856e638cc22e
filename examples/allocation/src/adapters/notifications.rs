//! Notifications: messages to people (the stock team), sent through a
//! pluggable [`Notifier`] (APwP's `AbstractNotifications`).
//!
//! Handlers take the [`Notifications`] adapter (`&Notifications`); the
//! entrypoint chooses the notifier: [`LoggingNotifier`] for now, e-mail
//! later, and [`FakeNotifier`] in tests.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use eda_core::{Adapter, BoxError};

/// What [`Notifier::send`] returns: a boxed future, so that `Notifier` can
/// be a trait object and still do I/O.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), NotificationError>> + Send + 'a>>;

/// Sends a message to a destination (an e-mail address, a channel...).
pub trait Notifier: Send + Sync + 'static {
    /// Sends `message` to `destination`.
    fn send<'a>(&'a self, destination: &'a str, message: &'a str) -> SendFuture<'a>;
}

/// A notification could not be sent.
#[derive(Debug, thiserror::Error)]
#[error("cannot send a notification to {destination}: {source}")]
pub struct NotificationError {
    /// Where it was going.
    pub destination: String,
    /// Why it failed.
    #[source]
    pub source: BoxError,
}

/// The notifications adapter handlers receive: a notifier chosen by the
/// entrypoint. Cheap to clone.
#[derive(Clone)]
pub struct Notifications {
    notifier: Arc<dyn Notifier>,
}

impl Notifications {
    /// Notifications sent through `notifier`.
    pub fn new(notifier: impl Notifier) -> Self {
        Notifications {
            notifier: Arc::new(notifier),
        }
    }

    /// Notifications sent through a shared notifier.
    pub fn from_arc(notifier: Arc<dyn Notifier>) -> Self {
        Notifications { notifier }
    }

    /// Sends `message` to `destination`.
    pub async fn send(&self, destination: &str, message: &str) -> Result<(), NotificationError> {
        self.notifier.send(destination, message).await
    }
}

impl fmt::Debug for Notifications {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifications").finish_non_exhaustive()
    }
}

impl Adapter for Notifications {}

/// Logs each notification (with `tracing`) instead of sending it: the
/// notifier of a service with nothing configured.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoggingNotifier;

impl Notifier for LoggingNotifier {
    fn send<'a>(&'a self, destination: &'a str, message: &'a str) -> SendFuture<'a> {
        tracing::info!(destination, "notification: {message}");
        Box::pin(async { Ok(()) })
    }
}

/// Records what it was asked to send, for tests (APwP's
/// `FakeNotifications`). Clones share the record: keep one, give the other
/// to [`Notifications::new`].
#[derive(Clone, Debug, Default)]
pub struct FakeNotifier {
    sent: Arc<Mutex<BTreeMap<String, Vec<String>>>>,
}

impl FakeNotifier {
    /// A notifier that has sent nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The messages sent to `destination`, in order.
    pub fn sent_to(&self, destination: &str) -> Vec<String> {
        self.record().get(destination).cloned().unwrap_or_default()
    }

    /// Every message sent, by destination.
    pub fn sent(&self) -> BTreeMap<String, Vec<String>> {
        self.record().clone()
    }

    fn record(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<String>>> {
        // Nothing can be left half-written by a panic: the lock guards one
        // push.
        self.sent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Notifier for FakeNotifier {
    fn send<'a>(&'a self, destination: &'a str, message: &'a str) -> SendFuture<'a> {
        self.record()
            .entry(destination.to_owned())
            .or_default()
            .push(message.to_owned());
        Box::pin(async { Ok(()) })
    }
}
