//! Supervised background tasks.
//!
//! [`supervise`] runs a task made by a factory and starts it again when it dies: a task
//! dies when it panics, returns an error, or returns at all before shutdown was
//! signalled. Restarts wait an exponential backoff ([`Policy`]). A task that dies
//! `max_deaths` times within `window` is given up: the shared [`Health`] turns not ready
//! and [`Health::fatal`] resolves, which the process turns into a graceful stop and a
//! non-zero exit so that an orchestrator restarts it. A process whose worker is dead must
//! not keep accepting work that is never done.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// When to restart a task and when to give up on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Wait before the first restart; doubled after each death, up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest wait between a death and the restart.
    pub max_backoff: Duration,
    /// Deaths within `window` after which the task is given up (at least 1).
    pub max_deaths: u32,
    /// The window deaths are counted in; a run that lasted this long resets the backoff.
    pub window: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_deaths: 5,
            window: Duration::from_secs(60),
        }
    }
}

/// Where one supervised task stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// Running.
    Running,
    /// Died (the reason) and waits for its restart.
    Restarting(String),
    /// Ended because shutdown was signalled.
    Stopped,
    /// Died too often: given up (the last reason).
    GaveUp(String),
}

/// What ended a task run; implemented for `()` and `Result<(), E>`.
pub trait TaskOutput {
    /// `Err(reason)` when the run ended with an error.
    fn into_outcome(self) -> Result<(), String>;
}

impl TaskOutput for () {
    fn into_outcome(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: fmt::Display> TaskOutput for Result<(), E> {
    fn into_outcome(self) -> Result<(), String> {
        self.map_err(|e| format!("returned an error: {e}"))
    }
}

struct Inner {
    tasks: Mutex<BTreeMap<String, TaskState>>,
    /// The first task given up, once one is.
    fatal: watch::Sender<Option<String>>,
}

/// The health of a process's supervised tasks, shared by every supervisor and by the
/// readiness endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("tasks", &self.tasks())
            .finish()
    }
}

impl Health {
    /// No tasks yet: ready.
    pub fn new() -> Health {
        Health {
            inner: Arc::new(Inner {
                tasks: Mutex::new(BTreeMap::new()),
                fatal: watch::channel(None).0,
            }),
        }
    }

    fn set(&self, name: &str, state: TaskState) {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), state);
    }

    /// Every task and its state, by name.
    pub fn tasks(&self) -> Vec<(String, TaskState)> {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// True while every task runs (or ended at shutdown) and none was given up. A task
    /// waiting for its restart is not alive: the process is not ready then.
    pub fn ready(&self) -> bool {
        self.given_up().is_none()
            && self
                .tasks()
                .iter()
                .all(|(_, s)| matches!(s, TaskState::Running | TaskState::Stopped))
    }

    /// The task that was given up, if one was.
    pub fn given_up(&self) -> Option<String> {
        self.inner.fatal.borrow().clone()
    }

    /// Resolves with the task's name once a task is given up (at once if one was).
    pub async fn fatal(&self) -> String {
        let mut rx = self.inner.fatal.subscribe();
        loop {
            if let Some(name) = rx.borrow_and_update().clone() {
                return name;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`: never happens.
                std::future::pending::<()>().await;
            }
        }
    }

    fn give_up(&self, name: &str, reason: String) {
        self.set(name, TaskState::GaveUp(reason));
        self.inner.fatal.send_if_modified(|f| {
            if f.is_none() {
                *f = Some(name.to_string());
                true
            } else {
                false
            }
        });
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    if e.is_cancelled() {
        return "was cancelled".into();
    }
    let payload = e.into_panic();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text payload".into());
    format!("panicked: {text}")
}

/// Runs the task `factory` makes under supervision until `shutdown` turns true, and
/// returns the supervisor's handle (it ends when the task ends at shutdown or is given
/// up). Each call of `factory` starts one run; the run is expected to watch `shutdown`
/// itself and return once it fires. A run that panics, returns an error or returns while
/// `shutdown` is false is a death: logged, then restarted after the backoff, or given up
/// (see [`Policy`]), which marks `health` not ready and resolves [`Health::fatal`].
pub fn supervise<F, Fut>(
    name: impl Into<String>,
    policy: Policy,
    health: &Health,
    shutdown: watch::Receiver<bool>,
    factory: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: TaskOutput + Send + 'static,
{
    let name = name.into();
    let health = health.clone();
    health.set(&name, TaskState::Running);
    tokio::spawn(run(name, policy, health, shutdown, factory))
}

async fn run<F, Fut>(
    name: String,
    policy: Policy,
    health: Health,
    mut shutdown: watch::Receiver<bool>,
    mut factory: F,
) where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: TaskOutput + Send + 'static,
{
    let max_deaths = policy.max_deaths.max(1) as usize;
    let mut deaths: VecDeque<Instant> = VecDeque::new();
    let mut backoff = policy.initial_backoff;
    loop {
        health.set(&name, TaskState::Running);
        let started = Instant::now();
        let ended = tokio::spawn(factory()).await;
        let stopping = *shutdown.borrow();
        let reason = match ended {
            Ok(out) => match out.into_outcome() {
                Ok(()) if stopping => {
                    health.set(&name, TaskState::Stopped);
                    return;
                }
                Ok(()) => "returned before shutdown".to_string(),
                Err(reason) => reason,
            },
            Err(e) => panic_message(e),
        };
        if stopping {
            // It died while stopping: nothing to restart.
            tracing::warn!(task = %name, %reason, "background task died during shutdown");
            health.set(&name, TaskState::Stopped);
            return;
        }
        let now = Instant::now();
        if now.duration_since(started) >= policy.window {
            backoff = policy.initial_backoff;
        }
        deaths.push_back(now);
        while deaths
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            deaths.pop_front();
        }
        if deaths.len() >= max_deaths {
            tracing::error!(
                task = %name,
                %reason,
                deaths = deaths.len(),
                window_secs = policy.window.as_secs_f64(),
                "background task keeps dying: giving up on it; the process is not ready and stops"
            );
            health.give_up(&name, reason);
            return;
        }
        tracing::error!(
            task = %name,
            %reason,
            restart_in_ms = backoff.as_millis() as u64,
            "background task died; restarting it"
        );
        health.set(&name, TaskState::Restarting(reason));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|s| *s) => {
                health.set(&name, TaskState::Stopped);
                return;
            }
        }
        backoff = (backoff * 2).min(policy.max_backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast(max_deaths: u32) -> Policy {
        Policy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            max_deaths,
            window: Duration::from_secs(60),
        }
    }

    /// A task that runs until shutdown.
    async fn until(mut stop: watch::Receiver<bool>) {
        let _ = stop.wait_for(|s| *s).await;
    }

    #[tokio::test]
    async fn a_panicking_task_is_restarted() {
        let health = Health::new();
        let (tx, rx) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let stop = rx.clone();
        let h = supervise("flaky", fast(5), &health, rx, move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            let stop = stop.clone();
            async move {
                if n < 2 {
                    panic!("boom {n}");
                }
                until(stop).await
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while runs.load(Ordering::SeqCst) < 3 || !health.ready() {
            assert!(Instant::now() < deadline, "{health:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert!(health.given_up().is_none());
        tx.send(true).unwrap();
        h.await.unwrap();
        assert_eq!(health.tasks(), vec![("flaky".into(), TaskState::Stopped)]);
        assert!(health.ready());
    }

    #[tokio::test]
    async fn a_task_that_keeps_dying_is_given_up() {
        let health = Health::new();
        let (_tx, rx) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        // Deaths of every kind count: a panic, an error, an early return.
        let h = supervise("doomed", fast(3), &health, rx, move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => panic!("first"),
                    1 => Err("second"),
                    _ => Ok(()),
                }
            }
        });
        let name = tokio::time::timeout(Duration::from_secs(5), health.fatal())
            .await
            .expect("given up");
        assert_eq!(name, "doomed");
        h.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert!(!health.ready());
        assert!(matches!(
            &health.tasks()[0].1,
            TaskState::GaveUp(r) if r.contains("returned before shutdown")
        ));
    }

    #[tokio::test]
    async fn a_clean_return_after_shutdown_is_not_restarted() {
        let health = Health::new();
        let (tx, rx) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let stop = rx.clone();
        let h = supervise("steady", fast(1), &health, rx, move || {
            r.fetch_add(1, Ordering::SeqCst);
            until(stop.clone())
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(health.ready());
        tx.send(true).unwrap();
        h.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(health.ready());
        assert!(health.given_up().is_none());
        assert_eq!(health.tasks(), vec![("steady".into(), TaskState::Stopped)]);
    }

    #[tokio::test]
    async fn deaths_outside_the_window_are_forgotten() {
        let health = Health::new();
        let (tx, rx) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let stop = rx.clone();
        let policy = Policy {
            window: Duration::from_millis(30),
            ..fast(2)
        };
        // Dies every 50 ms: never twice within the 30 ms window.
        let h = supervise("slow-death", policy, &health, rx, move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            let stop = stop.clone();
            async move {
                if n < 4 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    panic!("again");
                }
                until(stop).await
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while runs.load(Ordering::SeqCst) < 5 {
            assert!(Instant::now() < deadline, "{health:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(health.given_up().is_none());
        tx.send(true).unwrap();
        h.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_during_the_backoff_stops_the_supervisor() {
        let health = Health::new();
        let (tx, rx) = watch::channel(false);
        let policy = Policy {
            initial_backoff: Duration::from_secs(30),
            ..fast(5)
        };
        let h = supervise("dying", policy, &health, rx, || async {
            panic!("once");
            #[allow(unreachable_code)]
            ()
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while health.ready() {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(matches!(&health.tasks()[0].1, TaskState::Restarting(r) if r.contains("once")));
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), h)
            .await
            .expect("stopped during the backoff")
            .unwrap();
        assert!(health.ready());
    }
}
