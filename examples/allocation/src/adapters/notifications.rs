//! Notifications: messages to people (the stock team), sent through a
//! pluggable [`Notifier`] (APwP's `AbstractNotifications`).
//!
//! Handlers take the [`Notifications`] adapter (`&Notifications`); the
//! entrypoint chooses the notifier: [`LoggingNotifier`] or [`FileNotifier`]
//! (e-mail would be one more), and [`FakeNotifier`] in tests.

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

/// Appends each notification to a file, one line each:
/// `<destination>\t<message>` (the notifier when `NOTIFICATIONS_FILE` is
/// set). Lines are appended whole, so concurrent handlers do not interleave.
#[derive(Clone, Debug)]
pub struct FileNotifier {
    path: std::path::PathBuf,
}

impl FileNotifier {
    /// Notifications appended to `path` (created if missing).
    pub fn new(path: impl Into<std::path::PathBuf>) -> Self {
        FileNotifier { path: path.into() }
    }
}

impl Notifier for FileNotifier {
    fn send<'a>(&'a self, destination: &'a str, message: &'a str) -> SendFuture<'a> {
        Box::pin(async move {
            use tokio::io::AsyncWriteExt;
            let line = format!("{destination}\t{message}\n");
            let failed = |e: std::io::Error| NotificationError {
                destination: destination.to_owned(),
                source: Box::new(e),
            };
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await
                .map_err(failed)?;
            file.write_all(line.as_bytes()).await.map_err(failed)?;
            file.flush().await.map_err(failed)
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_file_notifier_appends_one_line_per_notification() {
        let dir = std::env::temp_dir().join(format!("eda-notify-{}", eda_core::MessageId::new()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notifications.log");
        let notifications = Notifications::new(FileNotifier::new(&path));
        notifications
            .send("stock@made.com", "Out of stock for LAMP")
            .await
            .unwrap();
        notifications
            .send("stock@made.com", "Out of stock for SOFA")
            .await
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "stock@made.com\tOut of stock for LAMP\nstock@made.com\tOut of stock for SOFA\n"
        );
        let err = Notifications::new(FileNotifier::new(dir.join("missing/dir/file")))
            .send("x", "y")
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot send a notification to x"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
