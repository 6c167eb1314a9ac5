//! A connector's long-running tasks (listeners, server links, platform clients), under
//! one supervisor: a task that ends before shutdown, with an error, a panic or none, ends
//! its connector with that reason, which the hub logs (`connector_exited`), shows in
//! `bridge/info` and `/healthz`, and with `exit_on_connector_failure` ends the bridge with
//! exit 1. A listener that died unnoticed left its devices offline for good.

use std::future::Future;

use tokio::task::JoinSet;

#[derive(Default)]
pub struct Tasks {
    set: JoinSet<(&'static str, anyhow::Result<()>)>,
}

impl Tasks {
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.set.spawn(async move { (name, task.await) });
    }

    /// The first task to end, as the reason its connector cannot go on; never returns
    /// while every task runs (or when there is none).
    pub async fn ended(&mut self) -> anyhow::Error {
        match self.set.join_next().await {
            Some(Ok((name, Err(err)))) => err.context(format!("{name} failed")),
            Some(Ok((name, Ok(())))) => anyhow::anyhow!("{name} stopped"),
            Some(Err(err)) if err.is_panic() => anyhow::anyhow!("a task panicked: {err}"),
            Some(Err(err)) => anyhow::anyhow!("a task was cancelled: {err}"),
            None => std::future::pending().await,
        }
    }

    /// Ends every task (at shutdown).
    pub async fn stop(mut self) {
        self.set.abort_all();
        while self.set.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_fails_or_panics_is_the_reason() {
        let mut tasks = Tasks::default();
        tasks.spawn("listener", std::future::pending());
        tasks.spawn("server", async {
            Err(anyhow::anyhow!("accept: too many open files"))
        });
        let reason = format!("{:#}", tasks.ended().await);
        assert_eq!(reason, "server failed: accept: too many open files");
        tasks.spawn("client", async { Ok(()) });
        assert_eq!(tasks.ended().await.to_string(), "client stopped");
        tasks.spawn("link", async { panic!("bug") });
        assert!(tasks.ended().await.to_string().contains("panicked"));
        // The pending listener is still running: nothing more ends.
        let more = tokio::time::timeout(std::time::Duration::from_millis(50), tasks.ended()).await;
        assert!(more.is_err(), "a running task is not an end");
        tasks.stop().await;
        let mut none = Tasks::default();
        let idle = tokio::time::timeout(std::time::Duration::from_millis(50), none.ended()).await;
        assert!(idle.is_err(), "no task: nothing ends");
    }
}
